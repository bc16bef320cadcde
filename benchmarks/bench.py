"""python -m benchmarks: how fast the lesson runs, measured, against its targets.

Six parts (--parts), each a function returning plain data:
  notebooks  every notebook executed top to bottom (nbclient, in memory: the committed files
             are never written), its time, slowest cell and the kernel's peak memory;
  latency    CPU inference per image, batch 1 and 16, of the classroom FCN-32s/16s/8s against
             `naive_reference.TextbookFCN` (the tutorial-style code) at the same width, timed
             taking turns (ours, naive, naive, ours, ...) so that both see the same machine load;
  widgets    how long each explorer takes to react to a control (the `observe` callback on
             cached activations, as in the notebooks; the browser round trip is not included);
  train      training throughput of the classroom models on the CPU and, when CUDA is present,
             of the full-width FCN-8s at 512x512 in fp32 and bf16 (+ channels_last, compile), with
             FLOPs from `torch.utils.flop_counter` and the share of the device's peak;
  memory     peak resident memory of typical workloads, each in a fresh process;
  retrain    the in-class retrain (`python -m fcn_lesson retrain`: FCN-32s -> 16s -> 8s from
             the shipped classifier), its wall-clock time and each net's mean IoU on fresh
             images (7 to 10 minutes on our 2-core VM; --retrain-scale shrinks it).
`run` does the parts, prints the tables and the targets, and writes bench.json, bench.txt and
bench.png. Medians throughout: a laptop's timings have a long right tail.
"""

import argparse
import inspect
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.textbook_fcn import TextbookFCN
from fcn_lesson import classroom
from fcn_lesson.core.models import VARIANTS, FCN8s
from fcn_lesson.engine.metrics import IGNORE_INDEX
from fcn_lesson.lessons.compare import LABELS
from fcn_lesson.lessons.tables import format_table

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
BATCHES = (1, 16)

# Dense (no sparsity) bf16 tensor-core peaks from the vendors' data sheets, TFLOP/s. Matched
# against torch.cuda.get_device_name() in order, so the more specific names come first.
PEAK_BF16_TFLOPS = (
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0), ("GH200", 989.0),
    ("B200", 2250.0), ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0), ("A10G", 70.0),
    ("RTX 4090", 165.0),
)

# A 1-minute load average above this when the run starts means someone else is computing.
BUSY_LOAD = 0.5

TARGETS = {"notebook_s": 60.0, "notebooks_total_s": 360.0, "widget_median_ms": 100.0,
           "fcn8s_128_batch1_ms": 5.0, "naive_ratio": 1.0, "gpu_bf16_speedup": 2.5,
           "gpu_share_of_peak": 0.35, "retrain_s": 600.0, "retrain_fcn8s_mean_iou": 0.80,
           # A notebook kernel's peak memory (MB): classroom JupyterHub / Binder pods give 1-2 GB.
           "notebook_peak_rss_mb": 1500.0}


def peak_bf16_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of a GPU by name, or None when it is not in PEAK_BF16_TFLOPS."""
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key in device_name), None)


def peak_rss_mb() -> float | None:
    """This process's peak resident memory so far, in MB (None where the OS does not say)."""
    try:
        # Linux: the high-water mark of this process's own memory. getrusage's ru_maxrss would
        # carry over the parent's peak into a child started by fork + exec (a kernel, a worker).
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) / 2**10 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        pass
    try:
        import resource
    except ImportError:  # Windows
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # bytes on macOS


def _timed(fn, sync=None) -> float:
    if sync:
        sync()
    start = time.perf_counter()
    fn()
    if sync:
        sync()
    return time.perf_counter() - start


