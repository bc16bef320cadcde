"""`python -m benchmarks` (a smoke run at tiny sizes: nothing here is timed) and the
tutorial-style naive FCN it compares against."""

import json

import nbformat
import pytest
import torch
import torch.nn.functional as F
from support import scored_classroom_model as _model

from benchmarks.bench import (
    PARTS,
    bench_train_gpu,
    check_targets,
    cli,
    minor_page_faults,
    peak_bf16_tflops,
    report,
    run,
    take_turns,
)
from benchmarks.textbook_fcn import TextbookFCN, get_upsampling_weight
from fcn_lesson import BilinearUpsample, bilinear_kernel

no_cuda = not torch.cuda.is_available()




# --- the naive reference -------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["fcn32s", "fcn16s", "fcn8s"])
def test_naive_computes_our_function_on_multiples_of_32(variant):
    model = _model(variant)
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(TextbookFCN.like(model).eval()(x), model(x))


def test_naive_upsampling_weight_is_the_bilinear_kernel_on_the_diagonal():
    weight = get_upsampling_weight(6, 6, 16)
    for c in range(6):
        torch.testing.assert_close(weight[c, c], bilinear_kernel(16))
    off_diagonal = weight.clone()
    off_diagonal[range(6), range(6)] = 0
    assert off_diagonal.abs().max() == 0
    torch.testing.assert_close(weight, BilinearUpsample(6, 8, learnable=True).weight.detach())


@pytest.mark.parametrize("variant", ["fcn32s", "fcn8s"])
def test_naive_on_375x500_returns_the_padded_size_and_the_resize_fix_misaligns(variant):
    model = _model(variant)
    x = torch.rand(1, 3, 375, 500)
    with torch.no_grad():
        ours, naive = model(x), TextbookFCN.like(model).eval()(x)
    assert ours.shape[-2:] == (375, 500)
    assert naive.shape[-2:] == (384, 512)  # 9 rows and 12 columns that are not in the image
    # Where the zero padding is out of reach (top left), naive's cells are ours ...
    torch.testing.assert_close(naive[..., :128, :128], ours[..., :128, :128])
    # ... near the padded border they are not: zeros leaked in (ours replicates the border),
    band = (naive[..., :375, :500] - ours)[..., -16:, :].abs().max()
    assert band > 0.05 * ours.abs().max()
    # and resizing the padded output to the image's size shifts every prediction.
    resized = F.interpolate(naive, size=(375, 500), mode="bilinear", align_corners=False)
    assert (resized - ours)[..., :128, :128].abs().max() > 0.01 * ours.abs().max()


def test_naive_refuses_weights_of_another_model():
    with pytest.raises(ValueError, match="skips 2 != 0"):
        TextbookFCN(6, skips=0, width=0.125, batch_norm=True).copy_weights_from(_model("fcn8s"))
    with pytest.raises(ValueError, match=r"fc7 channels \(width\) 512 != 256"):
        TextbookFCN(6, skips=2, width=1 / 16, batch_norm=True).copy_weights_from(_model("fcn8s"))
    with pytest.raises(ValueError, match="one has BatchNorm and the other not"):
        TextbookFCN(6, skips=2, width=0.125, batch_norm=False).copy_weights_from(_model("fcn8s"))
    with pytest.raises(ValueError, match="skips must be 0"):
        TextbookFCN(skips=3)


# --- helpers -------------------------------------------------------------------------------

def test_peak_table_matches_specific_names_first():
    assert peak_bf16_tflops("NVIDIA H200") == 989
    assert peak_bf16_tflops("NVIDIA H100 80GB HBM3") == 989
    assert peak_bf16_tflops("NVIDIA H100 PCIe") == 756
    assert peak_bf16_tflops("NVIDIA A100-SXM4-80GB") == 312
    assert peak_bf16_tflops("Tesla T4") is None


def test_ours_and_naive_take_turns_at_going_first():
    calls = []
    timed = take_turns(lambda x: calls.append("ours"), lambda x: calls.append("naive"),
                       torch.zeros(1), repeat=4, warmup=1)
    assert calls == ["ours", "naive",  # warm-up, untimed
                     "ours", "naive", "naive", "ours", "ours", "naive", "naive", "ours"]
    assert len(timed["seconds"]["ours"]) == len(timed["seconds"]["naive"]) == 4


