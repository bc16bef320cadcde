"""Drawing helpers: coloured masks, overlays, a palette legend and a sample grid.

All functions take torch tensors or numpy arrays and return numpy ``uint8`` images
``(H, W, 3)`` or matplotlib objects; none of them calls ``plt.show()``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from fcn_lesson.datasets.shapes import CLASSES, IGNORE_INDEX, PALETTE

__all__ = ["add_palette_legend", "colorize", "overlay", "show_samples", "to_numpy_image"]

_IGNORE_COLOUR = (255, 255, 255)


def _palette_array(palette) -> np.ndarray:
    pal = palette.cpu().numpy() if isinstance(palette, torch.Tensor) else np.asarray(palette)
    if pal.ndim != 2 or pal.shape[1] != 3:
        raise ValueError(f"palette must have shape (K, 3), got {pal.shape}")
    if np.issubdtype(pal.dtype, np.floating) and pal.max() <= 1.0:
        pal = pal * 255.0
    return np.clip(np.rint(pal), 0, 255).astype(np.uint8)


def _mask_array(mask) -> np.ndarray:
    m = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must have shape (H, W), got {m.shape}")
    if not np.issubdtype(m.dtype, np.integer):
        raise ValueError(f"mask must hold integer labels, got dtype {m.dtype}")
    return m.astype(np.int64, copy=False)


def to_numpy_image(image) -> np.ndarray:
    """An image as ``uint8 (H, W, 3)``: from a tensor ``(3, H, W)`` (float in [0, 1] or uint8)
    or a numpy array ``(H, W, 3)``. Floats are clipped to [0, 1] and rounded."""
    if isinstance(image, torch.Tensor):
        img = image.detach().cpu()
        if img.ndim != 3 or img.shape[0] != 3:
            raise ValueError(f"image tensor must have shape (3, H, W), got {tuple(img.shape)}")
        img = img.permute(1, 2, 0).numpy()
    else:
        img = np.asarray(image)
        if img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"image array must have shape (H, W, 3), got {img.shape}")
    if img.dtype == np.uint8:
        return np.ascontiguousarray(img)
    return np.rint(np.clip(img.astype(np.float32), 0.0, 1.0) * 255).astype(np.uint8)


def colorize(mask, palette=PALETTE) -> np.ndarray:
    """Label mask ``(H, W)`` -> ``uint8 (H, W, 3)``: class k gets ``palette[k]``; the ignore
    label 255 is drawn white. Any other label outside the palette raises ``ValueError``."""
    m = _mask_array(mask)
    pal = _palette_array(palette)
    ignore = m == IGNORE_INDEX
    bad = ~ignore & ((m < 0) | (m >= len(pal)))
    if bad.any():
        raise ValueError(
            f"mask holds labels {np.unique(m[bad]).tolist()} outside the palette of {len(pal)} "
            f"colours (and not the ignore label {IGNORE_INDEX})"
        )
    out = pal[np.where(ignore, 0, m)]
    out[ignore] = _IGNORE_COLOUR
    return out


def overlay(image, mask, alpha: float = 0.5, palette=PALETTE) -> np.ndarray:
    """The mask's object classes blended over the image, ``uint8 (H, W, 3)``.

    Uses ``torchvision.utils.draw_segmentation_masks``: pixels of class k >= 1 become
    ``(1 - alpha) * image + alpha * palette[k]``; background (class 0) pixels keep the
    image as it is; ignore pixels (255) are blended with white.
    """
    from torchvision.utils import draw_segmentation_masks

    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    img = torch.from_numpy(to_numpy_image(image)).permute(2, 0, 1).contiguous()
    m = torch.from_numpy(_mask_array(mask))
    if tuple(m.shape) != tuple(img.shape[1:]):
        raise ValueError(f"mask shape {tuple(m.shape)} does not match image {tuple(img.shape[1:])}")
    pal = _palette_array(palette)
    labels = [int(k) for k in torch.unique(m).tolist() if k != 0]
    masks, colours = [], []
    for k in labels:
        if k == IGNORE_INDEX:
            colours.append(_IGNORE_COLOUR)
        elif 0 < k < len(pal):
            colours.append(tuple(int(c) for c in pal[k]))
        else:
            raise ValueError(f"mask label {k} outside the palette of {len(pal)} colours")
        masks.append(m == k)
    if not masks:
        return img.permute(1, 2, 0).numpy().copy()
    drawn = draw_segmentation_masks(img, torch.stack(masks), alpha=alpha, colors=colours)
    return drawn.permute(1, 2, 0).numpy().copy()


def add_palette_legend(ax_or_fig, classes=CLASSES, palette=PALETTE, **kwargs):
    """Add a legend of coloured patches, one per class, to an Axes or a Figure.

    On a Figure the legend goes in one row below the axes; on an Axes, to its right.
    Extra keyword arguments go to ``legend``. Returns the ``Legend``.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    pal = _palette_array(palette)
    if len(classes) > len(pal):
        raise ValueError(f"{len(classes)} classes but only {len(pal)} palette colours")
    handles = [
        Patch(facecolor=pal[k] / 255.0, edgecolor="black", linewidth=0.5, label=str(name))
        for k, name in enumerate(classes)
    ]
    if isinstance(ax_or_fig, Figure):
        opts = dict(loc="lower center", ncol=min(len(handles), 8), frameon=False)
        opts.update(kwargs)
        return ax_or_fig.legend(handles=handles, **opts)
    opts = dict(loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    opts.update(kwargs)
    return ax_or_fig.legend(handles=handles, **opts)


def show_samples(
    dataset,
    indices: Sequence[int],
    predictions: Mapping[str, Sequence] | None = None,
    *,
    classes=None,
    palette=None,
    size: float = 2.2,
):
    """A grid with one row per index: the image, its ground truth, then one column per
    entry of ``predictions`` (a dict ``name -> masks``, the masks listed in the order of
    ``indices``). Titles on every panel, axes off, one palette legend at the bottom.

    ``classes`` and ``palette`` default to the dataset's ``.classes`` / ``.palette`` when it
    has them, else to the shapes ones. Returns the matplotlib ``Figure``.
    """
    import matplotlib.pyplot as plt

    indices = [int(i) for i in indices]
    if not indices:
        raise ValueError("indices is empty: nothing to show")
    predictions = dict(predictions or {})
    for name, preds in predictions.items():
        if len(preds) != len(indices):
            raise ValueError(
                f"predictions[{name!r}] has {len(preds)} masks for {len(indices)} indices"
            )
    classes = classes if classes is not None else getattr(dataset, "classes", CLASSES)
    palette = palette if palette is not None else getattr(dataset, "palette", PALETTE)

    nrows, ncols = len(indices), 2 + len(predictions)
    # Constrained layout keeps every row's titles clear of the row above (tight_layout with
    # axes turned off let them overlap the images).
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(size * ncols, size * nrows + 0.6), squeeze=False,
        layout="constrained",
    )
    for r, idx in enumerate(indices):
        image, target = dataset[idx]
        panels = [
            (to_numpy_image(image), f"image #{idx}"),
            (colorize(target, palette), "ground truth"),
        ]
        for name, preds in predictions.items():
            pred = _mask_array(preds[r])
            if pred.shape != tuple(target.shape):
                raise ValueError(
                    f"predictions[{name!r}][{r}] has shape {pred.shape}, "
                    f"ground truth {tuple(target.shape)}"
                )
            panels.append((colorize(pred, palette), str(name)))
        for ax, (picture, title) in zip(axes[r], panels, strict=True):
            ax.imshow(picture, interpolation="nearest")
            ax.set_title(title, fontsize=9)
            ax.axis("off")
    add_palette_legend(fig, classes, palette, loc="outside lower center")
    return fig
