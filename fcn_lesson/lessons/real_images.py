"""Full mode at a glance: is ImageNet VGG16 cached, is PASCAL VOC there, and ImageNet class
heatmaps from the convolutionalized VGG16 (notebook 7).

Nothing here downloads: it looks where torchvision and the VOC loader would look, and says
what is missing.
"""

import os
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from fcn_lesson.core.backbone import IMAGENET_MEAN, IMAGENET_STD
from fcn_lesson.datasets.voc_files import VOCNotFoundError, check_voc_root

# Mean IoU (%) of the reference Caffe models (fcn.berkeleyvision.org, trained with SBD's extra
# annotations, "heavy" momentum 0.99 and batch 1) on seg11valid: the 736 VOC2011 val images
# that are not in SBD's training set. The CVPR paper's Table 2 (fcn_lesson.lessons.compare.PAPER_TABLE2)
# has 59.4 / 62.4 / 62.7 on a subset of VOC2011 val, from its original training.
REFERENCE_SEG11VALID_MEAN_IOU = {"fcn32s": 63.6, "fcn16s": 65.0, "fcn8s": 65.5}

# A stride-32 window of the convolutionalized VGG16 is 224 pixels wide (7 pool5 cells).
WINDOW, STRIDE = 224, 32


def imagenet_weights_path() -> Path:
    """Where torchvision keeps VGG16_Weights.IMAGENET1K_V1 ($TORCH_HOME/hub/checkpoints/...)."""
    from torchvision.models import VGG16_Weights

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(VGG16_Weights.IMAGENET1K_V1.url)


def imagenet_weights_cached() -> bool:
    return imagenet_weights_path().is_file()


def voc_missing(root: str | os.PathLike, year: str = "2012", image_set: str = "val") -> str | None:
    """None when the VOC split is there; otherwise check_voc_root's explanation of what is missing."""
    try:
        check_voc_root(root, year, image_set)
    except VOCNotFoundError as err:
        return str(err)
    return None


def sample_photo() -> PIL.Image.Image:
    """A real photograph that ships with matplotlib (Grace Hopper, 600 x 512), for offline demos."""
    import matplotlib.cbook

    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
        return PIL.Image.open(f).convert("RGB")


def to_imagenet_tensor(image: PIL.Image.Image) -> torch.Tensor:
    """RGB image -> (1, 3, H, W) float, normalised as torchvision's VGG16 expects."""
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return ((x - mean) / std)[None]


@torch.no_grad()
def class_heatmaps(convnet: torch.nn.Module, x: torch.Tensor, top: int = 3) -> tuple[torch.Tensor, list[int]]:
    """Softmax class probabilities at every window, (num_classes, h, w), and the `top` classes
    with the highest probability anywhere in the image, best first.

    `convnet` is `convolutionalize(vgg)`: (1, 3, H, W) -> (1, 1000, H//32 - 6, W//32 - 6).
    """
    if x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(f"expected one image (1, 3, H, W), got shape {tuple(x.shape)}")
    if min(x.shape[-2:]) < WINDOW:
        raise ValueError(f"the image must be at least {WINDOW} x {WINDOW} pixels (one VGG16 window), "
                         f"got {tuple(x.shape[-2:])}")
    probs = convnet.eval()(x).softmax(1)[0]
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
