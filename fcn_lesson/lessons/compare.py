"""Comparing FCN-32s, FCN-16s and FCN-8s: accuracy, boundaries, cost, and the paper's numbers.

Predictions are made once per variant (`predict_all`) and every table and figure is
computed from them, so all numbers describe the same pixels. Costs are counted, not
estimated: parameters by summing `numel`, FLOPs with `torch.utils.flop_counter`, latency
by timing forward passes. Full-width VGG16 models are built on the meta device (shapes
only, no memory, no initialisation), which is all parameter and FLOP counts need.
"""

import copy
import statistics
import time
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from fcn_lesson.core.models import FCN, build_model
from fcn_lesson.core.upsample import bilinear_upsample
from fcn_lesson.datasets.common import IGNORE_INDEX
from fcn_lesson.engine.calibrate import best_class_shift
from fcn_lesson.engine.device import eval_mode
from fcn_lesson.engine.loop import predict
from fcn_lesson.engine.metrics import (
    accuracy_by_boundary_distance,
    boundary_distance,
    confusion_matrix,
    score_predictions,
    segmentation_scores,
)

LABELS = {"fcn32s": "FCN-32s", "fcn16s": "FCN-16s", "fcn8s": "FCN-8s"}

METRICS = ("pixel_acc", "mean_acc", "mean_iou", "fw_iou", "boundary_acc")

# Long, Shelhamer & Darrell (CVPR 2015), Table 2: the skip nets on a subset of PASCAL VOC
# 2011 val, in percent. The paper reports no boundary accuracy for them.
PAPER_TABLE2 = {
    "fcn32s": {"pixel_acc": 89.1, "mean_acc": 73.3, "mean_iou": 59.4, "fw_iou": 81.4},
    "fcn16s": {"pixel_acc": 90.0, "mean_acc": 75.7, "mean_iou": 62.4, "fw_iou": 83.0},
    "fcn8s": {"pixel_acc": 90.3, "mean_acc": 75.9, "mean_iou": 62.7, "fw_iou": 83.2},
}


def _label(name: str) -> str:
    return LABELS.get(name, name)


# --- accuracy --------------------------------------------------------------------------

def predict_all(models: Mapping[str, FCN], images: torch.Tensor, batch_size: int = 16) -> dict:
    """{name: argmax class maps (N, H, W) on the CPU} for each model, on its own device, by
    `fcn_lesson.engine.loop.predict` (float32, TF32 off: the tables are then the same on CPU
    and GPU up to a handful of near-tied pixels)."""
    if images.dim() != 4:
        raise ValueError(f"expected a batch of images (N, 3, H, W), got shape {tuple(images.shape)}")
    return {name: predict(model, images, batch_size=batch_size) for name, model in models.items()}


def metrics_table(predictions: Mapping[str, torch.Tensor], masks: torch.Tensor, num_classes: int,
                  boundary_width: int = 3) -> list[dict]:
    """One row per prediction set: the paper's four metrics and the accuracy within
    `boundary_width` pixels of an object edge, in percent (as the paper's Table 2), from one
    confusion matrix over all images."""
    rows = []
    for name, pred in predictions.items():
        scores = score_predictions(pred, masks, num_classes, boundary_width)
        rows.append({"variant": _label(name), **{k: 100 * scores[k] for k in METRICS}})
    return rows


def paper_comparison(rows: Sequence[dict]) -> list[dict]:
    """`metrics_table` rows beside the paper's Table 2: each cell "ours / paper"."""
    by_label = {_label(k): v for k, v in PAPER_TABLE2.items()}
    out = []
    for row in rows:
        paper = by_label.get(row["variant"])
        if paper is None:
            raise ValueError(f"the paper's Table 2 has no {row['variant']!r}; it has "
                             f"{', '.join(by_label)}")
        out.append({"variant": row["variant"],
                    **{k: f"{row[k]:.1f} / {paper[k]:.1f}" for k in paper}})
    return out


def accuracy_vs_distance(predictions: Mapping[str, torch.Tensor], masks: torch.Tensor,
                         max_distance: int = 16) -> dict:
    """{name: (accuracy[d], pixel count[d])} for d = 0 .. max_distance pixels from the nearest
    label edge, over all images (the last bin holds everything further away)."""
    return {name: accuracy_by_boundary_distance(pred, masks, max_distance)
            for name, pred in predictions.items()}


