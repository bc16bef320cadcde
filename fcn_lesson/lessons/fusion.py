"""Skip fusion made visible: the figures of notebooks 4 and 5 and the numbers behind them.

FCN-16s adds a stride-16 score map computed from pool4 to the stride-32 scores upsampled
2x; FCN-8s adds a stride-8 map from pool3 to that sum upsampled 2x again. `plot_fusion`
draws every map of that chain for one class on one colour scale, each placed over the
image pixels it covers, so a student can see which map contributes what and where.
`skip_ablation` scores a trained net with its skips scaled or switched off, re-fusing
cached score maps with `model.fuse` instead of running the backbone once per setting.
"""

from __future__ import annotations

import torch

from fcn_lesson.core.models import FCN
from fcn_lesson.datasets.shapes import CLASSES, PALETTE
from fcn_lesson.engine.device import eval_mode
from fcn_lesson.engine.metrics import confusion_matrix, score_predictions, segmentation_scores
from fcn_lesson.lessons.viz import add_palette_legend, colorize, to_numpy_image

__all__ = ["SKIP_SETTINGS", "fusion_panels", "image_mean_iou", "per_image_mean_iou", "plot_fusion",
           "skip_ablation"]

# (pool4_gain, pool3_gain): 1 is the trained net, 0 switches that skip off.
SKIP_SETTINGS = {
    "both skips": (1.0, 1.0),
    "without pool3": (1.0, 0.0),
    "without pool4": (0.0, 1.0),
    "without both": (0.0, 0.0),
}

# One row per skip: the coarser scores, them upsampled 2x, the skip's scores, the sum.
_FUSION_ROWS = (
    (("score_fr", "score_fr"), ("upscore2", "upscore2 = score_fr ↑2"),
     ("score_pool4", "+ score_pool4"), ("fuse_pool4", "= fuse_pool4")),
    (("fuse_pool4", "fuse_pool4"), ("upscore_pool4", "upscore_pool4 = fuse_pool4 ↑2"),
     ("score_pool3", "+ score_pool3"), ("fuse_pool3", "= fuse_pool3")),
)
_SCORE_CMAP = "RdBu_r"  # red: evidence for the class, blue: against, white: zero


def _skips(maps: dict) -> int:
    if not isinstance(maps, dict) or "score_fr" not in maps or "out" not in maps:
        raise ValueError("expected the dict of score maps from model.forward_maps(x) or model.fuse(...)")
    if "fuse_pool3" in maps:
        return 2
    if "fuse_pool4" in maps:
        return 1
    raise ValueError("these maps come from an FCN-32s, which fuses nothing; pass the maps of an "
                     "FCN-16s or FCN-8s (model.forward_maps(x))")


def fusion_panels(maps: dict[str, torch.Tensor], class_index: int,
                  index: int = 0) -> list[list[tuple[str, str, torch.Tensor, int]]]:
    """The score maps of one fusion chain for one class, as rows of
    (name, title, (h, w) map, stride: how many image pixels one cell covers).

    One row per skip of the net that made `maps` (1 for FCN-16s, 2 for FCN-8s), in the order
    of `_FUSION_ROWS`, then a last row with the final upsampled score `out`. `index` picks
    the image in the batch.
    """
    skips = _skips(maps)
    batch, num_classes = maps["out"].shape[:2]
    if not 0 <= index < batch:
        raise ValueError(f"index {index} is outside the batch of {batch} images")
    if isinstance(class_index, bool) or not isinstance(class_index, int) or not (
            0 <= class_index < num_classes):
        raise ValueError(f"class_index must be an int in [0, {num_classes}), got {class_index!r}")
    height, width = maps["out"].shape[-2:]
    padded = maps["score_fr"].shape[-1] * 32

    def entry(name: str, title: str) -> tuple[str, str, torch.Tensor, int]:
        score = maps[name][index, class_index].detach().float().cpu()
        stride = 1 if name == "out" else padded // score.shape[-1]
        return name, f"{title}\n{score.shape[0]}×{score.shape[1]}, stride {stride}", score, stride

    rows = [[entry(name, title) for name, title in row] for row in _FUSION_ROWS[:skips]]
    rows.append([entry("out", f"out = {'fuse_pool4 ↑16' if skips == 1 else 'fuse_pool3 ↑8'}")])
    return rows