def machine() -> dict:
    """What the numbers were measured on, and how busy it was when the run started."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "cuda": torch.cuda.get_device_name()
            if torch.cuda.is_available() else None,
            "started_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    if hasattr(os, "getloadavg"):
        info["load_average_1min"] = round(os.getloadavg()[0], 2)
    return info


# --- 1. notebooks ----------------------------------------------------------------------------

# Run in the kernel after the notebook: the function's own source, so the probe imports
# nothing that the notebook did not (importing fcn_lesson would add torch to a torch-free one).
_RSS_PROBE = inspect.getsource(peak_rss_mb) + "print(peak_rss_mb())"


def run_notebook(path: Path, timeout: int = 600) -> dict:
    """Execute a notebook top to bottom in a fresh kernel (this Python), in memory.

    `seconds` is the time from the first cell's start to the last cell's end, what "Run all"
    costs a class once the kernel is up; the kernel start is reported apart. The kernel runs
    in the notebook's folder, as in JupyterLab.
    """
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(path, as_version=4)
    # ipykernel's "python3" kernelspec names plain "python", which jupyter_client replaces with
    # this process's interpreter: the notebooks run in the environment that runs the bench.
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    row = {"notebook": path.name, "seconds": None, "kernel_start_seconds": None, "slowest_cell": None,
           "slowest_cell_seconds": None, "peak_rss_mb": None, "error": None}
    started = time.perf_counter()
    with client.setup_kernel():
        row["kernel_start_seconds"] = round(time.perf_counter() - started, 2)
        cell_seconds = []
        start = time.perf_counter()
        try:
            for index, cell in enumerate(nb.cells):
                cell_seconds.append(_timed(lambda c=cell, i=index: client.execute_cell(c, i)))
        except CellExecutionError as err:
            row["error"] = f"cell {len(cell_seconds)}: {err.ename}: {err.evalue[:200]}"
            return row
        row["seconds"] = round(time.perf_counter() - start, 2)
        slowest = max(range(len(cell_seconds)), key=cell_seconds.__getitem__)
        row["slowest_cell"], row["slowest_cell_seconds"] = slowest, round(cell_seconds[slowest], 2)
        probe = nbformat.v4.new_code_cell(_RSS_PROBE)
        nb.cells.append(probe)
        client.execute_cell(probe, len(nb.cells) - 1)
        text = "".join(o.get("text", "") for o in probe.outputs).strip()
        row["peak_rss_mb"] = None if text == "None" else round(float(text), 1)
    return row


def bench_notebooks(notebook_dir: Path = NOTEBOOK_DIR, timeout: int = 600, progress=print) -> dict:
    paths = sorted(Path(notebook_dir).glob("*.ipynb"))
    if not paths:
        raise FileNotFoundError(f"no notebooks (*.ipynb) in {notebook_dir}; pass --notebook-dir, "
                                "or leave 'notebooks' out of --parts")
    rows = []
    for path in paths:
        progress(f"  running {path.name} ...")
        rows.append(run_notebook(path, timeout))
    done = [r["seconds"] for r in rows if r["seconds"] is not None]
    return {"rows": rows, "total_seconds": round(sum(done), 2) if len(done) == len(rows) else None}


# --- 2. inference latency --------------------------------------------------------------------

def minor_page_faults() -> int | None:
    """Page faults of this process so far that needed no disk: each one is the kernel
    handing over (and zeroing) a fresh page of memory. None where the OS does not count them."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def take_turns(ours, naive, x: torch.Tensor, repeat: int, warmup: int) -> dict:
    """Seconds per call of ours and of naive on x, `repeat` each, in the order ours, naive,
    naive, ours, ours, ... The second of two back-to-back calls can run up to ~10% faster
    or slower than the first (caches, allocator), whichever net it is: taking turns at
    going first cancels that out of the ratio. Also the page faults per call of each."""
    def run_ours():
        with torch.inference_mode():
            ours(x)

    def run_naive():
        with torch.no_grad():
            naive(x)

    for _ in range(warmup):
        run_ours()
        run_naive()
    counted = minor_page_faults() is not None
    seconds, faults = {"ours": [], "naive": []}, {"ours": 0, "naive": 0}
    pair = (("ours", run_ours), ("naive", run_naive))
    for i in range(repeat):
        for name, run in pair if i % 2 == 0 else pair[::-1]:
            before = minor_page_faults()
            seconds[name].append(_timed(run))
            if counted:
                faults[name] += minor_page_faults() - before
    return {"seconds": seconds,
            "faults_per_call": {k: round(n / repeat) if counted else None for k, n in faults.items()}}


def bench_latency(sizes=(128, 512), batches=BATCHES, repeat: int = 10, warmup: int = 2) -> dict:
    """Per-image CPU latency (ms, median of `repeat`) of the classroom models and of the
    tutorial-style `TextbookFCN` with the same weights, taking turns; the ratio is the median
    of naive / ours over the rounds (> 1: ours is faster). Ours runs as the notebooks run it (eval,
    `torch.inference_mode`), the naive net as tutorials do (eval, `torch.no_grad`)."""
    rows = []
    for variant in VARIANTS:
        torch.manual_seed(0)
        ours = classroom.make_classroom_model(variant).eval()
        naive = TextbookFCN.like(ours).eval()
        for size in sizes:
            for batch in batches:
                x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
                with FlopCounterMode(display=False) as flops, torch.inference_mode():
                    ours(x)
                timed = take_turns(ours, naive, x, repeat, warmup)
                ours_s, naive_s = timed["seconds"]["ours"], timed["seconds"]["naive"]
                ours_ms = 1000 * statistics.median(ours_s) / batch
                naive_ms = 1000 * statistics.median(naive_s) / batch
                # A round's two runs follow each other: their ratio is free of the slower drift
                # (clock speed, other processes, memory state) that moves both over a whole run.
                ratio = statistics.median(n / o for o, n in zip(ours_s, naive_s, strict=True))
                rows.append({"variant": variant, "size": size, "batch": batch,
                             "ours_ms": round(ours_ms, 3), "naive_ms": round(naive_ms, 3),
                             "ratio": round(ratio, 3),
                             "ours_gflop_per_s": round(flops.get_total_flops() / batch / ours_ms / 1e6, 1),
                             "ours_page_faults": timed["faults_per_call"]["ours"]})
    return {"rows": rows, "repeat": repeat, "threads": torch.get_num_threads()}