def errors_near_edges(pred: torch.Tensor, masks: torch.Tensor, num_classes: int,
                      distances: Sequence[int] = (1, 2, 3, 5)) -> list[dict]:
    """How much of what a net still gets wrong lies on the object edges.

    One row per d in `distances`: the share of its wrong pixels closer than d pixels to the
    nearest label edge ("errors left"), and the mean IoU (%) it would reach if every wrong pixel
    at least d pixels from an edge were put right and those closer left as they are. A first row
    gives the mean IoU as it is. Distances are `boundary_distance`'s (chessboard, 0 on the edge itself)."""
    if pred.shape != masks.shape:
        raise ValueError(f"pred and masks shapes differ: {tuple(pred.shape)} vs {tuple(masks.shape)}")
    if not distances or min(distances) < 1:
        raise ValueError(f"distances must be >= 1 pixel (1: every error off the edge pixel "
                         f"itself corrected), got {list(distances)}")
    distance = boundary_distance(masks, max(distances)).reshape(masks.shape)
    wrong = (pred != masks) & (masks != IGNORE_INDEX)

    def mean_iou(labels: torch.Tensor) -> float:
        return 100 * segmentation_scores(confusion_matrix(labels, masks, num_classes))["mean_iou"]

    rows = [{"put right": "nothing", "errors left (%)": 100.0, "mean_iou": mean_iou(pred)}]
    for d in distances:
        left = (wrong & (distance < d)).sum().item() / max(wrong.sum().item(), 1)
        rows.append({"put right": f"errors ≥ {d} px from an edge", "errors left (%)": 100 * left,
                     "mean_iou": mean_iou(torch.where(distance >= d, masks, pred))})
    return rows


