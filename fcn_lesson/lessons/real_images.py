"""Full mode at a glance (notebook 7): is ImageNet VGG16 cached, is PASCAL VOC there, and a
photograph as ImageNet VGG16 expects it (class heat maps: `fcn_lesson.lessons.heatmaps`).

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
