"""VGG16, split where FCN taps it: pool3 (stride 8), pool4 (stride 16), pool5 (stride 32).

fc6 and fc7 are convolutions (7x7 and 1x1). fc6 is padded by 3 so that a stride-32 map of
any size keeps its size through the head; that, with floor pooling and inputs padded to a
multiple of 32, keeps every stage exactly aligned with the image (see `models.py`).

`width` scales every channel count, so the same architecture trains on a laptop CPU.
"""

import os
from collections import OrderedDict
from urllib.error import URLError

import torch
from torch import nn

# (channels, convolutions) of VGG16's five stages; fc6/fc7 have 4096 channels.
VGG16_STAGES = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))
VGG16_FC = 4096

# Why these numbers and not Caffe's: the original FCN starts from the Caffe VGG16, which expects
# BGR images in [0, 255] with the per-channel means (104.007, 116.669, 122.679) subtracted and no
# division by a standard deviation. We start from torchvision's ``VGG16_Weights.IMAGENET1K_V1``,
# which was trained on RGB images scaled to [0, 1] and normalised with the mean/std below.
# Feeding one convention to weights trained with the other silently swaps the red and blue
# channels and rescales every activation of conv1_1 by ~1/0.0045 (or its inverse): the network
# still runs, but its ImageNet features are wrong. Always use the convention of the weights.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def scaled(channels: int, width: float) -> int:
    return max(1, round(channels * width))


def _stage(index: int, in_channels: int, out_channels: int, convs: int,
           batch_norm: bool) -> nn.Sequential:
    layers = OrderedDict()
    for j in range(1, convs + 1):
        layers[f"conv{index}_{j}"] = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        if batch_norm:
            layers[f"bn{index}_{j}"] = nn.BatchNorm2d(out_channels)
        layers[f"relu{index}_{j}"] = nn.ReLU(inplace=True)
        in_channels = out_channels
    layers[f"pool{index}"] = nn.MaxPool2d(2, stride=2)
    return nn.Sequential(layers)


class VGG16Backbone(nn.Module):
    """conv1_1 ... pool5, then fc6 (7x7, padding 3) and fc7 (1x1) as convolutions.

    `to_pool3`, `to_pool4`, `to_pool5` and `head` run one after the other; FCN reads the
    outputs of the first three stages and of the head.

    batch_norm=True puts a BatchNorm after every conv (as torchvision's vgg16_bn). The paper
    has none: it starts from ImageNet weights. The classroom classifier trains from random
    weights in minutes on a CPU, which a plain 15-layer VGG does not do.
    """

    def __init__(self, width: float = 1.0, dropout: float = 0.5, batch_norm: bool = False):
        super().__init__()
        if not width > 0:
            raise ValueError(f"width must be positive, got {width!r}")
        self.width, self.batch_norm = width, batch_norm
        channels = [scaled(c, width) for c, _ in VGG16_STAGES]
        fc = scaled(VGG16_FC, width)
        stages, c_in = [], 3
        for i, ((_, convs), c_out) in enumerate(zip(VGG16_STAGES, channels, strict=True), 1):
            stages.append(_stage(i, c_in, c_out, convs, batch_norm))
            c_in = c_out
        self.to_pool3 = nn.Sequential(*stages[:3])  # stride 8
        self.to_pool4 = stages[3]  # stride 16
        self.to_pool5 = stages[4]  # stride 32
        self.head = nn.Sequential(
            OrderedDict(
                fc6=nn.Conv2d(channels[4], fc, 7, padding=3),
                relu6=nn.ReLU(inplace=True),
                drop6=nn.Dropout2d(dropout),
                fc7=nn.Conv2d(fc, fc, 1),
                relu7=nn.ReLU(inplace=True),
                drop7=nn.Dropout2d(dropout),
            )
        )
        self.channels = {"pool3": channels[2], "pool4": channels[3], "fc7": fc}
        # As torchvision's VGG: without it 15 plain ReLU layers trained from scratch (the
        # classroom models) start with a vanishing signal.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        pool3 = self.to_pool3(x)
        pool4 = self.to_pool4(pool3)
        fc7 = self.head(self.to_pool5(pool4))
        return {"pool3": pool3, "pool4": pool4, "fc7": fc7}

    def conv_layers(self) -> list[nn.Conv2d]:
        """conv1_1 ... conv5_3, in order (the 13 convolutions ImageNet weights fill)."""
        return [m for s in (self.to_pool3, self.to_pool4, self.to_pool5) for m in s.modules()
                if isinstance(m, nn.Conv2d)]

    @torch.no_grad()
    def load_vgg16(self, vgg: nn.Module) -> None:
        """Copy a torchvision VGG16's weights: 13 convs as they are, fc6/fc7 reshaped to convs."""
        if self.width != 1.0 or self.batch_norm:
            raise ValueError("ImageNet VGG16 weights need width=1.0 and batch_norm=False, this "
                             f"backbone has width={self.width}, batch_norm={self.batch_norm}")
        src_convs = [m for m in vgg.features if isinstance(m, nn.Conv2d)]
        fc6, fc7 = vgg.classifier[0], vgg.classifier[3]
        for dst, src in zip(self.conv_layers(), src_convs, strict=True):
            dst.weight.copy_(src.weight)
            dst.bias.copy_(src.bias)
        self.head.fc6.weight.copy_(fc6.weight.reshape(self.head.fc6.weight.shape))
        self.head.fc6.bias.copy_(fc6.bias)
        self.head.fc7.weight.copy_(fc7.weight.reshape(self.head.fc7.weight.shape))
        self.head.fc7.bias.copy_(fc7.bias)


def imagenet_vgg16(progress: bool = True) -> nn.Module:
    """torchvision's VGG16 with `VGG16_Weights.IMAGENET1K_V1`, from the cache under TORCH_HOME.

    Offline and not cached, this fails with a message saying what to download and where,
    instead of a stack of socket errors.
    """
    from torchvision.models import VGG16_Weights, vgg16

    weights = VGG16_Weights.IMAGENET1K_V1
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))
    try:
        return vgg16(weights=weights, progress=progress)
    except (URLError, OSError, RuntimeError) as err:
        if os.path.exists(cached):
            raise RuntimeError(f"the cached ImageNet VGG16 weights at {cached} could not be "
                               f"loaded ({err}); delete the file and download it again") from err
        raise RuntimeError(
            "ImageNet VGG16 weights are not cached and could not be downloaded "
            f"({type(err).__name__}: {err}).\nOn a machine with internet, download\n  {weights.url}\n"
            f"and put it at\n  {cached}\n(that folder is $TORCH_HOME/hub/checkpoints; TORCH_HOME is "
            f"currently {os.environ.get('TORCH_HOME', 'unset, so ~/.cache/torch')})."
        ) from None