# --- 3. widgets ------------------------------------------------------------------------------

def _classroom_models() -> tuple[dict, str]:
    """The shipped checkpoints when they are there (as the notebooks use them), else untrained
    models of the same size: a callback costs the same either way."""
    if all(classroom.checkpoint_path(v).is_file() for v in VARIANTS):
        return {v: classroom.load_classroom_model(v, "cpu") for v in VARIANTS}, "trained"
    torch.manual_seed(0)
    return {v: classroom.make_classroom_model(v).eval() for v in VARIANTS}, "untrained"


def _widget_setups(models: dict):
    """(name, explorer factory, [(control attribute, values to cycle through)]), each built as
    its notebook builds it. Consecutive values differ, so every assignment fires the callback."""
    from fcn_lesson.widgets import (
        FusionExplorer,
        LayerExplorer,
        OutputGridExplorer,
        PixelExplorer,
        UpsamplingExplorer,
    )

    gains = [0.0, 0.5, 1.0, 1.5, 2.0, 1.2, 0.3]
    return [
        ("output grid (nb 1)", lambda: OutputGridExplorer(height=375, width=500, row=2, col=4),
         [("height", [375, 400, 512, 300, 450]), ("col", [4, 2, 0, 5, 1])]),
        ("upsampling (nb 2)", lambda: UpsamplingExplorer(factor=4, kernel_size=8),
         [("factor", [4, 2, 3, 8, 5]), ("kernel_size", [8, 4, 5, 16, 7])]),
        ("fusion (nb 5)", lambda: FusionExplorer(models["fcn8s"], classroom.validation_set(8)),
         [("pool4_gain", gains), ("pool3_gain", gains), ("class_index", [1, 2, 3, 4, 5, 0])]),
        ("layers (nb 3, 6)", lambda: LayerExplorer(models, classroom.validation_set(8), layer="score_fr"),
         [("channel", [0, 1, 2, 3, 4, 5]), ("layer", ["conv1_1", "pool3", "fc7", "score_fr", "out"]),
          ("image", [0, 1, 2, 3])]),
        ("pixel (nb 5)", lambda: PixelExplorer({"FCN-8s": models["fcn8s"], "FCN-16s": models["fcn16s"]},
                                               classroom.validation_set(8)),
         # every row and column: more settings than the explorer keeps drawings of (64), so
         # each timed move draws afresh, as a student's slider moves mostly do
         [("row", list(range(128))), ("col", list(range(128))),
          ("model", ["FCN-16s", "FCN-8s"]), ("image", [0, 1, 2, 3])]),
    ]


def bench_widgets(repeat: int = 10) -> dict:
    """Median and 95th percentile (ms) of setting a control's `.value` on each explorer:
    the callback the browser triggers (update + redraw), on cached activations and images. Every value
    is visited once first (filling caches); then 5 x `repeat` timed assignments per control."""
    rows = []
    models, weights = _classroom_models()
    for name, make, controls in _widget_setups(models):
        explorer = make()
        for attribute, values in controls:
            control = getattr(explorer, attribute)
            for value in values:
                control.value = value
            samples = []
            for i in range(5 * repeat):
                value = values[i % len(values)]
                if control.value == value:  # after a wrap-around: no change, no callback
                    value = values[(i + 1) % len(values)]
                samples.append(1000 * _timed(partial(setattr, control, "value", value)))
            rows.append({"widget": name, "control": attribute,
                         "median_ms": round(statistics.median(samples), 2),
                         "p95_ms": round(float(np.percentile(samples, 95)), 2), "samples": len(samples)})
    return {"rows": rows, "weights": weights}


# --- 4. training -----------------------------------------------------------------------------

def _train_step(model, opt, images, masks, bf16: bool) -> None:
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=bf16):
        logits = model(images)
    loss = F.cross_entropy(logits.float(), masks, ignore_index=IGNORE_INDEX)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def _step_flops(model, opt, images, masks) -> int:
    """FLOPs of one training step (forward and backward; the optimizer is not counted)."""
    with FlopCounterMode(display=False) as counter:
        _train_step(model, opt, images, masks, bf16=False)
    return counter.get_total_flops()


def _throughput(step, batch: int, repeat: int, warmup: int, sync=None) -> tuple[float, float]:
    """(images/s from the median step time, median step seconds)."""
    for _ in range(warmup):
        step()
    seconds = statistics.median(_timed(step, sync) for _ in range(repeat))
    return batch / seconds, seconds


