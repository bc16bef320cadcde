"""A textbook FCN, the baseline that `python -m benchmarks` times our models against.

Written the way common tutorial code writes it, on purpose:

* every upsampler is a full `ConvTranspose2d(C, C, 2s, stride=s)` whose bilinear weights are
  filled in by Python loops, pixel by pixel and channel by channel, so the final x8/x16/x32
  upsampling mixes all C x C channel pairs (C - 1 of every C products are with a zero);
* no alignment handling: the input is zero-padded up to a multiple of 32 so that the skip
  fusions have equal sizes and the code runs, and the output is returned at the PADDED size.
  A 375x500 image gets a 384x512 prediction; the caller has to guess which part is the image.

On an image whose sides are multiples of 32 it computes exactly what `FCN.forward` computes
(`copy_weights_from` takes a trained FCN's weights), so a timing difference is the code's,
not the network's. Unlike `fcn_lesson.lessons.textbook`, which reuses an FCN's own layers to show how
the unpadded textbook forward pass crashes, this is a complete stand-alone model.
Tutorial code runs it under `torch.no_grad()`; the benchmark does the same.
"""

import torch
import torch.nn.functional as F
from torch import nn

from fcn_lesson.core.backbone import VGG16_FC, scaled
from fcn_lesson.core.models import FCN, check_images

# VGG16: channels of each 3x3 convolution, "M" for a 2x2 max-pooling.
VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def get_upsampling_weight(in_channels: int, out_channels: int, kernel_size: int) -> torch.Tensor:
    """The (in, out, k, k) weight of a bilinear ConvTranspose2d, built the tutorial way."""
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    filt = torch.zeros(kernel_size, kernel_size)
    for i in range(kernel_size):
        for j in range(kernel_size):
            filt[i, j] = (1 - abs(i - center) / factor) * (1 - abs(j - center) / factor)
    weight = torch.zeros(in_channels, out_channels, kernel_size, kernel_size)
    for c in range(min(in_channels, out_channels)):
        weight[c, c] = filt
    return weight


def _upsampler(channels: int, factor: int) -> nn.ConvTranspose2d:
    layer = nn.ConvTranspose2d(channels, channels, 2 * factor, stride=factor, padding=factor // 2,
                               bias=False)
    with torch.no_grad():
        layer.weight.copy_(get_upsampling_weight(channels, channels, 2 * factor))
    return layer


class TextbookFCN(nn.Module):
    """FCN-32s (skips=0), FCN-16s (skips=1) or FCN-8s (skips=2), tutorial style."""

    def __init__(self, num_classes: int = 21, skips: int = 2, width: float = 1.0,
                 batch_norm: bool = False):
        super().__init__()
        if skips not in (0, 1, 2):
            raise ValueError(f"skips must be 0 (FCN-32s), 1 (FCN-16s) or 2 (FCN-8s), got {skips!r}")
        self.skips = skips
        layers, in_channels = [], 3
        for v in VGG16_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, stride=2))
                continue
            out_channels = scaled(v, width)
            layers.append(nn.Conv2d(in_channels, out_channels, 3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out_channels))
            layers.append(nn.ReLU(inplace=True))
            in_channels = out_channels
        self.features = nn.Sequential(*layers)
        fc = scaled(VGG16_FC, width)
        self.fc6 = nn.Conv2d(in_channels, fc, 7, padding=3)
        self.fc7 = nn.Conv2d(fc, fc, 1)
        self.drop = nn.Dropout2d()
        self.score_fr = nn.Conv2d(fc, num_classes, 1)
        self.score_pool4 = nn.Conv2d(scaled(512, width), num_classes, 1) if skips >= 1 else None
        self.score_pool3 = nn.Conv2d(scaled(256, width), num_classes, 1) if skips >= 2 else None
        self.upscore2 = _upsampler(num_classes, 2) if skips >= 1 else None
        self.upscore_pool4 = _upsampler(num_classes, 2) if skips >= 2 else None
        self.upscore = _upsampler(num_classes, 32 >> skips)

    @classmethod
    def like(cls, model: FCN) -> "TextbookFCN":
        """A naive net of `model`'s variant and size, with its weights."""
        naive = cls(model.num_classes, model.skips, model.width, model.batch_norm)
        return naive.copy_weights_from(model)

    @torch.no_grad()
    def copy_weights_from(self, model: FCN) -> "TextbookFCN":
        """Take `model`'s weights (the same variant, width and BatchNorm setting)."""
        wanted = {"skips": (model.skips, self.skips),
                  "classes": (model.num_classes, self.score_fr.out_channels),
                  "fc7 channels (width)": (model.backbone.channels["fc7"], self.fc7.out_channels)}
        for what, (source, target) in wanted.items():
            if source != target:
                raise ValueError(f"cannot copy a {model.variant} into this naive net: {what} "
                                 f"{source} != {target}; build it with TextbookFCN.like(model)")
        layer_types = (nn.Conv2d, nn.BatchNorm2d)
        ours = [m for m in model.backbone.modules() if isinstance(m, layer_types)]
        mine = [m for m in (*self.features, self.fc6, self.fc7) if isinstance(m, layer_types)]
        if len(ours) != len(mine):
            raise ValueError(f"{model.variant} has {len(ours)} backbone layers, this naive net "
                             f"{len(mine)}: one has BatchNorm and the other not")
        for src, dst in zip(ours, mine, strict=True):
            dst.load_state_dict(src.state_dict())
        for name in ("score_fr", "score_pool4", "score_pool3", "upscore2", "upscore_pool4"):
            if getattr(self, name) is not None:
                getattr(self, name).load_state_dict(getattr(model, name).state_dict())
        return self  # the final upsampling is fixed bilinear in both

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> logits at the size of x padded to a multiple of 32 (not (H, W))."""
        check_images(x)
        height, width = x.shape[-2:]
        h = F.pad(x, (0, -width % 32, 0, -height % 32))
        pools = []
        for layer in self.features:
            h = layer(h)
            if isinstance(layer, nn.MaxPool2d):
                pools.append(h)
        h = self.drop(F.relu(self.fc6(h)))
        h = self.drop(F.relu(self.fc7(h)))
        h = self.score_fr(h)
        if self.skips >= 1:
            h = self.upscore2(h) + self.score_pool4(pools[3])
        if self.skips >= 2:
            h = self.upscore_pool4(h) + self.score_pool3(pools[2])
        return self.upscore(h)
