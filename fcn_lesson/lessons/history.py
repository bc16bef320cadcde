"""Before FCN and after it: the computations of notebook 8, each on the classroom models.

* Patchwise classification (before FCN): label each stride-32 cell by running the net on the
  patch around it, against one fully convolutional pass (`patchwise_vs_fcn`).
* Shift-and-stitch (paper Sec. 3.2): f x f shifted passes interleaved into a denser score map
  (`shift_and_stitch`), against in-network upsampling.
* Dilated ("atrous", "hole") convolution, as DeepLab (Chen et al., ICLR 2015) does it: remove the
  stride of the last poolings and dilate every layer after them, same weights
  (`dilated_scores`). This is the paper's "filter rarefaction", equal to shift-and-stitch.
* Sum against concatenation fusion (FCN against U-Net, Ronneberger et al. 2015): two fusion
  heads trained on the same frozen features (`SumFusionHead`, `ConcatFusionHead`,
  `fusion_experiment`). `python -m fcn_lesson.lessons.history` reruns the shipped experiment.

Score maps here are `score_fr`-style: (N, K, h, w) before any upsampling. On a stride-s grid
cell j is centred on pixel 15.5 + s j (as `score_fr`'s cell 0 is on pixel 15.5), which
`upsample_scores` takes into account.
"""

import argparse
import hashlib
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from fcn_lesson.core.geometry import stage_table
from fcn_lesson.core.models import FCN, pad_to_multiple
from fcn_lesson.core.upsample import BilinearUpsample, bilinear_upsample
from fcn_lesson.datasets.shapes import ShapesDataset
from fcn_lesson.engine.checkpoint import load_checkpoint
from fcn_lesson.engine.loop import adam_cosine_steps
from fcn_lesson.engine.metrics import confusion_matrix, segmentation_scores

STRIDE = 32  # score_fr's stride in every classroom FCN


def _check_fcn(model: FCN) -> None:
    if not isinstance(model, FCN):
        raise TypeError(f"expected an FCN from fcn_lesson (FCN32s/16s/8s), got {type(model).__name__}")


@torch.no_grad()
def score_fr(model: FCN, x: torch.Tensor) -> torch.Tensor:
    """The stride-32 class scores of one forward pass, (N, K, ceil(H/32), ceil(W/32))."""
    _check_fcn(model)
    return model.forward_maps(x)["score_fr"]


def receptive_field(model: FCN) -> int:
    """Pixels one `score_fr` cell depends on, along each side (404 for VGG16's geometry)."""
    return next(r.receptive_field for r in stage_table(model, 64, 64) if r.name == "score_fr")


# --- patchwise classification ------------------------------------------------------------------