def _batch(batch: int, size: int, num_classes: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    # Fixed random tensors: this measures the model, not data loading.
    g = torch.Generator().manual_seed(0)
    images = torch.rand(batch, 3, size, size, generator=g)
    masks = torch.randint(0, num_classes, (batch, size, size), generator=g)
    return images.to(device), masks.to(device)


def bench_train_cpu(size: int = classroom.IMAGE_SIZE, batch: int = 16, repeat: int = 10,
                    warmup: int = 2) -> dict:
    """Classroom training on the CPU (Adam, as the classroom recipe), images/s per variant."""
    rows = []
    for variant in VARIANTS:
        torch.manual_seed(0)
        model = classroom.make_classroom_model(variant).train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        images, masks = _batch(batch, size, model.num_classes, "cpu")
        flops = _step_flops(model, opt, images, masks)
        rate, seconds = _throughput(partial(_train_step, model, opt, images, masks, False),
                                    batch, repeat, warmup)
        rows.append({"device": "cpu", "model": f"{LABELS[variant]} classroom", "precision": "fp32",
                     "size": size, "batch": batch, "images_per_s": round(rate, 2),
                     "tflop_per_s": round(flops / seconds / 1e12, 4)})
    return {"rows": rows}


# name -> (bf16 autocast, channels_last, torch.compile, TF32 allowed)
GPU_SETTINGS = {
    "fp32 eager": (False, False, False, False),
    "fp32 eager, TF32 convs (PyTorch default)": (False, False, False, True),
    "bf16 autocast + channels_last": (True, True, False, True),
    "bf16 autocast + channels_last + compile": (True, True, True, True),
}


def _gpu_setting(setting: str, images, masks, repeat: int, warmup: int) -> tuple[dict, int]:
    """One row of the GPU training table (flop counts filled in by the caller), and the
    FLOPs of one step."""
    bf16, channels_last, compiled, tf32 = GPU_SETTINGS[setting]
    device = images.device
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = FCN8s(num_classes=21).to(device, memory_format=fmt).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, weight_decay=5e-4)
    images = images.contiguous(memory_format=fmt)
    flops = _step_flops(model, opt, images, masks)
    step = partial(_train_step, torch.compile(model) if compiled else model, opt, images, masks, bf16)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    matmul_tf32 = torch.backends.cuda.matmul.allow_tf32
    with torch.backends.cudnn.flags(enabled=True, benchmark=True, allow_tf32=tf32):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        try:
            first = _timed(step, torch.cuda.synchronize)  # compiles, picks kernels
            rate, seconds = _throughput(step, len(images), repeat, warmup, torch.cuda.synchronize)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = matmul_tf32
    row = {"precision": setting, "batch": len(images), "images_per_s": round(rate, 2),
           "step_s": seconds, "first_step_s": round(first, 1),
           "peak_memory_mb": round(torch.cuda.max_memory_allocated(device) / 2**20)}
    return row, flops


def bench_train_gpu(size: int = 512, batch: int = 16, repeat: int = 10, warmup: int = 3,
                    with_compile: bool = True) -> dict:
    """Full-width FCN-8s (VGG16, 21 classes, the paper's SGD) training on the GPU in each of
    GPU_SETTINGS, in one run: images/s, TFLOP/s and share of the bf16 peak, peak memory.
    The fp32 baseline has TF32 off (true fp32); PyTorch's default lets cuDNN convolutions
    use TF32, measured on its own row."""
    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device: the GPU training benchmark (full-width FCN-8s, 512x512, "
                           "fp32 vs bf16) was not run"}
    device = torch.device("cuda")
    name = torch.cuda.get_device_name(device)
    peak = peak_bf16_tflops(name)
    images, masks = _batch(batch, size, 21, device)
    rows = []
    for setting, (_, _, compiled, _) in GPU_SETTINGS.items():
        if compiled and not with_compile:
            continue
        row, flops = _gpu_setting(setting, images, masks, repeat, warmup)
        tflops = flops / row.pop("step_s") / 1e12
        rows.append({"device": name, "model": "FCN-8s full width", "size": size, **row,
                     "tflop_per_s": round(tflops, 1),
                     "share_of_peak": round(tflops / peak, 3) if peak else None})
    for row in rows:
        row["speedup_vs_fp32"] = round(row["images_per_s"] / rows[0]["images_per_s"], 2)
    return {"device": name, "peak_bf16_tflops": peak, "flop_per_step": flops, "rows": rows}


# --- 5. memory -------------------------------------------------------------------------------

def _workload_peak_rss(kind: str, size: int, batch: int) -> float | None:
    """Run one workload in this (fresh) process; its peak RSS in MB."""
    torch.manual_seed(0)
    if kind != "import":
        model = classroom.make_classroom_model("fcn8s")
        images, masks = _batch(batch, size, model.num_classes, "cpu")
        if kind == "inference":
            with torch.inference_mode():
                model.eval()(images)
        else:
            opt = torch.optim.Adam(model.parameters(), lr=1e-3)
            for _ in range(2):  # the second step holds Adam's state as well
                _train_step(model.train(), opt, images, masks, bf16=False)
    return peak_rss_mb()