def test_page_faults_count_fresh_memory():
    before = minor_page_faults()
    block = bytearray(64 * 2**20)  # 64 MB the kernel must hand over page by page
    block[::4096] = b"x" * len(block[::4096])
    # one fault per 4 KB page, or per 2 MB one where transparent huge pages are always on
    assert minor_page_faults() - before >= 64 // 2


def test_targets_judge_the_numbers():
    results = {
        "notebooks": {"rows": [{"notebook": "a.ipynb", "seconds": 30.0, "peak_rss_mb": 1400.0},
                               {"notebook": "b.ipynb", "seconds": 61.0, "peak_rss_mb": 1600.0}],
                      "total_seconds": 91.0},
        "latency": {"rows": [{"variant": "fcn8s", "size": 128, "batch": 1, "ours_ms": 4.0, "ratio": 1.2},
                             {"variant": "fcn8s", "size": 512, "batch": 16, "ours_ms": 50.0, "ratio": 0.9}]},
        "widgets": {"rows": [{"widget": "w", "control": "c", "median_ms": 40.0}]},
    }
    met = {row["target"]: row["met"] for row in check_targets(results)}
    assert met == {"a.ipynb run time (s)": True, "b.ipynb run time (s)": False, "all notebooks (s)": True,
                   "a.ipynb peak RSS (MB)": True, "b.ipynb peak RSS (MB)": False,
                   "FCN-8s classroom, 128 px, batch 1 (ms/image)": True,
                   "naive / ours, slowest case (fcn8s 512 px batch 16)": False,
                   "widget median, slowest (w: c) (ms)": True}


def test_report_warns_when_the_cpu_was_busy():
    machine = {"cpu": "x", "cpu_count": 2, "torch_threads": 2, "cuda": None, "torch": "2", "python": "3",
               "started_utc": "now"}
    assert "WARNING: other programs" in report({"machine": {**machine, "load_average_1min": 1.9}})
    assert "WARNING" not in report({"machine": {**machine, "load_average_1min": 0.1}})


def test_bad_options_are_explained(capsys, tmp_path):
    with pytest.raises(SystemExit):
        cli(["--parts", "latency,gpu"])
    err = capsys.readouterr().err
    assert "unknown part(s) gpu; choose from notebooks,latency,widgets,train,memory" in err
    with pytest.raises(SystemExit):
        cli(["--sizes", "128,big"])
    assert "expected comma-separated integers" in capsys.readouterr().err
    with pytest.raises(ValueError, match="must be >= 1"):
        run(["latency"], sizes=[64], repeat=0, out=tmp_path)
    empty = ["--notebook-dir", str(tmp_path), "--out", str(tmp_path)]
    assert cli(["--parts", "notebooks", *empty]) == 2
    assert f"no notebooks (*.ipynb) in {tmp_path}" in capsys.readouterr().err


# --- the command, end to end ---------------------------------------------------------------

