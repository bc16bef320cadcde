"""Class heat maps of a convolutionalized classifier (notebooks 1 and 7): the FCN paper's
observation that a classifier whose FC layers became convolutions already says *where* things
are, before any segmentation training.

`convolutionalize(vgg)` maps an (H, W) image to class scores at every 224-pixel window, stride
32: cell (i, j) is the classifier's answer for the window with top-left corner (32 i, 32 j).
`class_heatmaps` turns those scores into probabilities; `heatmap_extent` draws each cell over
the 32 x 32 pixels at the centre of its window; `classifier_mosaic` builds a canvas whose
objects sit exactly at window centres, so the maps can be checked against known answers.
"""

import numpy as np
import torch

from fcn_lesson.datasets.shapes import ShapesClassification

# A stride-32 window of a convolutionalized VGG16 is 224 pixels wide (7 pool5 cells).
WINDOW, STRIDE = 224, 32


@torch.no_grad()
def class_heatmaps(convnet: torch.nn.Module, x: torch.Tensor, top: int = 3) -> tuple[torch.Tensor, list[int]]:
    """Softmax class probabilities at every window, (num_classes, h, w), and the `top` classes
    with the highest probability anywhere in the image, best first.

    `convnet` is `convolutionalize(vgg)`: (1, 3, H, W) -> (1, K, H//32 - 6, W//32 - 6).
    """
    if x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(f"expected one image (1, 3, H, W), got shape {tuple(x.shape)}")
    if min(x.shape[-2:]) < WINDOW:
        raise ValueError(f"the image must be at least {WINDOW} x {WINDOW} pixels (one VGG16 window), "
                         f"got {tuple(x.shape[-2:])}")
    weight = next(convnet.parameters(), None)
    probs = convnet.eval()(x if weight is None else x.to(weight.device)).softmax(1)[0].cpu()
    best = probs.flatten(1).amax(1).argsort(descending=True)[:top]
    return probs, best.tolist()


def heatmap_extent(h: int, w: int) -> tuple[float, float, float, float]:
    """matplotlib `extent` (left, right, bottom, top) that puts cell (i, j) of an h x w score map
    on the 32 x 32 pixels at the centre of its 224-pixel window, rows 32 i + 96 ... 32 i + 127.

    The first 96 pixels at each border are the centre of no window: a sliding classifier
    cannot answer there. (FCN's padded fc6 does answer there, from zero padding.)
    """
    margin = (WINDOW - STRIDE) // 2
    return (margin - 0.5, margin + STRIDE * w - 0.5, margin + STRIDE * h - 0.5, margin - 0.5)


def classifier_mosaic(labels: np.ndarray | list[list[int]], seed: int = 2026,
                      named_by: torch.nn.Module | None = None) -> tuple[torch.Tensor, np.ndarray]:
    """A canvas of 224 x 224 tiles, tile (r, c) an image of `ShapesClassification` (seed `seed`,
    never used in training) whose centre object has class index `labels[r][c]`.

    Each tile's object then sits at the centre of the window of score cell (7 r, 7 c). With a
    classifier `named_by`, only images it names correctly on their own are used: the canvas then
    shows how the classifier localises, apart from how often it misclassifies. Returns the image
    (3, 224 rows, 224 cols) and the labels as an int array.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if labels.ndim != 2 or labels.size == 0:
        raise ValueError(f"labels must be a non-empty 2-D grid of class indices, got shape {labels.shape}")
    data = ShapesClassification(400, WINDOW, seed=seed)
    if labels.min() < 0 or labels.max() >= len(data.classes):
        raise ValueError(f"class indices must be in 0..{len(data.classes) - 1} ({', '.join(data.classes)})")
    pools = {k: [] for k in np.unique(labels).tolist()}
    needed = {k: int((labels == k).sum()) for k in pools}
    weight = None if named_by is None else next(named_by.parameters())
    for i in range(len(data)):
        image, label = data[i]
        if label not in pools or len(pools[label]) == needed[label]:
            continue
        if weight is not None:
            with torch.no_grad():
                if int(named_by.eval()(image[None].to(weight.device)).argmax()) != label:
                    continue
        pools[label].append(image)
        if all(len(pools[k]) == needed[k] for k in pools):
            break
    rows = [torch.cat([pools[int(k)].pop() for k in row], dim=2) for row in labels]
    return torch.cat(rows, dim=1), labels


def tile_cells(labels: np.ndarray) -> list[tuple[int, int, int]]:
    """(class index, row, col) of the score cell whose window is exactly each mosaic tile."""
    return [(int(labels[r, c]), 7 * r, 7 * c) for r in range(labels.shape[0]) for c in range(labels.shape[1])]


def plot_class_heatmaps(image: torch.Tensor, probs: torch.Tensor, classes, title: str = ""):
    """The image, then one probability map per class drawn over it (`heatmap_extent`), all on
    one 0-1 colour scale. Returns the Figure."""
    import matplotlib.pyplot as plt

    from fcn_lesson.lessons.viz import to_numpy_image

    k, h, w = probs.shape
    if len(classes) != k:
        raise ValueError(f"{k} score maps but {len(classes)} class names")
    height, width = image.shape[-2:]
    fig, axes = plt.subplots(1, k + 1, figsize=(2.6 * (k + 1), 2.6 * height / width + 0.9),
                             layout="constrained")
    axes[0].imshow(to_numpy_image(image))
    axes[0].set_title("image", fontsize=10)
    for ax, name, p in zip(axes[1:], classes, probs, strict=True):
        ax.imshow(to_numpy_image(image), alpha=0.35)
        im = ax.imshow(p.numpy(), cmap="magma", vmin=0, vmax=1, extent=heatmap_extent(h, w),
                       interpolation="nearest")
        ax.set_xlim(-0.5, width - 0.5)
        ax.set_ylim(height - 0.5, -0.5)
        ax.set_title(f"P({name})", fontsize=10)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0].set_ylabel("rows (pixels)")
    fig.colorbar(im, ax=axes[1:], shrink=0.8, label="softmax probability")
    fig.suptitle(title or "Class probability at each 224-px window, drawn at the window's centre",
                 fontsize=11)
    return fig