def bench_memory(sizes=(128, 512), train_size: int = classroom.IMAGE_SIZE, train_batch: int = 16) -> dict:
    """Peak RSS of: importing torch and the package; classroom FCN-8s inference (batch 16) at
    each size; classroom FCN-8s training steps. Each in a fresh process, so one workload's
    peak does not hide another's."""
    workloads = [("import torch + fcn_lesson", "import", 0, 0)]
    workloads += [(f"FCN-8s classroom inference, batch 16, {s} px", "inference", s, 16) for s in sizes]
    workloads.append((f"FCN-8s classroom training, batch {train_batch}, {train_size} px", "train",
                      train_size, train_batch))
    rows = []
    for label, kind, size, batch in workloads:
        with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
            peak = pool.submit(_workload_peak_rss, kind, size, batch).result()
        rows.append({"workload": label, "peak_rss_mb": None if peak is None else round(peak, 1)})
    return {"rows": rows}


# --- targets, report -------------------------------------------------------------------------

def check_targets(results: dict) -> list[dict]:
    """One row per target the measured parts can judge: value, limit and whether it is met."""
    rows = []

    def add(target, value, limit, met):
        rows.append({"target": target, "value": value, "limit": limit, "met": met})

    if "notebooks" in results:
        for r in results["notebooks"]["rows"]:
            add(f"{r['notebook']} run time (s)", r["seconds"], f"<= {TARGETS['notebook_s']:g}",
                r["seconds"] is not None and r["seconds"] <= TARGETS["notebook_s"])
            add(f"{r['notebook']} peak RSS (MB)", r["peak_rss_mb"], f"<= {TARGETS['notebook_peak_rss_mb']:g}",
                r["peak_rss_mb"] is not None and r["peak_rss_mb"] <= TARGETS["notebook_peak_rss_mb"])
        total = results["notebooks"]["total_seconds"]
        add("all notebooks (s)", total, f"<= {TARGETS['notebooks_total_s']:g}",
            total is not None and total <= TARGETS["notebooks_total_s"])
    if "latency" in results:
        rows_ = results["latency"]["rows"]
        for r in rows_:
            if (r["variant"], r["size"], r["batch"]) == ("fcn8s", 128, 1):
                add("FCN-8s classroom, 128 px, batch 1 (ms/image)", r["ours_ms"],
                    f"<= {TARGETS['fcn8s_128_batch1_ms']:g}", r["ours_ms"] <= TARGETS["fcn8s_128_batch1_ms"])
        worst = min(rows_, key=lambda r: r["ratio"])
        add(f"naive / ours, slowest case ({worst['variant']} {worst['size']} px batch {worst['batch']})",
            worst["ratio"], f">= {TARGETS['naive_ratio']:g}", worst["ratio"] >= TARGETS["naive_ratio"])
    if "widgets" in results:
        worst = max(results["widgets"]["rows"], key=lambda r: r["median_ms"])
        add(f"widget median, slowest ({worst['widget']}: {worst['control']}) (ms)", worst["median_ms"],
            f"<= {TARGETS['widget_median_ms']:g}", worst["median_ms"] <= TARGETS["widget_median_ms"])
    if "retrain" in results:
        r = results["retrain"]
        add(f"in-class retrain, whole chain (s, scale {r['scale']:g})", r["train_seconds"],
            f"<= {TARGETS['retrain_s']:g}", r["train_seconds"] <= TARGETS["retrain_s"])
        iou = r["stages"][-1]["mean_iou_128"]
        add("in-class retrain, FCN-8s mean IoU at 128 px", iou, f">= {TARGETS['retrain_fcn8s_mean_iou']:g}",
            iou >= TARGETS["retrain_fcn8s_mean_iou"])
    gpu = results.get("train", {}).get("gpu", {})
    if gpu.get("rows"):
        best = max((r for r in gpu["rows"] if "bf16" in r["precision"]), key=lambda r: r["images_per_s"])
        add(f"GPU bf16 / fp32 training ({best['precision']})", best["speedup_vs_fp32"],
            f">= {TARGETS['gpu_bf16_speedup']:g}", best["speedup_vs_fp32"] >= TARGETS["gpu_bf16_speedup"])
        if best["share_of_peak"] is not None:
            add("GPU bf16 share of peak", best["share_of_peak"], f">= {TARGETS['gpu_share_of_peak']:g}",
                best["share_of_peak"] >= TARGETS["gpu_share_of_peak"])
    return rows


def _rows(rows, keys, headers=None) -> str:
    return format_table([{k: r[k] if r[k] is not None else "-" for k in keys} for r in rows], digits=2,
                        headers=headers)


def _report_notebooks(results: dict) -> list[str]:
    out = []
    nb = results["notebooks"]
    out += ["", "1. Notebooks, top to bottom (kernel start not included)",
            _rows(nb["rows"], ("notebook", "seconds", "slowest_cell", "slowest_cell_seconds",
                               "kernel_start_seconds", "peak_rss_mb"),
                  {"slowest_cell": "slowest cell", "slowest_cell_seconds": "its s",
                   "kernel_start_seconds": "kernel start s", "peak_rss_mb": "peak RSS MB"}),
            f"total: {nb['total_seconds']} s"]
    out += [f"  {r['notebook']} FAILED: {r['error']}" for r in nb["rows"] if r["error"]]
    return out


