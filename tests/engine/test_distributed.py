"""Data-parallel training for real: two CPU processes (gloo) under torchrun, against one process.

What is exact and what is not:
- Evaluation of the same weights: exactly equal. Each process scores a disjoint slice of the
  validation set at batch size 1 and the confusion matrices are integer sums.
- Training: equal up to float rounding. With the global batch = the whole (even-sized) training
  set every step sees the same images in both runs, and seeded augmentation gives every image
  the same crop wherever it is loaded; the loss is normalised by the labelled pixels of the
  global batch, so the gradient is the same function. What differs is the order of the sums
  (two half-batches + all_reduce vs one batch), about 1e-7 relative per step, hence allclose.
  (With smaller batches the DistributedSampler deals another permutation than the
  single-process shuffle, and with dropout each process draws its own masks: both are equally
  valid runs, not the same one. The model here has no BatchNorm and no dropout.)
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fcn_lesson.cli import main
from fcn_lesson.core.models import FCN8s, FCN16s
from fcn_lesson.datasets.voc import VOCSegmentation, fake_voc_tree
from fcn_lesson.engine import distributed
from fcn_lesson.engine.checkpoint import load_checkpoint, save_checkpoint
from fcn_lesson.engine.loop import evaluate, fit

REPO = Path(__file__).resolve().parents[2]


def _train_args(root: Path, out: Path, init: Path) -> list[str]:
    return ["train", "--dataset", "voc", "--data-root", str(root), "--variant", "fcn8s", "--width", "0.0625",
            "--init", str(init),
            "--dropout", "0", "--epochs", "4", "--batch-size", "4", "--crop-size", "40", "--lr", "0.003",
            "--num-workers", "0", "--device", "cpu", "--out", str(out)]


def test_two_gloo_processes_train_and_score_like_one(tmp_path):
    root = fake_voc_tree(tmp_path / "voc", num_images=7, size=(48, 64))  # 4 train, 3 val (odd on purpose)
    # Stage-wise init from an FCN-16s with random (not zero) score layers, so that the nets
    # predict many classes from the start and the metrics compared below are not trivial.
    torch.manual_seed(1)
    coarse = FCN16s(num_classes=21, width=0.0625, dropout=0.0)
    for layer in (coarse.score_fr, coarse.score_pool4):
        torch.nn.init.normal_(layer.weight, std=0.5)
    init = save_checkpoint(tmp_path / "init" / "fcn16s.pt", coarse)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "fcn_lesson", *_train_args(root, tmp_path / "ddp.pt", init)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("saved ") == 1  # only rank 0 prints
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp.pt", "init", "voc"]  # no state file, no temp

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun worker (OMP_NUM_THREADS=1)
    try:
        assert main(_train_args(root, tmp_path / "one.pt", init)) == 0
        ddp, ddp_meta = load_checkpoint(tmp_path / "ddp.pt")
        one, one_meta = load_checkpoint(tmp_path / "one.pt")
        # The metrics the two processes computed together (stored in the checkpoint) are exactly
        # those of one process scoring the same weights.
        single = evaluate(ddp, VOCSegmentation(root, image_set="val"), batch_size=1)
    finally:
        torch.set_num_threads(threads)
    assert ddp_meta["training"]["processes"] == 2 and one_meta["training"]["processes"] == 1
    for key in ("pixel_acc", "mean_acc", "mean_iou", "fw_iou", "boundary_acc"):
        assert single[key] == ddp_meta["metrics"][key], key
    assert (single["confusion"].sum(0) > 0).sum() >= 3  # it predicts several classes

    start = FCN8s(num_classes=21, width=0.0625, dropout=0.0).init_from(coarse)
    moved = max((a - b).abs().max().item() for a, b in
                zip(one.state_dict().values(), start.state_dict().values(), strict=True))
    assert moved > 1e-2  # the runs really trained, so their agreement means something
    for (name, a), b in zip(one.state_dict().items(), ddp.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6, msg=name)
    for h1, h2 in zip(one_meta["history"], ddp_meta["history"], strict=True):
        assert h1["step"] == h2["step"]
        assert h2["train_loss"] == pytest.approx(h1["train_loss"], rel=1e-5)


def _shapes_args(out: Path) -> list[str]:
    # A classroom model (BatchNorm) on shapes, whose images are not augmented: with the global
    # batch = the 8 training images, both runs see the same batch every step. SGD, not the
    # classroom's Adam: Adam's first steps are lr * sign(gradient), so the conv biases before a
    # BatchNorm (gradient 0 up to rounding, ~1e-10) would move by +-lr on float noise alone.
    return ["train", "--variant", "fcn32s", "--width", "0.0625", "--dropout", "0", "--epochs", "3",
            "--train-images", "8", "--val-images", "4", "--image-size", "48", "--batch-size", "8",
            "--optimizer", "sgd", "--lr", "0.05", "--device", "cpu", "--out", str(out)]


def test_two_gloo_processes_train_a_batch_norm_model_like_one(tmp_path):
    """Each process holds 4 of the 8 images of a step. Unsynchronised BatchNorm would normalise
    each half with its own statistics (another function than one process computes); synchronised
    over the processes (AllReduceBatchNorm2d on CPU, SyncBatchNorm on GPUs) the two runs end with
    the same weights and running statistics, up to float rounding."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "fcn_lesson", *_shapes_args(tmp_path / "ddp.pt")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-3000:]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(_shapes_args(tmp_path / "one.pt")) == 0
    finally:
        torch.set_num_threads(threads)
    ddp, ddp_meta = load_checkpoint(tmp_path / "ddp.pt")  # loads into the plain BatchNorm model
    one, one_meta = load_checkpoint(tmp_path / "one.pt")
    assert ddp_meta["training"]["processes"] == 2 and one.batch_norm
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in ddp.modules())
    # Measured: at most 5e-5 apart here; each process normalising its own half puts the running
    # statistics 4e-3 to 6e-2 apart (61 of the 98 tensors fail this check).
    for (name, a), b in zip(one.state_dict().items(), ddp.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4, msg=name)
    for h1, h2 in zip(one_meta["history"], ddp_meta["history"], strict=True):
        assert h2["train_loss"] == pytest.approx(h1["train_loss"], rel=1e-5)