def interior_cells(size: int, rf: int, stride: int = STRIDE) -> range:
    """Cells of a `size`-pixel side whose whole receptive field lies inside the image."""
    first = -(-(rf // 2 - stride // 2) // stride)  # centre 15.5 + 32 i must be >= rf/2 - 0.5
    last = (size - rf // 2 - stride // 2) // stride
    return range(first, last + 1)


@torch.no_grad()
def patchwise_vs_fcn(model: FCN, image: torch.Tensor, cells: int | None = None,
                     batch_size: int = 8) -> dict:
    """Label interior cells of one large image the pre-FCN way and the FCN way, same weights.

    Patchwise: for each cell, cut the smallest stride-aligned square patch that holds the cell's
    whole receptive field and run the net on it, keeping only the patch's centre cell. FCN: one
    pass over the image, all cells at once. Where the patch holds the receptive field the two
    are the same computation, so the scores agree to float rounding.

    Returns max_abs_diff, the number of cells compared, seconds per patch and per full pass, and
    `cost_ratio`: (seconds per patch x every cell of the image's score grid) / one full pass.
    """
    _check_fcn(model)
    if image.dim() != 3:
        raise ValueError(f"expected one image (3, H, W), got shape {tuple(image.shape)}")
    height, width = image.shape[-2:]
    rf = receptive_field(model)
    margin = -(-(rf // 2 - STRIDE // 2) // STRIDE)  # cells between a patch's edge and its centre
    patch = (2 * margin + 1) * STRIDE
    rows, cols = interior_cells(height, rf), interior_cells(width, rf)
    todo = [(i, j) for i in rows for j in cols if (i - margin) >= 0 and (j - margin) >= 0
            and (i + margin + 1) * STRIDE <= height and (j + margin + 1) * STRIDE <= width]
    if not todo:
        raise ValueError(f"a {height} x {width} image has no cell whose {rf}-pixel receptive field "
                         f"fits inside it; use at least {patch + STRIDE} pixels")
    todo = todo[:cells] if cells else todo
    x = image[None].to(next(model.parameters()).device)
    start = time.perf_counter()
    full = score_fr(model, x)[0]
    full_seconds = time.perf_counter() - start
    diffs, start = [], time.perf_counter()
    for k in range(0, len(todo), batch_size):
        chunk = todo[k:k + batch_size]
        patches = torch.stack([x[0, :, (i - margin) * STRIDE:(i + margin + 1) * STRIDE,
                                 (j - margin) * STRIDE:(j + margin + 1) * STRIDE] for i, j in chunk])
        centre = score_fr(model, patches)[:, :, margin, margin]
        for (i, j), scores in zip(chunk, centre, strict=True):
            diffs.append((scores - full[:, i, j]).abs().max().item())
    patch_seconds = (time.perf_counter() - start) / len(todo)
    grid = full.shape[-2] * full.shape[-1]
    return {"max_abs_diff": max(diffs), "cells": len(todo), "patch": patch, "receptive_field": rf,
            "grid_cells": grid, "patch_seconds": patch_seconds, "full_seconds": full_seconds,
            "cost_ratio": patch_seconds * grid / full_seconds,
            "score_range": (full.max() - full.min()).item()}


# --- shift-and-stitch and dilation ----------------------------------------------------------------

@torch.no_grad()
def shift_and_stitch(model: FCN, x: torch.Tensor, output_stride: int) -> torch.Tensor:
    """Scores on a stride-`output_stride` grid from (32 / output_stride)^2 shifted passes.

    Pass (a, b) sees the image moved up by a and left by b pixels (a, b multiples of
    output_stride); its cell i is then centred on pixel 15.5 + 32 i + a, which is cell
    32 i / output_stride + a / output_stride of the denser grid.
    """
    _check_fcn(model)
    if output_stride not in (1, 2, 4, 8, 16, 32):
        raise ValueError(f"output_stride must divide 32, got {output_stride!r}")
    f = STRIDE // output_stride
    height, width = x.shape[-2:]
    out = None
    for a in range(f):
        for b in range(f):
            shifted = x[..., a * output_stride:, b * output_stride:]
            # Pad the shifted image back to the full size so every pass has the same grid.
            shifted = F.pad(shifted, (0, b * output_stride, 0, a * output_stride), mode="replicate")
            scores = score_fr(model, shifted)
            if out is None:
                n, k, h, w = scores.shape
                out = scores.new_empty(n, k, h * f, w * f)
            out[..., a::f, b::f] = scores
    return out


def _pool_keep_size(x: torch.Tensor, dilation: int) -> torch.Tensor:
    # A 2 x 2 max-pool with its stride removed: stride 1, taps `dilation` apart, padded at the
    # bottom/right with -inf so the map keeps its size. Cell 2^k i of the result is the strided
    # pool's cell i.
    x = F.pad(x, (0, dilation, 0, dilation), value=float("-inf"))
    return F.max_pool2d(x, 2, stride=1, dilation=dilation)


def _run_dilated(layers: nn.Module, x: torch.Tensor, dilation: int, keep_pool: bool) -> tuple:
    for layer in layers.children():
        if isinstance(layer, nn.Sequential):
            x, dilation = _run_dilated(layer, x, dilation, keep_pool)
        elif isinstance(layer, nn.Conv2d):
            pad = layer.padding[0] * dilation
            x = F.conv2d(x, layer.weight, layer.bias, padding=pad, dilation=dilation)
        elif isinstance(layer, nn.MaxPool2d) and not keep_pool:
            x = _pool_keep_size(x, dilation)
            dilation *= 2
        else:  # BatchNorm, ReLU, Dropout (eval), or a pooling that keeps its stride
            x = layer(x)
    return x, dilation


@torch.no_grad()
def dilated_scores(model: FCN, x: torch.Tensor, output_stride: int = 8) -> torch.Tensor:
    """`score_fr` on a stride-`output_stride` grid in ONE pass, with the model's own weights.

    The poolings after stride `output_stride` lose their stride, and every layer after such a
    pooling is dilated by the product of the strides removed before it (DeepLab's "hole
    algorithm"; the FCN paper's "filter rarefaction", Sec. 3.2). Every 32/output_stride-th cell
    is exactly the original net's `score_fr`; the cells between are what shift-and-stitch adds.
    """
    _check_fcn(model)
    if output_stride not in (8, 16, 32):
        raise ValueError(f"output_stride must be 8, 16 or 32 (after pool3, 4 or 5), got {output_stride!r}")
    if model.training:
        raise ValueError("put the model in eval mode first (model.eval()): BatchNorm and dropout "
                         "must not use batch statistics here")
    backbone = model.backbone
    x = pad_to_multiple(x, STRIDE)
    x = backbone.to_pool3(x)  # stride 8, untouched
    dilation = 1
    x, dilation = _run_dilated(backbone.to_pool4, x, dilation, keep_pool=output_stride >= 16)
    x, dilation = _run_dilated(backbone.to_pool5, x, dilation, keep_pool=output_stride >= 32)
    x, dilation = _run_dilated(backbone.head, x, dilation, keep_pool=True)
    return model.score_fr(x)


def upsample_scores(scores: torch.Tensor, output_stride: int, height: int, width: int) -> torch.Tensor:
    """Bilinear upsampling of a stride-`output_stride` score map to (height, width) logits.

    `bilinear_upsample` centres cell j on pixel s j + (s - 1) / 2; these grids centre it on
    15.5 + s j (the first cell of `score_fr`), so the result moves down/right by 16 - s/2 px.
    """
    up = bilinear_upsample(scores, output_stride) if output_stride > 1 else scores
    shift = STRIDE // 2 - output_stride // 2
    up = F.pad(up, (shift, 0, shift, 0), mode="replicate")
    return up[..., :height, :width]


def count_gflops(fn, *args) -> float:
    """GFLOPs (2 per multiply-add) of one call, by torch.utils.flop_counter."""
    with FlopCounterMode(display=False) as counter:
        fn(*args)
    return counter.get_total_flops() / 1e9


def seconds(fn, *args, repeats: int = 3) -> float:
    """The fastest of `repeats` timed calls: the least disturbed by other work on the machine."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args)
        best = min(best, time.perf_counter() - start)
    return best


def mean_iou(logits_fn, images: torch.Tensor, masks: torch.Tensor, num_classes: int,
             batch_size: int = 10) -> float:
    """Mean IoU over a set of images of `logits_fn(batch) -> (N, K, H, W)` (one confusion matrix)."""
    cm = torch.zeros(num_classes, num_classes, dtype=torch.long)
    for k in range(0, len(images), batch_size):
        pred = logits_fn(images[k:k + batch_size]).argmax(1).cpu()
        cm += confusion_matrix(pred, masks[k:k + batch_size], num_classes)
    return segmentation_scores(cm)["mean_iou"]


def mixed_objects(preds: torch.Tensor, masks: torch.Tensor, num_classes: int,
                  min_share: float = 0.05) -> tuple[int, int]:
    """(mixed, objects): ground-truth objects (connected regions of one class other than
    background, class 0), and how many of them get two or more object classes, each on at least
    `min_share` of the object's pixels. Every pixel is decided on its own, and nothing in an FCN
    makes the pixels of one object agree (DeepLab's CRF does)."""
    from scipy import ndimage

    mixed = objects = 0
    for pred, truth in zip(preds.cpu().numpy(), masks.cpu().numpy(), strict=True):
        for c in range(1, num_classes):
            labels, n = ndimage.label(truth == c)
            for j in range(1, n + 1):
                inside = torch.from_numpy(pred[labels == j])
                share = torch.bincount(inside, minlength=num_classes)[1:] / inside.numel()
                objects += 1
                mixed += int((share >= min_share).sum() >= 2)
    return mixed, objects


# --- sum against concatenation fusion -------------------------------------------------------------

@torch.no_grad()
def backbone_features(model: FCN, images: torch.Tensor, batch_size: int = 32) -> dict[str, torch.Tensor]:
    """pool3, pool4 and fc7 of a frozen backbone (model in eval mode) for every image."""
    _check_fcn(model)
    device = next(model.parameters()).device
    parts: dict[str, list] = {"pool3": [], "pool4": [], "fc7": []}
    for k in range(0, len(images), batch_size):
        feats = model.backbone(pad_to_multiple(images[k:k + batch_size].to(device), STRIDE))
        for name in parts:
            parts[name].append(feats[name].cpu().contiguous())
    return {name: torch.cat(p) for name, p in parts.items()}


class SumFusionHead(nn.Module):
    """FCN-8s's fusion: every tap scored to K classes by a 1 x 1 conv, score maps SUMMED.

    fc7 -> K, up 2x (learnable, bilinear init) + pool4 -> K, up 2x + pool3 -> K, up 8x (fixed).
    """

    def __init__(self, channels: dict[str, int], num_classes: int):
        super().__init__()
        self.score_fr = nn.Conv2d(channels["fc7"], num_classes, 1)
        self.score_pool4 = nn.Conv2d(channels["pool4"], num_classes, 1)
        self.score_pool3 = nn.Conv2d(channels["pool3"], num_classes, 1)
        self.upscore2 = BilinearUpsample(num_classes, 2, learnable=True)
        self.upscore_pool4 = BilinearUpsample(num_classes, 2, learnable=True)
        self.upscore8 = BilinearUpsample(num_classes, 8)

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        score = self.upscore2(self.score_fr(feats["fc7"])) + self.score_pool4(feats["pool4"])
        score = self.upscore_pool4(score) + self.score_pool3(feats["pool3"])
        return self.upscore8(score)


class ConcatFusionHead(nn.Module):
    """U-Net's fusion (simplified to one conv per level): FEATURES upsampled and CONCATENATED
    with the skip's features, then a 3 x 3 conv + ReLU mixes them; a 1 x 1 conv scores the end.

    fc7 -> C4 (1 x 1), up 2x, [., pool4] -> C4 (3 x 3), up 2x, [., pool3] -> C3 (3 x 3), -> K, up 8x.
    U-Net uses two 3 x 3 convs per level and a learned 2 x 2 up-convolution; one conv and the
    same fixed bilinear upsampling keep the comparison about the fusion itself.
    """

    def __init__(self, channels: dict[str, int], num_classes: int):
        super().__init__()
        c4, c3 = channels["pool4"], channels["pool3"]
        self.reduce = nn.Conv2d(channels["fc7"], c4, 1)
        self.up4 = BilinearUpsample(c4, 2)
        self.fuse4 = nn.Conv2d(2 * c4, c4, 3, padding=1)
        self.up3 = BilinearUpsample(c4, 2)
        self.fuse3 = nn.Conv2d(c4 + c3, c3, 3, padding=1)
        self.classify = nn.Conv2d(c3, num_classes, 1)
        self.upscore8 = BilinearUpsample(num_classes, 8)

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        x = F.relu(self.reduce(feats["fc7"]))
        x = F.relu(self.fuse4(torch.cat([self.up4(x), feats["pool4"]], 1)))
        x = F.relu(self.fuse3(torch.cat([self.up3(x), feats["pool3"]], 1)))
        return self.upscore8(self.classify(x))


FUSION_HEADS = {"sum (FCN-8s)": SumFusionHead, "concat (U-Net)": ConcatFusionHead}


def saved_activation_bytes(head: nn.Module, feats: dict[str, torch.Tensor]) -> int:
    """Bytes of activations the head keeps for its backward pass on `feats`: the tensors that
    torch.autograd.graph.saved_tensors_hooks sees saved, each counted once, weights excluded.
    That is what training must hold in memory besides the weights, per batch of `feats`.
    """
    feats = {k: v.detach().clone() for k, v in feats.items()}
    weights = {p.data_ptr() for p in head.parameters()} | {b.data_ptr() for b in head.buffers()}
    saved: dict[int, int] = {}

    def pack(t):
        if t.data_ptr() not in weights:
            saved[t.data_ptr()] = max(saved.get(t.data_ptr(), 0), t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        head(feats).sum()
    return sum(saved.values())


def _batches(num: int, batch_size: int, steps: int, generator: torch.Generator):
    order = torch.cat([torch.randperm(num, generator=generator)
                       for _ in range(-(-steps * batch_size // num))])
    return order[:steps * batch_size].reshape(steps, batch_size)


def train_head(head: nn.Module, feats: dict[str, torch.Tensor], masks: torch.Tensor, *, steps: int,
               batch_size: int = 16, lr: float = 3e-3, seed: int = 0) -> list[float]:
    """Adam on the per-pixel cross-entropy, cosine schedule; returns the loss of every step."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    height, width = masks.shape[-2:]

    def loss_of(index):
        logits = head({k: v[index] for k, v in feats.items()})[..., :height, :width]
        return F.cross_entropy(logits, masks[index])

    head.train()
    losses = adam_cosine_steps(head.parameters(), _batches(len(masks), batch_size, steps, generator),
                               loss_of, lr)
    head.eval()
    return losses


@torch.no_grad()
def head_mean_iou(head: nn.Module, feats: dict[str, torch.Tensor], masks: torch.Tensor,
                  num_classes: int, batch_size: int = 50) -> float:
    height, width = masks.shape[-2:]
    cm = torch.zeros(num_classes, num_classes, dtype=torch.long)
    for k in range(0, len(masks), batch_size):
        logits = head({n: v[k:k + batch_size] for n, v in feats.items()})[..., :height, :width]
        cm += confusion_matrix(logits.argmax(1), masks[k:k + batch_size], num_classes)
    return segmentation_scores(cm)["mean_iou"]


def fusion_experiment(model: FCN, train: ShapesDataset, val: ShapesDataset, *, steps: int,
                      batch_size: int = 16, lr: float = 3e-3, seed: int = 0) -> dict:
    """Train a sum head and a concat head on the same frozen features of `model`'s backbone.

    Same images, same steps, same optimiser and seed; only the fusion differs. Returns, per
    head: parameters, activation bytes kept for backward per image, validation mean IoU,
    training seconds and final training loss; plus the settings.
    """
    _check_fcn(model)
    model.eval()
    train_images, train_masks = train.tensors()
    val_images, val_masks = val.tensors()
    start = time.perf_counter()
    train_feats, val_feats = backbone_features(model, train_images), backbone_features(model, val_images)
    feature_seconds = time.perf_counter() - start
    channels = {name: t.shape[1] for name, t in train_feats.items()}
    one = {k: v[:1] for k, v in val_feats.items()}
    results = {}
    for name, make in FUSION_HEADS.items():
        torch.manual_seed(seed)
        head = make(channels, model.num_classes)
        start = time.perf_counter()
        losses = train_head(head, train_feats, train_masks, steps=steps, batch_size=batch_size,
                            lr=lr, seed=seed)
        results[name] = {
            "params": sum(p.numel() for p in head.parameters() if p.requires_grad),
            "activation_bytes_per_image": saved_activation_bytes(head.train(), one),
            "mean_iou": head_mean_iou(head.eval(), val_feats, val_masks, model.num_classes),
            "train_seconds": time.perf_counter() - start,
            "final_loss": sum(losses[-20:]) / len(losses[-20:]),
        }
    settings = {"backbone": f"frozen {model.variant} (width {model.width})", "steps": steps,
                "batch_size": batch_size, "lr": lr, "seed": seed,
                "train": repr(train), "val": repr(val), "image_size": list(train_images.shape[-2:]),
                "feature_seconds": feature_seconds}
    return {"settings": settings, "heads": results}


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file: which checkpoint an experiment was run on."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def experiment_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fcn_lesson.lessons.history",
        description="Rerun the sum-vs-concat fusion experiment shipped in data/fusion_experiment.json.")
    parser.add_argument("--checkpoint", type=Path, default=Path("data/fcn32s.pt"),
                        help="the FCN whose frozen backbone feeds both heads")
    parser.add_argument("--out", type=Path, default=Path("data/fusion_experiment.json"))
    parser.add_argument("--train-images", type=int, default=2000)
    parser.add_argument("--val-images", type=int, default=200)
    parser.add_argument("--steps", type=int, default=1500)
    # The classroom's training and evaluation seeds (fcn_lesson.classroom.TRAIN_SEED, EVAL_SEED).
    parser.add_argument("--train-seed", type=int, default=0)
    parser.add_argument("--val-seed", type=int, default=2026)
    parser.add_argument("--seed", type=int, default=0, help="initialisation and batch order")
    return parser


def main(argv=None) -> None:
    """Rerun the sum-vs-concat experiment and write its JSON (see `experiment_parser`)."""
    args = experiment_parser().parse_args(argv)
    model, _ = load_checkpoint(args.checkpoint)
    result = fusion_experiment(model, ShapesDataset(args.train_images, 128, seed=args.train_seed),
                               ShapesDataset(args.val_images, 128, seed=args.val_seed),
                               steps=args.steps, seed=args.seed)
    result["settings"]["checkpoint_sha256"] = file_sha256(args.checkpoint)
    result["command"] = (f"python -m fcn_lesson.lessons.history --checkpoint {args.checkpoint} "
                         f"--out {args.out} --train-images {args.train_images} "
                         f"--val-images {args.val_images} --steps {args.steps} "
                         f"--train-seed {args.train_seed} --val-seed {args.val_seed} --seed {args.seed}")
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