def _report_latency(results: dict) -> list[str]:
    out = []
    lat = results["latency"]
    out += ["", f"2. CPU inference, ms per image (median of {lat['repeat']} runs each, taking turns, "
                f"{lat['threads']} threads); ratio = naive / ours",
            _rows(lat["rows"], ("variant", "size", "batch", "ours_ms", "naive_ms", "ratio",
                                "ours_gflop_per_s", "ours_page_faults"),
                  {"ours_ms": "ours ms", "naive_ms": "naive ms", "ours_gflop_per_s": "ours GFLOP/s",
                   "ours_page_faults": "page faults/call"})]
    return out


def _report_widgets(results: dict) -> list[str]:
    out = []
    w = results["widgets"]
    out += ["", f"3. Widget callback latency, ms ({w['weights']} classroom models)",
            _rows(w["rows"], ("widget", "control", "median_ms", "p95_ms", "samples"),
                  {"median_ms": "median ms", "p95_ms": "p95 ms"})]
    return out


def _report_train(results: dict) -> list[str]:
    out = []
    t = results["train"]
    out += ["", "4. Training throughput",
            _rows(t["cpu"]["rows"], ("device", "model", "precision", "size", "batch", "images_per_s",
                                     "tflop_per_s"), {"images_per_s": "images/s",
                                                      "tflop_per_s": "TFLOP/s"})]
    g = t["gpu"]
    if "skipped" in g:
        out.append(f"GPU: skipped, {g['skipped']}")
    else:
        peak = f"{g['peak_bf16_tflops']:g} TFLOP/s" if g["peak_bf16_tflops"] else "unknown"
        out += [f"GPU {g['device']}, dense bf16 peak {peak}; {g['flop_per_step'] / 1e12:.2f} "
                "TFLOP per step (forward + backward)",
                _rows(g["rows"], ("precision", "batch", "images_per_s", "speedup_vs_fp32", "tflop_per_s",
                                  "share_of_peak", "peak_memory_mb", "first_step_s"),
                      {"images_per_s": "images/s", "speedup_vs_fp32": "x fp32", "tflop_per_s": "TFLOP/s",
                       "share_of_peak": "of peak", "peak_memory_mb": "peak MB",
                       "first_step_s": "1st step s"})]
    return out


def _report_memory(results: dict) -> list[str]:
    out = []
    out += ["", "5. Peak memory (each workload in a fresh process)",
            _rows(results["memory"]["rows"], ("workload", "peak_rss_mb"), {"peak_rss_mb": "peak RSS MB"})]
    return out


def _report_retrain(results: dict) -> list[str]:
    r = results["retrain"]
    return ["", f"6. In-class retrain (python -m fcn_lesson retrain, scale {r['scale']:g}): "
                f"{r['train_seconds']:.0f} s in all; mean IoU on {r['eval_images']} fresh 128-px images",
            _rows(r["stages"], ("variant", "seconds", "mean_iou_128"), {"mean_iou_128": "mean IoU"})]


def report(results: dict) -> str:
    """The tables as text."""
    m = results["machine"]
    gpu = f", GPU {m['cuda']}" if m["cuda"] else ", no CUDA"
    load = f", load average {m['load_average_1min']} at start" if "load_average_1min" in m else ""
    out = [f"Machine: {m['cpu']}, {m['cpu_count']} logical CPUs (torch uses {m['torch_threads']} threads)"
           f"{gpu}; torch {m['torch']}, Python {m['python']}; {m['started_utc']}{load}"]
    if m.get("load_average_1min", 0) >= BUSY_LOAD:
        out.append("WARNING: other programs were using the CPU when this run started; they slow these "
                   "numbers down and make them noisy. Close them and run again for numbers to publish.")
    for name, part in PARTS.items():
        if name in results:
            out += part.report(results)
    if results.get("targets"):
        out += ["", "Targets", _rows([{**r, "met": "yes" if r["met"] else "NO"} for r in results["targets"]],
                                     ("target", "value", "limit", "met"))]
    return "\n".join(out)


def _log_x(ax, values):
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    # Only for ranges that need it (128 vs 512 px, CPU vs GPU); plain numbers on the ticks.
    if max(values) > 20 * min(values) > 0:
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())


def _plot_notebooks(ax, results: dict) -> None:
    r = results["notebooks"]["rows"]
    ax.barh([x["notebook"].removesuffix(".ipynb") for x in r], [x["seconds"] or 0 for x in r])
    ax.axvline(TARGETS["notebook_s"], color="red", linestyle="--", label="target")
    ax.invert_yaxis()
    ax.set_xlabel("seconds, top to bottom")
    ax.set_title(f"Notebooks (total {results['notebooks']['total_seconds']} s)")