@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One run of every part at tiny sizes, on a two-cell notebook."""
    notebooks = tmp_path_factory.mktemp("notebooks")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# A notebook"),
                nbformat.v4.new_code_cell("import time\ntime.sleep(0.2)"),
                nbformat.v4.new_code_cell("x = bytearray(50 * 2**20)\nprint(len(x))")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = notebooks / "01_tiny.ipynb"
    nbformat.write(nb, path)
    before = path.read_bytes()
    out = tmp_path_factory.mktemp("bench")
    code = cli(["--sizes", "32", "--repeat", "1", "--train-size", "32", "--train-batch", "2",
                 "--notebook-dir", str(notebooks), "--out", str(out), "--no-compile",
                 "--retrain-scale", "0.0001"])
    return {"code": code, "out": out, "notebook": path, "before": before,
            "results": json.loads((out / "bench.json").read_text())}


def test_smoke_run_writes_json_text_and_png(smoke):
    assert smoke["code"] == 0
    results = smoke["results"]
    assert set(PARTS) | {"machine", "settings", "targets"} <= set(results)
    assert results["settings"]["sizes"] == [32] and results["settings"]["repeat"] == 1
    assert (smoke["out"] / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (smoke["out"] / "bench.txt").read_text()
    for heading in ("1. Notebooks", "2. CPU inference", "3. Widget callback", "4. Training", "5. Peak memory",
                    "6. In-class retrain", "Targets"):
        assert heading in text


def test_smoke_notebook_is_timed_and_left_untouched(smoke):
    (row,) = smoke["results"]["notebooks"]["rows"]
    assert row["notebook"] == "01_tiny.ipynb" and row["error"] is None
    assert 0.2 <= row["seconds"] < 30 and row["slowest_cell"] == 1
    assert smoke["results"]["notebooks"]["total_seconds"] == row["seconds"]
    # the kernel's own peak (not this process's): a bare kernel plus the 50 MB it allocated
    assert 50 < row["peak_rss_mb"] < 400
    assert smoke["notebook"].read_bytes() == smoke["before"]


def test_smoke_latency_widgets_train_memory_rows(smoke):
    results = smoke["results"]
    latency = results["latency"]["rows"]
    assert [(r["variant"], r["batch"]) for r in latency] == [
        (v, b) for v in ("fcn32s", "fcn16s", "fcn8s") for b in (1, 16)]
    for r in latency:
        assert r["ours_ms"] > 0 and r["naive_ms"] > 0
        assert 0.2 < r["ratio"] < 5  # the median of per-round ratios: near naive_ms / ours_ms
        assert r["ours_page_faults"] >= 0
    widgets = {(r["widget"].split(" (")[0], r["control"]) for r in results["widgets"]["rows"]}
    assert {("fusion", "pool4_gain"), ("layers", "channel"), ("output grid", "height"),
            ("upsampling", "factor"), ("pixel", "row"), ("pixel", "model")} <= widgets
    for r in results["widgets"]["rows"]:
        assert 0 < r["median_ms"] <= r["p95_ms"] and r["samples"] == 5
    assert [r["model"] for r in results["train"]["cpu"]["rows"]] == [
        "FCN-32s classroom", "FCN-16s classroom", "FCN-8s classroom"]
    assert all(r["images_per_s"] > 0 for r in results["train"]["cpu"]["rows"])
    memory = {r["workload"].split(",")[0]: r["peak_rss_mb"] for r in results["memory"]["rows"]}
    # each workload in its own process: training holds more than a bare import
    assert memory["FCN-8s classroom training"] > memory["import torch + fcn_lesson"] > 50


def test_smoke_retrain_row_times_the_chain_and_judges_it(smoke):
    retrain = smoke["results"]["retrain"]
    assert [s["variant"] for s in retrain["stages"]] == ["fcn32s", "fcn16s", "fcn8s"]
    assert all(s["seconds"] > 0 and 0 <= s["mean_iou_128"] <= 1 for s in retrain["stages"])
    assert retrain["scale"] == 0.0001
    targets = {t["target"]: t for t in smoke["results"]["targets"]}
    time_row = targets["in-class retrain, whole chain (s, scale 0.0001)"]
    assert time_row["value"] == retrain["train_seconds"] and time_row["met"]
    # a chain of a few steps per stage has not learned to segment: the target says so
    assert not targets["in-class retrain, FCN-8s mean IoU at 128 px"]["met"]


@pytest.mark.skipif(not no_cuda, reason="checks the message shown when there is no GPU")
def test_gpu_part_says_it_was_skipped(smoke):
    assert "no CUDA device" in smoke["results"]["train"]["gpu"]["skipped"]
    assert "GPU: skipped, no CUDA device" in (smoke["out"] / "bench.txt").read_text()
    assert bench_train_gpu(size=64, batch=1, repeat=1) == smoke["results"]["train"]["gpu"]


@pytest.mark.gpu
@pytest.mark.skipif(no_cuda, reason="needs a CUDA device")
def test_gpu_training_rows():
    result = bench_train_gpu(size=64, batch=2, repeat=2, warmup=1, with_compile=False)
    assert [r["precision"] for r in result["rows"]] == [
        "fp32 eager", "fp32 eager, TF32 convs (PyTorch default)", "bf16 autocast + channels_last"]
    assert result["rows"][0]["speedup_vs_fp32"] == 1.0
    assert all(r["images_per_s"] > 0 and r["peak_memory_mb"] > 0 for r in result["rows"])
    assert result["flop_per_step"] > 3 * 2 * 1e9  # forward + backward of a full VGG16 at 64 px