def test_batch_norm_swap_shares_the_weights_and_is_undone(monkeypatch):
    model = FCN8s(num_classes=3, width=1 / 16, batch_norm=True).train()
    originals = [m for m in model.modules() if type(m) is torch.nn.BatchNorm2d]
    x = torch.rand(2, 3, 40, 40)
    expected = model(x)
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    restore = distributed.sync_batch_norm(model, torch.device("cpu"))
    synced = [m for m in model.modules() if isinstance(m, distributed.AllReduceBatchNorm2d)]
    assert len(synced) == len(originals) > 0
    for s, o in zip(synced, originals, strict=True):
        assert s.weight is o.weight and s.running_mean is o.running_mean
    # No process group here: the layers fall back to plain BatchNorm, and the outputs agree.
    torch.testing.assert_close(model(x), expected)
    restore()
    assert [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)] == originals


def test_global_batch_must_split_evenly(monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    data = torch.utils.data.TensorDataset(torch.rand(4, 3, 32, 32), torch.zeros(4, 32, 32, dtype=torch.long))
    with pytest.raises(ValueError, match="global batch .* multiple of 2, got 3"):
        fit(FCN8s(num_classes=2, width=1 / 16), data, batch_size=3, progress=False)


def test_without_torchrun_everything_is_one_process():
    assert not distributed.is_distributed()
    assert distributed.rank() == 0 and distributed.world_size() == 1 and distributed.is_main()
    x = torch.arange(3)
    assert distributed.all_reduce_sum(x) is x
    assert distributed.all_gather_object({"a": 1}) == [{"a": 1}]
    with distributed.process_group("cpu") as device:
        assert device == torch.device("cpu") and not distributed.is_distributed()
