"""The computations and figures of notebook 2: upsampling as a transposed convolution.

A transposed convolution with stride s stamps a copy of its kernel, scaled by each input
value, every s output pixels and adds the copies up. Whether that is bilinear
interpolation, or leaves a checkerboard, depends only on the kernel: output pixels at
the s x s different offsets ("phases") from the stamps receive different kernel taps, and
a constant image comes out constant only if every phase's taps add up to the same gain.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fcn_lesson.core.upsample import bilinear_kernel

__all__ = [
    "KERNEL_KINDS",
    "checkerboard_variance",
    "phase_gains",
    "plot_checkerboards",
    "plot_kernel",
    "plot_profile_1d",
    "plot_scatter_add",
    "scatter_add_steps",
    "pattern_image",
    "transposed_upsample",
    "upsampling_kernel",
]

KERNEL_KINDS = ("bilinear", "box")


def upsampling_kernel(factor: int, kernel_size: int, kind: str = "bilinear") -> torch.Tensor:
    """A (k, k) float64 kernel for upsampling by `factor`, its weights summing to factor**2.

    That total is the gain that keeps a constant image constant on average (each input
    pixel becomes factor**2 output pixels), so kernels of different sizes compare fairly.
    "bilinear" is FCN's `bilinear_kernel(k)` rescaled (for k = 2 factor, or 2 factor - 1,
    the scale is exactly 1); "box" is a uniform k x k kernel, the plainest learned kernel.
    """
    if not isinstance(factor, int) or isinstance(factor, bool) or factor < 1:
        raise ValueError(f"factor must be a positive int, got {factor!r}")
    if not isinstance(kernel_size, int) or isinstance(kernel_size, bool) or kernel_size < 1:
        raise ValueError(f"kernel_size must be a positive int, got {kernel_size!r}")
    if kind == "bilinear":
        kernel = bilinear_kernel(kernel_size).double()
    elif kind == "box":
        kernel = torch.ones(kernel_size, kernel_size, dtype=torch.float64)
    else:
        raise ValueError(f"kind must be one of {KERNEL_KINDS}, got {kind!r}")
    return kernel * (factor**2 / kernel.sum())


def transposed_upsample(x: torch.Tensor, kernel: torch.Tensor,
                        factor: int) -> tuple[torch.Tensor, float]:
    """Upsample (N, C, h, w) -> (N, C, h factor, w factor) by a transposed convolution with
    stride `factor` and the (k, k) `kernel` on every channel, cropped to line up with
    `F.interpolate(..., align_corners=False)` as well as whole pixels allow.

    Returns (output, shift): the full transposed convolution ((h - 1) factor + k long) sits
    (k - factor) / 2 pixels ahead of interpolate's grid; the crop removes the whole part,
    and `shift` (0 or 0.5 pixel) is what no crop can remove, when k and factor differ in
    parity. For k = 2 factor this is FCN's padding factor / 2, i.e. `bilinear_upsample`.
    """
    if x.dim() != 4:
        raise ValueError(f"expected a (N, C, h, w) tensor, got shape {tuple(x.shape)}")
    if kernel.dim() != 2 or kernel.shape[0] != kernel.shape[1]:
        raise ValueError(f"kernel must be square (k, k), got shape {tuple(kernel.shape)}")
    channels, (h, w), k = x.shape[1], x.shape[-2:], kernel.shape[0]
    weight = kernel.to(x)[None, None].expand(channels, 1, k, k)
    full = F.conv_transpose2d(x, weight, stride=factor, groups=channels)
    offset = (k - factor) // 2  # floor, also when k < factor (then it pads instead)
    # Negative padding crops: drop `offset` pixels in front, keep h * factor of them.
    pad_h = (-offset, h * factor - (full.shape[-2] - offset))
    pad_w = (-offset, w * factor - (full.shape[-1] - offset))
    return F.pad(full, (*pad_w, *pad_h)), (k - factor) / 2 - offset


def phase_gains(kernel: torch.Tensor, factor: int) -> torch.Tensor:
    """(factor, factor): the sum of the kernel taps that land on each output phase.

    Away from the border, a constant image of ones upsampled by a transposed convolution
    is exactly these gains tiled; unequal gains are the checkerboard.
    """
    if kernel.dim() != 2:
        raise ValueError(f"kernel must be 2-D (k, k), got shape {tuple(kernel.shape)}")
    k = kernel.shape[0]
    padded = F.pad(kernel, (0, -k % factor, 0, -k % factor))  # whole periods of `factor`
    return padded.reshape(-1, factor, padded.shape[1] // factor, factor).sum(dim=(0, 2))


def checkerboard_variance(kernel: torch.Tensor, factor: int) -> float:
    """Variance of a constant image of ones after upsampling, away from the border: 0 when
    every phase gets the same gain, > 0 for a checkerboard."""
    return phase_gains(kernel, factor).var(unbiased=False).item()


def pattern_image(size: int = 12) -> torch.Tensor:
    """A (size, size) image: a flat background (where a checkerboard shows), a bright square
    (edges), a single bright pixel (whose upsampled copy is the kernel itself) and a linear
    ramp on the right (which bilinear interpolation reproduces exactly)."""
    if not isinstance(size, int) or size < 8:
        raise ValueError(f"size must be an int >= 8, got {size!r}")
    image = torch.full((size, size), 0.3, dtype=torch.float64)
    third = size // 3
    image[1:third + 1, 1:third + 1] = 1.0
    image[2 * third, third // 2 + 1] = 1.0
    ramp = torch.linspace(0.3, 0.9, size, dtype=torch.float64)
    image[:, 2 * third + 1:] = ramp[:, None]
    return image


def scatter_add_steps(x: torch.Tensor, kernel: torch.Tensor, stride: int) -> torch.Tensor:
    """(h, w) input -> (h w, H, W): each input value times the kernel, stamped at
    (i stride, j stride) of the uncropped output. Their sum is `F.conv_transpose2d`."""
    (h, w), k = x.shape, kernel.shape[0]
    out = torch.zeros(h * w, (h - 1) * stride + k, (w - 1) * stride + k, dtype=x.dtype)
    for n, (i, j) in enumerate((i, j) for i in range(h) for j in range(w)):
        out[n, i * stride:i * stride + k, j * stride:j * stride + k] = x[i, j] * kernel
    return out


def _integer_ticks(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))


def _annotate(ax, values: torch.Tensor, fmt: str, fontsize: int = 7) -> None:
    top = float(values.max())
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            v = float(values[i, j])
            ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=fontsize,
                    color="white" if v < 0.6 * top else "black")


def plot_kernel(kernel_sizes=(4, 16, 64)):
    """FCN's bilinear kernels: one 2-D image per size, and their 1-D profiles on a common axis
    in units of the upsampling factor (every size samples the same tent)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(kernel_sizes) + 1, figsize=(3.1 * (len(kernel_sizes) + 1), 3.2))
    for ax, k in zip(axes, kernel_sizes, strict=False):
        kern = bilinear_kernel(k).numpy()
        im = ax.imshow(kern, cmap="viridis", vmin=0)
        ax.set_title(f"bilinear_kernel({k}): factor {(k + 1) // 2}")
        ax.set_xlabel("kernel column")
        ax.set_ylabel("kernel row")
        _integer_ticks(ax)
        if k <= 8:
            _annotate(ax, kern, "{:.3f}")
        fig.colorbar(im, ax=ax, fraction=0.046)
    ax = axes[-1]
    ax.plot([-1, 0, 1], [0, 1, 0], color="0.6", lw=1, label="1 - |offset|")
    for k in kernel_sizes:
        factor = (k + 1) // 2
        tent = bilinear_kernel(k).diagonal().sqrt()  # the kernel is tent x tent
        offsets = (torch.arange(k) - (k - 1) / 2) / factor
        ax.plot(offsets.numpy(), tent.numpy(), "o", ms=7 if k <= 8 else 3, label=f"k = {k}")
    ax.set_title("1-D profile: 1 - |offset| / factor")
    ax.set_xlabel("offset from the kernel centre (in factors)")
    ax.set_ylabel("weight")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_scatter_add(x: torch.Tensor, kernel: torch.Tensor, stride: int, padding: int):
    """The transposed convolution of a small (h, w) input, step by step: the input, each
    input value's stamped kernel, their sum with the `padding` crop outlined, and the result."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    stamps = scatter_add_steps(x, kernel, stride)
    total = stamps.sum(0)
    size = total.shape[-1]
    result = total[padding:size - padding, padding:size - padding] if padding else total
    vmax = float(total.max())
    panels = [("input x", x, None)]
    panels += [(f"x[{i}, {j}] = {float(x[i, j]):g} times the kernel,\nplaced at ({i * stride}, "
                f"{j * stride})", stamps[n], None)
               for n, (i, j) in enumerate((i, j) for i in range(x.shape[0])
                                           for j in range(x.shape[1]))]
    panels += [("sum of the stamps\n(box: crop by padding)", total, padding),
               (f"output {tuple(result.shape)}", result, None)]
    fig, axes = plt.subplots(1, len(panels), figsize=(2.3 * len(panels), 2.9))
    for ax, (title, img, crop) in zip(axes, panels, strict=True):
        ax.imshow(img.numpy(), cmap="magma", vmin=0, vmax=vmax)
        _annotate(ax, img, "{:.2g}", fontsize=6 if img.shape[0] > 4 else 8)
        ax.set_title(title, fontsize=8)
        ax.set_xlabel("column")
        ax.set_ylabel("row")
        _integer_ticks(ax)
        if crop:
            inner = size - 2 * crop
            ax.add_patch(Rectangle((crop - 0.5, crop - 0.5), inner, inner, fill=False,
                                   edgecolor="cyan", linewidth=2))
    fig.suptitle(f"transposed convolution, stride {stride}, kernel {kernel.shape[0]}, "
                 f"padding {padding}: every input value stamps a scaled kernel; overlaps add")
    fig.tight_layout()
    return fig


def plot_profile_1d(signal: torch.Tensor, factor: int):
    """A 1-D signal upsampled by the FCN transposed convolution and by `F.interpolate`: equal
    except in the `factor / 2` outermost samples at each end, where the transposed conv sees
    zeros beyond the edge and interpolate repeats the edge value."""
    import matplotlib.pyplot as plt

    # Three equal rows, so that the middle output row is free of vertical border effects.
    x = signal.double().expand(3, -1)[None, None]
    ours, _ = transposed_upsample(x, upsampling_kernel(factor, 2 * factor), factor)
    ref = F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
    middle = factor + factor // 2
    ours, ref = ours[0, 0, middle].numpy(), ref[0, 0, middle].numpy()
    centres = (torch.arange(signal.numel()) + 0.5) * factor - 0.5  # input samples, output coords
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 4.4), sharex=True,
                                      gridspec_kw={"height_ratios": (2, 1)})
    top.plot(ref, "-", lw=2.5, color="tab:orange", label="F.interpolate (align_corners=False)")
    top.plot(ours, "--", lw=1.5, color="tab:blue", label=f"transposed conv (k={2 * factor}, "
             f"s={factor}, p={factor // 2})")
    top.plot(centres.numpy(), signal.numpy(), "ko", ms=5, label="input samples")
    top.set_ylabel("value")
    top.set_title(f"upsampling a 1-D signal by {factor}")
    top.legend(fontsize=8)
    bottom.bar(range(ours.size), ours - ref, color="tab:red")
    bottom.set_xlabel("output pixel")
    bottom.set_ylabel("conv - interpolate")
    for ax in (top, bottom):
        ax.axvspan(-0.5, factor / 2 - 0.5, color="grey", alpha=0.2)
        ax.axvspan(ours.size - factor / 2 - 0.5, ours.size - 0.5, color="grey", alpha=0.2)
    fig.tight_layout()
    return fig


def plot_checkerboards(cases, size: int = 8):
    """A constant image of ones upsampled by each (title, kernel, factor) in `cases`: the
    output (flat = no checkerboard) above the kernel's phase gains."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(cases), figsize=(3 * len(cases), 5.6), squeeze=False)
    ones = torch.ones(1, 1, size, size, dtype=torch.float64)
    for col, (title, kernel, factor) in enumerate(cases):
        out = transposed_upsample(ones, kernel, factor)[0][0, 0]
        gains = phase_gains(kernel, factor)
        ax = axes[0, col]
        ax.imshow(out.numpy(), cmap="gray", vmin=0, vmax=max(1.5, float(out.max())))
        ax.set_title(f"{title}\nk={kernel.shape[0]}, s={factor}: "
                     f"var {checkerboard_variance(kernel, factor):.3f}", fontsize=9)
        ax.set_xlabel("output column")
        ax.set_ylabel("output row")
        _integer_ticks(ax)
        ax = axes[1, col]
        ax.imshow(gains.numpy(), cmap="viridis", vmin=0, vmax=max(1.5, float(gains.max())))
        _annotate(ax, gains, "{:.2f}", fontsize=8 if factor <= 4 else 6)
        ax.set_title("gain per phase (sum of taps)", fontsize=9)
        ax.set_xlabel("column phase")
        ax.set_ylabel("row phase")
        _integer_ticks(ax)
    fig.suptitle("a constant image upsampled: equal phase gains give a flat output")
    fig.tight_layout()
    return fig


