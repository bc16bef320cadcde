"""An FC layer is a convolution: turn VGG16's classifier into convolutions.

A Linear layer reading a flattened (C, k, k) feature block is a k x k convolution with the
same weights reshaped. As a convolution it slides: on a larger input it returns a map of
scores, one per k x k window, instead of refusing the input size.
"""

import copy
from collections import OrderedDict

import torch
from torch import nn


def fc_to_conv(linear: nn.Linear, in_channels: int, kernel_size: int,
               share_weights: bool = False) -> nn.Conv2d:
    """A `Conv2d(in_channels, out, kernel_size)` computing the same function as `linear`
    on a (N, in_channels, kernel_size, kernel_size) input (flattened channel-major, as
    `torch.flatten` does).

    With `share_weights=True` the convolution's weight is the Linear's weight viewed in the new
    shape (and the bias the same tensor): no copy, the same memory, so training one changes the
    other. For VGG16's fc6 that saves 411 MB.
    """
    if not isinstance(linear, nn.Linear):
        raise TypeError(f"expected an nn.Linear, got {type(linear).__name__}")
    out_features, in_features = linear.weight.shape
    if in_features != in_channels * kernel_size * kernel_size:
        raise ValueError(
            f"Linear has {in_features} inputs but in_channels * kernel_size**2 = "
            f"{in_channels} * {kernel_size}**2 = {in_channels * kernel_size**2}; "
            "pass the channel count and spatial size of the block it reads"
        )
    shape = (out_features, in_channels, kernel_size, kernel_size)
    # Built on the meta device: a random initialisation (as large as fc6: 411 MB) would be
    # overwritten at once.
    with torch.device("meta"):
        conv = nn.Conv2d(in_channels, out_features, kernel_size, bias=linear.bias is not None,
                         dtype=linear.weight.dtype)
    if share_weights:
        conv.weight = nn.Parameter(linear.weight.view(shape), requires_grad=linear.weight.requires_grad)
        conv.bias = linear.bias
        return conv
    conv = conv.to_empty(device=linear.weight.device)
    with torch.no_grad():
        conv.weight.copy_(linear.weight.reshape(shape))
        if linear.bias is not None:
            conv.bias.copy_(linear.bias)
    return conv


def convolutionalize(vgg: nn.Module, share_weights: bool = False) -> nn.Sequential:
    """A fully convolutional copy of a torchvision VGG: (N,3,H,W) -> (N,1000,h,w).

    h = floor(H/32) - 6 (likewise w): one score vector per 7x7 window of pool5 features,
    i.e. per 224-pixel window of the image at stride 32. At 224x224 it equals `vgg(x)`.
    The adaptive average pool is dropped: at 224 it is the identity, elsewhere it would
    squash any input back to 7x7.

    With `share_weights=True` it is not a copy: it reuses `vgg.features` and views of the
    classifier's weights (see `fc_to_conv`), so both networks fit in the memory of one
    (full-width VGG16: 528 MB instead of 1.06 GB) and changing one changes the other.
    """
    classifier = getattr(vgg, "classifier", None)
    linears = [m for m in classifier if isinstance(m, nn.Linear)] if classifier else []
    if not hasattr(vgg, "features") or len(linears) != 3:
        raise TypeError("convolutionalize expects a torchvision VGG (features + 3-Linear classifier)")
    fc6, fc7, fc8 = linears
    channels = fc6.in_features // 49
    vgg_dropout = [m for m in classifier if isinstance(m, nn.Dropout)]
    p = vgg_dropout[0].p if vgg_dropout else 0.0
    return nn.Sequential(
        OrderedDict(
            features=vgg.features if share_weights else copy.deepcopy(vgg.features),
            fc6=fc_to_conv(fc6, channels, 7, share_weights),
            relu6=nn.ReLU(inplace=True),
            drop6=nn.Dropout(p),
            fc7=fc_to_conv(fc7, fc7.in_features, 1, share_weights),
            relu7=nn.ReLU(inplace=True),
            drop7=nn.Dropout(p),
            fc8=fc_to_conv(fc8, fc8.in_features, 1, share_weights),
        )
    )
