"""The computations and figures of notebook 2: upsampling as a transposed convolution.

A transposed convolution with stride s stamps a copy of its kernel, scaled by each input
value, every s output pixels and adds the copies up. Whether that is bilinear
interpolation, or leaves a checkerboard, depends only on the kernel: output pixels at
the s x s different offsets ("phases") from the stamps receive different kernel taps, and
a constant image comes out constant only if every phase's taps add up to the same gain.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from fcn_lesson.core.upsample import bilinear_kernel

__all__ = [
    "KERNEL_KINDS",
    "Panel",
    "checkerboard_variance",
    "learned_phase_gains",
    "phase_gains",
    "plot_checkerboards",
    "plot_kernel",
    "plot_learned_phase_gains",
    "plot_profile_1d",
    "plot_resize_convolve",
    "plot_scatter_add",
    "plot_upsampling",
    "resize_conv_kernel",
    "resize_convolve",
    "scatter_add_steps",
    "pattern_image",
    "transposed_upsample",
    "upsampling_kernel",
    "upsampling_panels",
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
    out = torch.zeros(h * w, (h - 1) * stride + k, (w - 1) * stride + k, dtype=x.dtype, device=x.device)
    for n, (i, j) in enumerate((i, j) for i in range(h) for j in range(w)):
        out[n, i * stride:i * stride + k, j * stride:j * stride + k] = x[i, j] * kernel
    return out


def _integer_ticks(ax, nbins: int = 10) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(nbins=nbins, integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(nbins=nbins, integer=True))


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
    # At most four panels a row: a notebook shows a figure about 10 inches wide, and one row
    # of seven shrank the text to 5-6 pixels.
    columns = min(4, len(panels))
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.7 * columns, 3.1 * rows + 0.5),
                             squeeze=False, layout="constrained")
    axes = axes.ravel()
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    for ax, (title, img, crop) in zip(axes, panels, strict=False):
        ax.imshow(img.numpy(), cmap="magma", vmin=0, vmax=vmax)
        _annotate(ax, img, "{:.2g}", fontsize=8 if img.shape[0] > 4 else 10)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("column", fontsize=9)
        ax.set_ylabel("row", fontsize=9)
        _integer_ticks(ax)
        if crop:
            inner = size - 2 * crop
            ax.add_patch(Rectangle((crop - 0.5, crop - 0.5), inner, inner, fill=False,
                                   edgecolor="cyan", linewidth=2))
    fig.suptitle(f"transposed convolution, stride {stride}, kernel {kernel.shape[0]}, "
                 f"padding {padding}:\nevery input value stamps a scaled kernel; overlaps add",
                 fontsize=11)
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


class Panel(NamedTuple):
    """One picture of the explorer: (H, W) values shown with `cmap` from `vmin` to `vmax`."""

    title: str
    values: np.ndarray
    cmap: str
    vmin: float
    vmax: float


# The test pattern is in [0.3, 1]; up to 1.3 leaves room for a checkerboard's brighter phases
# (brighter still is clipped to white).
UPSAMPLED_RANGE = (0.0, 1.3)


def upsampling_panels(r: UpsamplingResult) -> list[Panel]:
    """What the explorer shows for `r`, and on which colour scales: the kernel, the transposed
    convolution, `F.interpolate`, and their difference (on a scale symmetric about 0)."""
    limit = max(float(r.difference.abs().max()), 1e-3)
    return [Panel("kernel", r.kernel.numpy(), "viridis", 0.0, float(r.kernel.max())),
            Panel("transposed convolution", r.upsampled.numpy(), "gray", *UPSAMPLED_RANGE),
            Panel("F.interpolate (bilinear)", r.reference.numpy(), "gray", *UPSAMPLED_RANGE),
            Panel("difference: conv - interpolate", r.difference.numpy(), "RdBu_r", -limit, limit)]


def plot_upsampling(r: UpsamplingResult):
    """The explorer's view of `r` as a matplotlib figure, titled with the setting and its verdict.

    A `Figure` outside pyplot, on an Agg canvas: nothing to close, and drawing it shows nothing
    by itself (the explorer turns it into the PNG that readers without a kernel see)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 3.1), dpi=72, layout="constrained")
    FigureCanvasAgg(fig)
    for ax, panel in zip(fig.subplots(1, 4), upsampling_panels(r), strict=True):
        im = ax.imshow(panel.values, cmap=panel.cmap, vmin=panel.vmin, vmax=panel.vmax)
        height, width = panel.values.shape
        ax.set_title(f"{panel.title}\n{height} x {width}", fontsize=10)
        ax.set_xlabel("column")
        ax.set_ylabel("row")
        # a few whole cell indices, not one per cell crowding into each other
        _integer_ticks(ax, nbins=5)
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle(f"k = {r.kernel_size}, s = {r.factor}, {r.kind}: {r.verdict}", fontsize=10)
    return fig


def learned_phase_gains(weight: torch.Tensor, factor: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A learned (C, C, k, k) transposed-convolution weight (in, out, k, k), as FCN's
    `upscore2` / `upscore_pool4`, measured with `phase_gains`.

    Returns (gains, off_diagonal): gains (C, factor, factor), the phase gains of each class's
    own kernel `weight[c, c]` (a flat map of class c comes out patterned unless they are
    equal; at initialisation all are 1); off_diagonal (C,), the share of the total |weight|
    reaching output class c that comes from the other classes (0 at initialisation).
    """
    if weight.dim() != 4 or weight.shape[0] != weight.shape[1]:
        raise ValueError(f"expected a (C, C, k, k) weight, got shape {tuple(weight.shape)}")
    weight = weight.detach().cpu().double()
    classes = torch.arange(weight.shape[0])
    own = weight[classes, classes]  # (C, k, k)
    gains = torch.stack([phase_gains(kernel, factor) for kernel in own])
    total = weight.abs().sum(dim=(0, 2, 3))  # per output class
    off_diagonal = 1 - own.abs().sum(dim=(1, 2)) / total
    return gains, off_diagonal


def plot_learned_phase_gains(layers: dict, classes):
    """One row per learned upsampler in `layers` ({title: BilinearUpsample}): each class's
    phase gains (its own kernel) on one colour scale centred on 1, the bilinear start."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import TwoSlopeNorm

    measured = {title: learned_phase_gains(layer.weight, layer.factor)
                for title, layer in layers.items()}
    # Colour: each gain relative to its class's mean gain. A class whose gains are all 1.3
    # is scaled up, not patterned; the checkerboard is the spread around the mean.
    relative = {t: g / g.mean(dim=(1, 2), keepdim=True) for t, (g, _) in measured.items()}
    spread = max(max(float((r - 1).abs().max()) for r in relative.values()), 1e-3)
    norm = TwoSlopeNorm(1.0, 1 - spread, 1 + spread)
    fig, axes = plt.subplots(len(layers), len(classes), squeeze=False, layout="constrained",
                             figsize=(1.7 * len(classes) + 1.2, 2.0 * len(layers) + 0.6))
    for row_axes, (title, (gains, off)) in zip(axes, measured.items(), strict=True):
        for c, ax in enumerate(row_axes):
            im = ax.imshow(relative[title][c].numpy(), cmap="PuOr_r", norm=norm)
            _annotate_centred(ax, gains[c], (relative[title][c] - 1).abs() > 0.6 * spread)
            ax.set_xticks([])
            ax.set_yticks([])
            spread_c = float((gains[c].max() - gains[c].min()) / gains[c].mean())
            ax.set_title(f"{classes[c]}: spread {100 * spread_c:.0f}%\n{100 * off[c]:.0f}% "
                         "off-diagonal", fontsize=9)
        row_axes[0].set_ylabel(title, fontsize=9)
    fig.colorbar(im, ax=axes, shrink=0.8, label="gain / the class's mean gain")
    fig.suptitle("learned 2x upsamplers: phase gains of each class's own kernel (numbers; "
                 "bilinear: all 1). Unequal = checkerboard", fontsize=11)
    return fig


def _annotate_centred(ax, values: torch.Tensor, dark: torch.Tensor) -> None:
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            ax.text(j, i, f"{float(values[i, j]):.2f}", ha="center", va="center", fontsize=9,
                    color="white" if dark[i, j] else "black")


def resize_convolve(x: torch.Tensor, kernel: torch.Tensor, factor: int,
                    mode: str = "nearest") -> torch.Tensor:
    """Distill's remedy for checkerboards (Odena, Dumoulin & Olah 2016): resize (N, C, h, w)
    by `factor` with `F.interpolate` (`mode` "nearest" or "bilinear"), then convolve every
    channel with the (k, k) `kernel`, zero-padded to keep the size: (N, C, h factor, w factor).

    Every output pixel then gets the whole kernel, whatever its phase: no checkerboard, for
    any kernel, trained or not.
    """
    if mode not in ("nearest", "bilinear"):
        raise ValueError(f"mode must be 'nearest' or 'bilinear', got {mode!r}")
    if x.dim() != 4:
        raise ValueError(f"expected a (N, C, h, w) tensor, got shape {tuple(x.shape)}")
    extra = {} if mode == "nearest" else {"align_corners": False}
    up = F.interpolate(x, scale_factor=factor, mode=mode, **extra)
    channels, k = x.shape[1], kernel.shape[0]
    weight = kernel.to(x)[None, None].expand(channels, 1, k, k)
    up = F.pad(up, ((k - 1) // 2, k // 2, (k - 1) // 2, k // 2))  # "same" size for odd and even k
    return F.conv2d(up, weight, groups=channels)


def resize_conv_kernel(kernel: torch.Tensor, factor: int, mode: str = "nearest") -> torch.Tensor:
    """The transposed-convolution kernel (stride `factor`) that `resize_convolve` amounts to
    away from the border: the resize's own kernel (nearest: a factor x factor box; bilinear:
    `bilinear_kernel(2 factor)`) convolved with `kernel`. Its `phase_gains` are all
    `kernel.sum()`: the resize hands every phase the same total, and the convolution after it
    cannot tell phases apart."""
    if mode == "nearest":
        base = torch.ones(factor, factor, dtype=torch.float64)
    elif mode == "bilinear":
        base = bilinear_kernel(2 * factor).double()
    else:
        raise ValueError(f"mode must be 'nearest' or 'bilinear', got {mode!r}")
    k = kernel.shape[0]
    # Output pixel y of the resize reads input pixel y // factor, and conv2d reads y + t for
    # tap t: input i reaches y through every tap t with y + t in i's block. That is the
    # base cross-correlated with the kernel, over the base padded by k - 1 on every side.
    padded = F.pad(base[None, None], (k - 1, k - 1, k - 1, k - 1))
    return F.conv2d(padded, kernel.double()[None, None])[0, 0]


def plot_resize_convolve(kernel: torch.Tensor, factor: int, size: int = 8):
    """A constant image of ones upsampled three ways with the same (k, k) `kernel`: as a
    transposed convolution, and as Distill's resize (nearest, bilinear) then convolve (with
    the kernel divided by factor**2, since the resize copies each pixel factor**2 times). Top:
    the output; bottom: the phase gains of the transposed-conv kernel each one amounts to."""
    import matplotlib.pyplot as plt

    ones = torch.ones(1, 1, size, size, dtype=torch.float64)
    cases = [("transposed conv", transposed_upsample(ones, kernel, factor)[0][0, 0],
              phase_gains(kernel, factor))]
    # The resize already makes factor**2 copies of each input pixel: the kernel after it is
    # divided by factor**2, so that all three have the same mean gain.
    after = kernel / factor**2
    for mode in ("nearest", "bilinear"):
        cases.append((f"{mode} resize, then conv", resize_convolve(ones, after, factor, mode)[0, 0],
                      phase_gains(resize_conv_kernel(after, factor, mode), factor)))
    top = max(float(out.max()) for _, out, _ in cases)
    fig, axes = plt.subplots(2, 3, figsize=(9.6, 6.4), layout="constrained")
    for col, (title, out, gains) in enumerate(cases):
        ax = axes[0, col]
        ax.imshow(out.numpy(), cmap="gray", vmin=0, vmax=top)
        ax.set_title(f"{title}\nvariance of the phase gains {gains.var(unbiased=False):.3f}",
                     fontsize=10)
        ax.set_xlabel("output column", fontsize=9)
        ax.set_ylabel("output row", fontsize=9)
        _integer_ticks(ax)
        ax = axes[1, col]
        ax.imshow(gains.numpy(), cmap="viridis", vmin=0, vmax=max(float(gains.max()), 1e-9))
        _annotate(ax, gains, "{:.2f}", fontsize=10)
        ax.set_title("gain per phase", fontsize=10)
        ax.set_xlabel("column phase", fontsize=9)
        ax.set_ylabel("row phase", fontsize=9)
        _integer_ticks(ax)
    fig.suptitle(f"the same {kernel.shape[0]}x{kernel.shape[0]} kernel, factor {factor}: "
                 "only the transposed convolution makes a checkerboard", fontsize=11)
    return fig