# Below this a variance or a difference is rounding, not an artefact (bilinear_kernel is
# float32, so exact kernels for odd factors carry ~1e-8 errors).
TOLERANCE = 1e-6


@dataclass(frozen=True)
class UpsamplingResult:
    """Everything the explorer shows for one setting; images are (H, W) float64."""

    factor: int
    kernel_size: int
    kind: str
    kernel: torch.Tensor
    upsampled: torch.Tensor  # the transposed convolution
    reference: torch.Tensor  # F.interpolate, bilinear, align_corners=False
    shift: float  # sub-pixel misalignment no crop can remove: 0 or 0.5
    margin: int  # pixels from the border beyond which "interior" starts
    interior_max_diff: float  # max |upsampled - reference| in the interior
    border_max_diff: float  # ... in the `margin` outermost pixels
    gains: torch.Tensor  # (factor, factor) phase gains: a constant image's interior
    checkerboard_var: float  # their variance: 0 = no checkerboard

    @property
    def difference(self) -> torch.Tensor:
        return self.upsampled - self.reference

    @property
    def verdict(self) -> str:
        if self.checkerboard_var > TOLERANCE:
            lo, hi = self.gains.min().item(), self.gains.max().item()
            return (f"checkerboard: the {self.factor}x{self.factor} output phases get gains from "
                    f"{lo:.2f} to {hi:.2f}, so a flat image comes out patterned")
        if self.shift:
            return ("no checkerboard, but kernel size and factor differ in parity: the output "
                    "sits half a pixel off the interpolate grid, and no padding fixes that")
        if self.interior_max_diff < TOLERANCE:
            return "exactly bilinear interpolation away from the border"
        return "even overlap and aligned, but not bilinear: a different blur than interpolate"


def compare_upsampling(image: torch.Tensor, factor: int, kernel_size: int,
                       kind: str = "bilinear") -> UpsamplingResult:
    """Upsample `image` (h, w) with a transposed convolution and with `F.interpolate`, and
    measure how they differ (the explorer's computation, without any drawing)."""
    kernel = upsampling_kernel(factor, kernel_size, kind)
    x = image.double()[None, None]
    upsampled, shift = transposed_upsample(x, kernel, factor)
    reference = F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
    upsampled, reference = upsampled[0, 0], reference[0, 0]
    # Beyond `margin` every output pixel gets all its taps from real input pixels, and
    # interpolate has stopped clamping at the edge.
    margin = max(kernel_size, factor)
    diff = (upsampled - reference).abs()
    inner = torch.zeros_like(diff, dtype=torch.bool)
    inner[margin:-margin, margin:-margin] = True
    gains = phase_gains(kernel, factor)
    return UpsamplingResult(
        factor=factor, kernel_size=kernel_size, kind=kind, kernel=kernel,
        upsampled=upsampled, reference=reference, shift=shift, margin=margin,
        interior_max_diff=diff[inner].max().item() if inner.any() else float("nan"),
        border_max_diff=diff[~inner].max().item(),
        gains=gains, checkerboard_var=gains.var(unbiased=False).item(),
    )
