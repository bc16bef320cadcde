"""Real photographs through the classroom models, offline: scikit-image's coins.

`skimage.data.coins()` (public domain, shipped inside the scikit-image wheel) is a 303 x 384
greyscale photograph of 24 coins, each 40-60 px across. The classroom FCNs have only ever seen
synthetic shapes, yet a coin is a disk: this module feeds the photograph to them as they
expect it (greyscale repeated over 3 channels, float in [0, 1]), builds a *reference* mask
with scikit-image's classical region segmentation (its coins tutorial: Sobel elevation map,
watershed from intensity markers, holes filled) and counts how many coins come out as disks.
The reference is a classical algorithm's answer, not ground truth.
"""

import numpy as np
import torch

# The coins tutorial's markers: darker than this is surely background, brighter surely coin.
BACKGROUND_BELOW, COIN_ABOVE = 30, 150
MIN_COIN_PIXELS = 100  # specks of the watershed smaller than this are not coins
NUM_COINS = 24


def coins_image() -> np.ndarray:
    """`skimage.data.coins()`: (303, 384) uint8."""
    from skimage import data

    return data.coins()


def as_model_input(grey: np.ndarray) -> torch.Tensor:
    """A greyscale uint8 (H, W) photo as a (1, 3, H, W) float batch in [0, 1]."""
    x = torch.from_numpy(np.asarray(grey, dtype=np.float32) / 255.0)
    return x.expand(3, *x.shape)[None].contiguous()


def coins_reference_mask(image: np.ndarray | None = None) -> np.ndarray:
    """Boolean (H, W) coin mask by scikit-image's classical recipe (its "coins" tutorial):
    Sobel elevation map, watershed from markers at intensity < 30 (background) and > 150
    (coin), holes filled, specks under MIN_COIN_PIXELS removed."""
    from scipy import ndimage as ndi
    from skimage import filters, segmentation

    image = coins_image() if image is None else image
    elevation = filters.sobel(image)
    markers = np.zeros(image.shape, dtype=np.int32)
    markers[image < BACKGROUND_BELOW] = 1
    markers[image > COIN_ABOVE] = 2
    regions = segmentation.watershed(elevation, markers)
    mask = ndi.binary_fill_holes(regions == 2)
    labels, n = ndi.label(mask)
    sizes = ndi.sum(mask, labels, index=np.arange(1, n + 1))
    return np.isin(labels, 1 + np.flatnonzero(sizes >= MIN_COIN_PIXELS))


def label_coins(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """(labels (H, W) int, number of coins): the connected components of a reference mask."""
    from scipy import ndimage as ndi

    labels, n = ndi.label(mask)
    return labels, int(n)


def count_coins_as(pred: np.ndarray | torch.Tensor, reference: np.ndarray, class_index: int) -> dict:
    """How the predicted class map `pred` (H, W) calls each coin of `reference`.

    Returns `coins` (how many in the reference), `as_class` (how many have `class_index` as the
    majority class of their pixels), `majority` (each coin's majority class), and `iou`: the
    foreground IoU (anything not background, class 0) against the reference mask.
    """
    pred = pred.cpu().numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred)
    labels, n = label_coins(reference)
    majority = []
    for k in range(1, n + 1):
        classes = np.bincount(pred[labels == k].ravel())
        majority.append(int(classes.argmax()))
    fg = pred != 0
    inter = np.logical_and(fg, reference).sum()
    union = np.logical_or(fg, reference).sum()
    return {"coins": n, "as_class": sum(m == class_index for m in majority),
            "majority": majority, "iou": float(inter / union) if union else float("nan")}


@torch.no_grad()
def segment_coins(model, image: np.ndarray | None = None) -> dict:
    """Run `model` (a classroom FCN) on the coins photograph and score it against the
    reference: the predicted class map (`pred`), and `count_coins_as(pred, reference, disk)`."""
    from fcn_lesson.datasets.shapes import CLASSES
    from fcn_lesson.engine.loop import predict

    image = coins_image() if image is None else image
    pred = predict(model, as_model_input(image))[0]
    result = count_coins_as(pred, coins_reference_mask(image), CLASSES.index("disk"))
    result["pred"] = pred
    return result