def plot_fusion(maps: dict[str, torch.Tensor], class_index: int, *, image: torch.Tensor | None = None,
                target: torch.Tensor | None = None, index: int = 0, classes=CLASSES, palette=PALETTE,
                size: float = 2.5, clip_percentile: float | None = 99.0):
    """Draw an FCN-16s/8s fusion for one class, map by map, and the prediction it leads to.

    Rows: the pool4 skip (score_fr, upscore2, score_pool4, fuse_pool4), for FCN-8s the pool3
    skip (fuse_pool4, upscore_pool4, score_pool3, fuse_pool3), then the image and ground truth
    (when given), the final score `out` and the prediction argmax(out). Every score panel
    shares one symmetric colour scale and is drawn over the image pixels it covers (axes in
    pixels), so a coarse cell and the fine cells below it line up. The scale ends at the
    `clip_percentile` percentile of |score| over all panels (None: at the largest |score|), so a
    few extreme cells do not wash out the rest; the colour bar says so. Returns the Figure.
    """
    import matplotlib.pyplot as plt

    rows = fusion_panels(maps, class_index, index)
    height, width = maps["out"].shape[-2:]
    magnitudes = torch.cat([m.abs().flatten() for row in rows for _, _, m, _ in row])
    largest = max(float(magnitudes.max()), 1e-6)
    if clip_percentile is None:
        limit = largest
    else:
        if not 0 < clip_percentile <= 100:
            raise ValueError(f"clip_percentile must be in (0, 100], got {clip_percentile!r}")
        limit = max(float(torch.quantile(magnitudes.double(), clip_percentile / 100)), 1e-6)
    prediction = maps["out"][index].detach().argmax(0).cpu()

    # Pictures (uint8 RGB) go in the last row with the final score; they are not scores.
    last = []
    if image is not None:
        last.append(("image", "image", to_numpy_image(image), 1))
    if target is not None:
        last.append(("truth", "ground truth", colorize(target, palette), 1))
    last += [rows[-1][0], ("prediction", "prediction = argmax(out)", colorize(prediction, palette), 1)]
    rows = rows[:-1] + [last]

    fig, axes = plt.subplots(len(rows), 4, figsize=(4 * size + 1.2, len(rows) * size + 1.0),
                             squeeze=False, layout="constrained")
    score_axes = []
    for row_axes, row in zip(axes, rows, strict=True):
        for ax in row_axes[len(row):]:
            ax.set_visible(False)
        for ax, (_, title, data, stride) in zip(row_axes, row, strict=False):
            # Each cell is stretched over the stride x stride pixels it covers.
            extent = (0, data.shape[1] * stride, data.shape[0] * stride, 0)
            if isinstance(data, torch.Tensor):
                im = ax.imshow(data.numpy(), cmap=_SCORE_CMAP, vmin=-limit, vmax=limit,
                               extent=extent, interpolation="nearest")
                score_axes.append(ax)
            else:
                ax.imshow(data, extent=extent, interpolation="nearest")
            ax.set_xlim(0, width)
            ax.set_ylim(height, 0)
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("x (px)", fontsize=8)
            ax.set_ylabel("y (px)", fontsize=8)
            ax.tick_params(labelsize=7)
    name = classes[class_index] if class_index < len(classes) else f"class {class_index}"
    label = f"score for '{name}'"
    clipped = limit < largest
    if clipped:
        label += (f"\nclipped at ±{limit:.3g}, the {clip_percentile:g}th percentile of |score| "
                  f"(largest: {largest:.3g})")
    fig.colorbar(im, ax=score_axes, shrink=0.8, label=label, extend="both" if clipped else "neither")
    variant = "FCN-8s" if len(rows) == 3 else "FCN-16s"
    fig.suptitle(f"{variant}: scores for class '{name}' at every fusion step "
                 "(one colour scale; red = for, blue = against)", fontsize=11)
    add_palette_legend(fig, classes, palette, loc="outside lower center")
    return fig


def image_mean_iou(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> float:
    """Mean IoU of one prediction (H, W) against its ground truth (H, W), over the classes
    present in either (the paper's metric, restricted to one image)."""
    if pred.dim() != 2:
        raise ValueError(f"expected one prediction (H, W), got shape {tuple(pred.shape)}; "
                         "for a batch, call this once per image")
    return segmentation_scores(confusion_matrix(pred, target, num_classes))["mean_iou"]


def per_image_mean_iou(preds: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """`image_mean_iou` of each prediction in a batch (N, H, W): a float64 tensor (N,), e.g. to
    find the images on which one net beats another most."""
    if preds.dim() != 3 or preds.shape != targets.shape:
        raise ValueError(f"expected predictions and targets (N, H, W) of equal shape, got "
                         f"{tuple(preds.shape)} and {tuple(targets.shape)}")
    return torch.tensor([image_mean_iou(p, t, num_classes) for p, t in zip(preds, targets, strict=True)],
                        dtype=torch.float64)


@torch.no_grad()
def skip_ablation(model: FCN, images: torch.Tensor, masks: torch.Tensor,
                  settings: dict[str, tuple[float, float]] | None = None, batch_size: int = 32,
                  boundary_width: int = 3) -> dict[str, dict]:
    """Score `model` on (images, masks) with its skips scaled by each setting's
    (pool4_gain, pool3_gain) (default: `SKIP_SETTINGS`).

    The backbone runs once per batch; every setting re-fuses the same cached score maps.
    Returns {setting: segmentation_scores(...) + "boundary_acc" + "confusion"}, as `evaluate`
    does: accumulated over all pixels, not averaged per image.
    """
    if not isinstance(model, FCN) or model.skips < 1:
        raise ValueError("skip_ablation needs an FCN-16s or FCN-8s: an FCN-32s has no skip to switch off")
    if images.dim() != 4 or masks.dim() != 3 or len(images) != len(masks):
        raise ValueError(f"expected images (N, 3, H, W) and masks (N, H, W), got "
                         f"{tuple(images.shape)} and {tuple(masks.shape)}")
    settings = dict(SKIP_SETTINGS if settings is None else settings)
    if model.skips < 2 and any(g3 != 1.0 for _, g3 in settings.values()):
        raise ValueError(f"a {model.variant} has no pool3 skip; use pool3_gain 1.0 in every setting")
    device = next(model.parameters()).device
    height, width = images.shape[-2:]
    predictions = {name: [] for name in settings}
    with eval_mode(model):
        for start in range(0, len(images), batch_size):
            maps = model.forward_maps(images[start:start + batch_size].to(device))
            for name, (pool4_gain, pool3_gain) in settings.items():
                out = model.fuse(maps, None, height, width, pool4_gain, pool3_gain)["out"]
                predictions[name].append(out.argmax(1).cpu())
    return {name: score_predictions(torch.cat(preds), masks, model.num_classes, boundary_width)
            for name, preds in predictions.items()}