def plot_accuracy_vs_distance(curves: Mapping[str, tuple], ax=None):
    """Accuracy against distance to the nearest object boundary, one line per variant.
    Returns the Figure."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6.4, 3.6))
    for name, (acc, _) in curves.items():
        distance = range(len(acc))
        ax.plot(distance, 100 * acc.numpy(), marker="o", markersize=3, label=_label(name))
    last = len(next(iter(curves.values()))[0]) - 1
    ax.set_xlabel(f"distance to the nearest object boundary (pixels; {last} = {last} or more)")
    ax.set_ylabel("pixel accuracy (%)")
    ax.set_title("Where the skips help: accuracy near and far from boundaries")
    ax.grid(alpha=0.3)
    ax.legend()
    return ax.figure


def _upsampling_matrix(cells: int, stride: int) -> torch.Tensor:
    """(cells * stride, cells): FCN's fixed bilinear upsampling along one axis, as a matrix.

    The kernel of `core.upsample.bilinear_upsample` is separable, so upsampling a grid with a
    single 1 at (i, i) gives outer(u_i, u_i), u_i the matrix's column i; read back from there,
    the matrix is that function's, borders included. A grid's upsampling is then
    up @ grid @ up.T per channel, which for a batch of 100 score grids trains about twice as
    fast on a 2-core CPU (test_compare checks that the two agree)."""
    diagonal = torch.zeros(cells, 1, cells, cells)
    diagonal[range(cells), 0, range(cells), range(cells)] = 1
    squares = bilinear_upsample(diagonal, stride)[:, 0]  # (cells, H, H): outer(u_i, u_i)
    return (squares.sum(2) / squares.sum((1, 2)).sqrt()[:, None]).T


def best_at_stride(masks: torch.Tensor, num_classes: int, stride: int, steps: int = 100,
                   lr: float = 1.0, upsampling: nn.Module | None = None) -> torch.Tensor:
    """What a net of output stride `stride` could draw at best: argmax class maps (N, H, W).

    Every FCN ends the same way: one score per class on a grid of cells `stride` pixels apart,
    upsampled (by the fixed bilinear kernel, or by `upsampling`, a net's own learned final
    upsampler such as `model.upscore_final`), argmax. Here that grid is not computed by any
    network; it is optimised directly, image by image, against the true mask (Adam on the
    per-pixel cross-entropy, from zero scores), then each class's scores are offset by the
    constant that maximises mean IoU over all the images (`best_class_shift`, as the shipped
    nets are tuned). The result bounds what training can achieve: no net of that stride can
    draw shapes its final upsampling cannot. (It is a bound found by an optimiser, so the true
    one may lie a little higher.) The grid covers the image padded to a multiple of 32, as the
    nets' does.
    """
    if masks.dim() != 3:
        raise ValueError(f"expected masks (N, H, W), got shape {tuple(masks.shape)}")
    height, width = masks.shape[-2:]
    rows, cols = (-(-n // 32) * 32 // stride for n in (height, width))
    if upsampling is None:
        up_h = _upsampling_matrix(rows, stride)[:height]
        up_w = _upsampling_matrix(cols, stride)[:width]

        def upsampled(grid):
            return torch.einsum("yi,ncij,xj->ncyx", up_h, grid, up_w)
    else:
        if upsampling.factor != stride:
            raise ValueError(f"the upsampling given has factor {upsampling.factor}, not the stride {stride}")
        upsampling = copy.deepcopy(upsampling).cpu().float().requires_grad_(False)

        def upsampled(grid):
            return upsampling(grid)[..., :height, :width]

    grid = torch.zeros(len(masks), num_classes, rows, cols, requires_grad=True)
    optimizer = torch.optim.Adam([grid], lr=lr)
    for _ in range(steps):
        loss = F.cross_entropy(upsampled(grid), masks)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        scores = upsampled(grid)
    shift, _, _ = best_class_shift(scores, masks)
    return (scores + shift.view(-1, 1, 1)).argmax(1)


def qualitative_grid(dataset, indices: Sequence[int], predictions: Mapping[str, torch.Tensor]):
    """Image, ground truth and each variant's prediction, one row per index, with the
    palette legend (`viz.show_samples`). `predictions` hold one map per dataset image."""
    from fcn_lesson.lessons.viz import show_samples

    indices = [int(i) for i in indices]
    for name, pred in predictions.items():
        if len(pred) != len(dataset):
            raise ValueError(f"predictions[{name!r}] has {len(pred)} maps for a dataset of "
                             f"{len(dataset)} images; pass one per image (predict_all)")
    picked = {_label(name): pred[indices] for name, pred in predictions.items()}
    return show_samples(dataset, indices, picked)


# --- cost ------------------------------------------------------------------------------

def full_width_model(variant: str, num_classes: int = 21) -> FCN:
    """The paper's model (VGG16 width, no BatchNorm) on the meta device: every layer's shape
    and none of its 134M weights, built in milliseconds."""
    with torch.device("meta"):
        return build_model(variant, num_classes=num_classes).eval()


def count_parameters(model: nn.Module) -> int:
    """Number of learnable weights (buffers such as the fixed bilinear kernel excluded)."""
    return sum(p.numel() for p in model.parameters())


def _image_size(image_size) -> tuple[int, int]:
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(size) != 2 or not all(isinstance(n, int) and n >= 1 for n in size):
        raise ValueError(f"image_size must be an int or (height, width) of ints >= 1, got {image_size!r}")
    return size


def _input(model: nn.Module, image_size) -> torch.Tensor:
    height, width = _image_size(image_size)
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(0)
    return torch.rand(1, 3, height, width, generator=generator).to(device)


@torch.inference_mode()
def count_flops(model: nn.Module, image_size) -> int:
    """FLOPs of one forward pass on one (H, W) image, by `torch.utils.flop_counter`: two per
    multiply-add of every convolution and matrix product; pooling, BatchNorm, ReLU and the
    skip additions are not counted (they are <1% here). Works on the meta device."""
    with eval_mode(model), FlopCounterMode(display=False) as counter:
        model(_input(model, image_size))
    return counter.get_total_flops()


def _materialized(model: nn.Module) -> nn.Module:
    # A meta model has no storage. For timing, weights only need to exist: a convolution
    # costs the same whatever the values (zeros also avoid slow denormal arithmetic).
    real = copy.deepcopy(model).to_empty(device="cpu")
    with torch.no_grad():
        for tensor in (*real.parameters(), *real.buffers()):
            tensor.zero_()
    return real


@torch.inference_mode()
def measure_latency(model: nn.Module, image_size, repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time (seconds) of a forward pass on one (H, W) image, on the model's
    device, after `warmup` untimed passes (the first call allocates and picks kernels)."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats}, {warmup}")
    x = _input(model, image_size)
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    times = []
    with eval_mode(model):
        for i in range(warmup + repeats):
            sync()
            start = time.perf_counter()
            model(x)
            sync()
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return statistics.median(times)


def model_costs(model: nn.Module, image_size, repeats: int = 5, warmup: int = 1,
                time_it: bool = True) -> dict:
    """params, GFLOPs and latency (ms; median of `repeats`) for one (H, W) image.

    A meta-device model (`full_width_model`) is counted as it is and timed as a CPU copy
    with zero weights, freed afterwards (about 0.5 GB at full width).
    """
    device = next(model.parameters()).device
    row = {"params": count_parameters(model), "gflops": count_flops(model, image_size) / 1e9}
    if time_it:
        timed = _materialized(model) if device.type == "meta" else model
        row["latency_ms"] = 1000 * measure_latency(timed, image_size, repeats, warmup)
        row["device"] = str(next(timed.parameters()).device)
    return row


# --- text tables -----------------------------------------------------------------------



# --- transfer: scratch vs transplant ---------------------------------------------------------

TRANSFER_LABELS = {"scratch": "from scratch", "finetune": "classifier transplanted, all fine-tuned",
                   "frozen": "classifier transplanted, features frozen (only score_fr trained)"}


def plot_transfer_curves(rows: Sequence[dict]):
    """Mean IoU on fresh images against the number of labelled masks, one line per way of
    getting an FCN-32s (`fcn_lesson.engine.transfer.run` rows). Returns the Figure."""
    import matplotlib.pyplot as plt

    methods = [m for m in TRANSFER_LABELS if any(r["method"] == m for r in rows)]
    if not methods:
        raise ValueError(f"no rows for any of {', '.join(TRANSFER_LABELS)}")
    fig, ax = plt.subplots(figsize=(7, 4.2), layout="constrained")
    for method in methods:
        mine = sorted((r["masks"], 100 * r["mean_iou"]) for r in rows if r["method"] == method)
        ax.plot(*zip(*mine, strict=True), marker="o", label=TRANSFER_LABELS[method])
    ax.set_xscale("log")
    counts = sorted({r["masks"] for r in rows})
    ax.set_xticks(counts, [str(n) for n in counts])
    ax.minorticks_off()
    ax.set_xlabel("labelled masks used for training (log scale)")
    ax.set_ylabel("mean IoU on fresh images (%)")
    steps = sorted({r["steps"] for r in rows})
    ax.set_title(f"FCN-32s three ways, {', '.join(map(str, steps))} training steps each")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig
