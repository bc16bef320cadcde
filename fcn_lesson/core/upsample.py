"""Bilinear upsampling as a transposed convolution, the way FCN does it.

FCN upsamples coarse class scores with `ConvTranspose2d` layers whose weights start as a
bilinear kernel. With kernel 2s, stride s and padding s/2 the output is exactly s times the
input and every output pixel sits where `F.interpolate(..., align_corners=False)` puts it,
so the coarse scores land on the pixels they were computed from.
"""

import torch
import torch.nn.functional as F
from torch import nn


def bilinear_kernel(kernel_size: int) -> torch.Tensor:
    """The FCN reference `upsample_filt`: a (k, k) bilinear kernel.

    factor = (k + 1) // 2; the centre is factor - 1 for odd k and factor - 0.5 for even k.
    """
    if not isinstance(kernel_size, int) or kernel_size < 1:
        raise ValueError(f"kernel_size must be a positive int, got {kernel_size!r}")
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    og = torch.arange(kernel_size, dtype=torch.float64)
    filt = 1 - (og - center).abs() / factor
    return torch.outer(filt, filt).float()


def _check_factor(factor: int) -> None:
    # Padding s/2 must be a whole number for the output to be exactly s times the input and
    # centred like F.interpolate; FCN only ever uses 2, 8, 16 and 32.
    if not isinstance(factor, int) or factor < 2 or factor % 2:
        raise ValueError(f"upsampling factor must be an even int >= 2, got {factor!r}")


def bilinear_upsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Upsample (N, C, h, w) -> (N, C, h*factor, w*factor) by a fixed bilinear transposed conv.

    Each channel is upsampled on its own (groups=C), which is what the diagonal weight of
    the reference implementation computes, at 1/C of the cost.
    """
    _check_factor(factor)
    channels = x.shape[1]
    weight = bilinear_kernel(2 * factor).to(x)[None, None].expand(channels, 1, -1, -1)
    return F.conv_transpose2d(x, weight, stride=factor, padding=factor // 2, groups=channels)


class BilinearUpsample(nn.Module):
    """Transposed-conv upsampling by `factor`, initialised bilinear.

    learnable=False: a fixed depthwise kernel kept as a buffer (FCN's final upsampling).
    learnable=True: a full (C, C, 2s, 2s) weight, bilinear on the diagonal and zero elsewhere,
    so training may also mix classes (FCN's 2x `upscore2` layers).
    """

    def __init__(self, channels: int, factor: int, learnable: bool = False):
        super().__init__()
        _check_factor(factor)
        self.channels, self.factor, self.learnable = channels, factor, learnable
        kernel = bilinear_kernel(2 * factor)
        if learnable:
            weight = torch.zeros(channels, channels, 2 * factor, 2 * factor)
            weight[range(channels), range(channels)] = kernel
            self.weight = nn.Parameter(weight)
        else:
            self.register_buffer("weight", kernel.expand(channels, 1, -1, -1).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        groups = 1 if self.learnable else self.channels
        return F.conv_transpose2d(
            x, self.weight, stride=self.factor, padding=self.factor // 2, groups=groups
        )

    def extra_repr(self) -> str:
        return f"{self.channels}, factor={self.factor}, learnable={self.learnable}"