def _plot_latency(ax, results: dict) -> None:
    r = results["latency"]["rows"]
    labels = [f"{x['variant'][3:]} {x['size']}/b{x['batch']}" for x in r]
    y = range(len(r))
    ax.barh([i - 0.2 for i in y], [x["ours_ms"] for x in r], height=0.4, label="ours")
    ax.barh([i + 0.2 for i in y], [x["naive_ms"] for x in r], height=0.4, label="naive")
    ax.set_yticks(list(y), labels, fontsize=7)
    ax.invert_yaxis()
    _log_x(ax, [x["ours_ms"] for x in r] + [x["naive_ms"] for x in r])
    ax.set_xlabel("ms per image (CPU)")
    ax.set_title("Inference: ours vs naive")


def _plot_widgets(ax, results: dict) -> None:
    r = results["widgets"]["rows"]
    labels = [f"{x['widget'].split(' (')[0]}: {x['control']}" for x in r]
    ax.barh(labels, [x["p95_ms"] for x in r], color="0.8", label="p95")
    ax.barh(labels, [x["median_ms"] for x in r], label="median")
    ax.axvline(TARGETS["widget_median_ms"], color="red", linestyle="--", label="target")
    ax.tick_params(axis="y", labelsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("ms per control change")
    ax.set_title("Widget callbacks")


def _plot_train(ax, results: dict) -> None:
    r = results["train"]["cpu"]["rows"] + results["train"]["gpu"].get("rows", [])
    labels = [f"{x['model'].split()[0]} {x['device'][:12]} {x['precision'][:22]}" for x in r]
    ax.barh(labels, [x["images_per_s"] for x in r])
    ax.tick_params(axis="y", labelsize=7)
    ax.invert_yaxis()
    _log_x(ax, [x["images_per_s"] for x in r])
    ax.set_xlabel("training images/s")
    ax.set_title("Training throughput")


def _plot_memory(ax, results: dict) -> None:
    r = results["memory"]["rows"]
    ax.barh([x["workload"].replace("classroom ", "") for x in r], [x["peak_rss_mb"] or 0 for x in r])
    ax.tick_params(axis="y", labelsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("peak RSS (MB)")
    ax.set_title("Peak memory")


def _plot_retrain(ax, results: dict) -> None:
    stages = results["retrain"]["stages"]
    ends = np.cumsum([s["seconds"] for s in stages]) / 60
    ax.plot(ends, [s["mean_iou_128"] for s in stages], "o-", color="tab:blue")
    for end, s in zip(ends, stages, strict=True):
        ax.annotate(s["variant"], (end, s["mean_iou_128"]), fontsize=7, xytext=(3, -9),
                    textcoords="offset points")
    ax.axvline(TARGETS["retrain_s"] / 60, color="k", ls="--", lw=0.8, label="10-minute target")
    ax.axhline(TARGETS["retrain_fcn8s_mean_iou"], color="tab:red", ls="--", lw=0.8,
               label="FCN-8s target")
    ax.set_xlabel("minutes since the retrain started")
    ax.set_ylabel("mean IoU, fresh 128-px images")
    ax.set_ylim(0, 1)
    ax.set_title("In-class retrain")


def _run_retrain(s: dict, progress) -> dict:
    import tempfile

    from fcn_lesson.cli import retrain_chain

    with tempfile.TemporaryDirectory() as out:
        result = retrain_chain(Path(out), s["retrain_scale"], say=progress)
    for stage in result["stages"]:
        del stage["checkpoint"]  # gone with the temporary folder
    return result


def _run_train(s: dict, progress) -> dict:
    result = {"cpu": bench_train_cpu(s["train_size"], s["train_batch"], s["repeat"]),
              "gpu": bench_train_gpu(batch=s["gpu_batch"], repeat=s["repeat"], with_compile=s["compile"])}
    if "skipped" in result["gpu"]:
        progress(f"bench: GPU skipped: {result['gpu']['skipped']}")
    return result


@dataclass(frozen=True)
class Part:
    """One part of the benchmark: how to measure it (from the run's settings), its tables as
    text lines, and its panel of the plot."""

    run: Callable[[dict, Callable], dict]
    report: Callable[[dict], list[str]]
    plot: Callable


# The parts, in the order they run, report and plot (--parts picks some of them).
PARTS = {
    "notebooks": Part(lambda s, progress: bench_notebooks(s["notebook_dir"], progress=progress),
                      _report_notebooks, _plot_notebooks),
    "latency": Part(lambda s, progress: bench_latency(s["sizes"], repeat=s["repeat"]),
                    _report_latency, _plot_latency),
    "widgets": Part(lambda s, progress: bench_widgets(s["repeat"]), _report_widgets, _plot_widgets),
    "train": Part(_run_train, _report_train, _plot_train),
    "memory": Part(lambda s, progress: bench_memory(s["sizes"], s["train_size"], s["train_batch"]),
                   _report_memory, _plot_memory),
    "retrain": Part(_run_retrain, _report_retrain, _plot_retrain),
}


def plot(results: dict, path: Path) -> Path:
    """One panel per measured part, each with its target as a dashed line; saved as PNG."""
    # A bare Figure (no pyplot): nothing global changes when this runs inside a notebook.
    from matplotlib.figure import Figure

    panels = [p for p in PARTS if p in results]
    cols = {1: 1, 2: 2, 4: 2}.get(len(panels), 3)
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(4.6 * cols, 3.6 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")

    for ax, part in zip(axes.flat, panels, strict=False):
        PARTS[part].plot(ax, results)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(f"python -m benchmarks: {results['machine']['cpu']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    return path


def run(parts=tuple(PARTS), sizes=(128, 512), repeat: int = 10, out: Path = Path("bench-output"),
        notebook_dir: Path = NOTEBOOK_DIR, train_size: int = classroom.IMAGE_SIZE, train_batch: int = 16,
        gpu_batch: int = 16, with_compile: bool = True, retrain_scale: float = 1.0, progress=print) -> dict:
    """Run the chosen parts; write bench.json, bench.txt and bench.png under `out`."""
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        raise ValueError(f"unknown parts {unknown}; choose from {', '.join(PARTS)}")
    if repeat < 1 or not sizes or min(sizes) < 1 or train_size < 1 or min(train_batch, gpu_batch) < 1:
        raise ValueError("repeat, sizes, train size and batches must be >= 1")
    if not 0 < retrain_scale <= 1:
        raise ValueError(f"retrain scale must be in (0, 1], got {retrain_scale:g}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = {"machine": machine(),
               "settings": {"parts": list(parts), "sizes": list(sizes), "repeat": repeat,
                            "train_size": train_size, "train_batch": train_batch, "gpu_batch": gpu_batch,
                            "compile": with_compile, "retrain_scale": retrain_scale}}
    settings = {**results["settings"], "notebook_dir": notebook_dir}
    for part in PARTS:
        if part not in parts:
            continue
        progress(f"bench: {part} ...")
        start = time.perf_counter()
        results[part] = PARTS[part].run(settings, progress)
        results[part]["part_seconds"] = round(time.perf_counter() - start, 1)
    results["targets"] = check_targets(results)
    text = report(results)
    (out / "bench.json").write_text(json.dumps(results, indent=1))
    (out / "bench.txt").write_text(text + "\n")
    plot(results, out / "bench.png")
    progress(text)
    progress(f"wrote {out / 'bench.json'}, {out / 'bench.txt'}, {out / 'bench.png'}")
    return results


# --- command line ----------------------------------------------------------------------------

def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, e.g. 128,512; got {text!r}") \
            from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _parts(text: str) -> list[str]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        raise argparse.ArgumentTypeError(f"unknown part(s) {', '.join(unknown) or '(none given)'}; "
                                         f"choose from {','.join(PARTS)}")
    return parts


def add_arguments(p: argparse.ArgumentParser) -> None:
    # String defaults go through `type` as well, and read well in --help.
    p.add_argument("--parts", type=_parts, default=",".join(PARTS),
                   help=f"comma-separated parts to run, from {','.join(PARTS)}")
    p.add_argument("--sizes", type=_int_list, default="128,512",
                   help="image sizes (px) for inference latency and inference memory")
    p.add_argument("--repeat", type=int, default=10,
                   help="timed runs per measurement (widgets: 5x as many per control)")
    p.add_argument("--out", type=Path, default=Path("bench-output"),
                   help="folder for bench.json, bench.txt and bench.png")
    p.add_argument("--notebook-dir", type=Path, default=NOTEBOOK_DIR, help="the notebooks to time")
    p.add_argument("--train-size", type=int, default=classroom.IMAGE_SIZE,
                   help="image size of the CPU training benchmark")
    p.add_argument("--train-batch", type=int, default=16, help="batch of the CPU training benchmark")
    p.add_argument("--gpu-batch", type=int, default=16,
                   help="batch of the GPU training benchmark (full-width FCN-8s, 512x512)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                   help="also time torch.compile in the GPU training benchmark")
    p.add_argument("--retrain-scale", type=float, default=1.0,
                   help="share of the in-class retrain's images to train on (1: the recipe as documented)")


def main(args: argparse.Namespace) -> int:
    results = run(args.parts, args.sizes, args.repeat, args.out, args.notebook_dir, args.train_size,
                  args.train_batch, args.gpu_batch, args.compile, args.retrain_scale)
    failed = [r["notebook"] for r in results.get("notebooks", {}).get("rows", []) if r["error"]]
    return 1 if failed else 0


def cli(argv: list[str] | None = None) -> int:
    """`python -m benchmarks [options]`: parse, run, and explain bad input in one line (exit 2)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n", 1)[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return main(args)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
