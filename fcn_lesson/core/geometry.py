"""Where each cell of a feature map sits in the image: sizes, strides, receptive fields.

Along one axis a feature map is described by three numbers (see Araujo, Norris & Sim,
"Computing receptive fields of convolutional neural networks", Distill 2019):

    stride s           input pixels between neighbouring cells,
    receptive field r  how many input pixels one cell can see,
    centre c           where cell 0 is centred, in input pixels (pixel k has its centre at k).

A convolution or pooling with kernel k, stride t, padding p and dilation d maps them to

    s' = s t,    r' = r + d (k - 1) s,    c' = c + (d (k - 1) / 2 - p) s,

and a transposed convolution (kernel k, stride t, padding p), which puts t output cells
between two input cells, to

    s' = s / t,  r' = r + (ceil(k / t) - 1) s,  c' = c + (p - (k - 1) / 2) s / t.

`stage_table` walks a model with these rules, without running it, and returns one row
per stage. For torchvision's VGG16 it shows the classifier squashing any input to 7x7 and
throwing position away; for its convolutionalized copy, a score map with stride 32 whose
cells each see 404 pixels, of which the classifier was trained on the central 224; for
an FCN, every fused map centred on the same pixels (which the walk checks).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from fcn_lesson.core.convert import convolutionalize
from fcn_lesson.core.models import FCN
from fcn_lesson.core.upsample import BilinearUpsample

__all__ = [
    "VGG_INPUT",
    "Stage",
    "conv_output_size",
    "conv_transpose_output_size",
    "meta_vgg16",
    "stage_table",
    "vgg16_score_size",
]

VGG_INPUT = 224
"""Side of the images VGG16 was trained on: 7 pool5 cells x stride 32."""

# Layers that keep the shape and geometry of a map (only the channel count may change).
_POINTWISE = (nn.ReLU, nn.Dropout, nn.Dropout2d, nn.BatchNorm2d, nn.Identity)
_POOLS = (nn.MaxPool2d, nn.AvgPool2d)


class Stage(NamedTuple):
    """One row of `stage_table`: a layer's output and where its cells sit in the input.

    `stride`, `receptive_field` and `center` are None once a layer has thrown position away
    (an adaptive pool that resizes, a Linear layer): its outputs are no longer a map.
    """

    name: str
    shape: tuple[int, ...]  # (C, h, w) for a map, (features,) after a Linear layer
    stride: int | float | None  # input pixels between neighbouring cells
    receptive_field: int | None  # side of the square of input pixels one cell sees
    center: float | None  # input coordinate of the centre of cell (0, 0)

    def box(self, row: int, col: int, size: float | None = None) -> tuple[float, ...]:
        """The square of `size` pixels (default: the receptive field) centred on cell
        (row, col), as (top, left, bottom, right) in pixel-edge coordinates: pixel k spans
        [k, k + 1), so a box of whole pixels is `image[top:bottom, left:right]`.

        It may reach outside the image (zero padding sees there). Exact after convolutions
        and pooling; after a transposed convolution a cell's window shifts with its phase
        and this is the common window, centred.
        """
        if self.stride is None:
            raise ValueError(f"{self.name!r} is not a spatial map ({self.shape}): its outputs "
                             "see the whole image, there is no per-cell box")
        _, h, w = self.shape
        if not (0 <= row < h and 0 <= col < w):
            raise ValueError(f"cell ({row}, {col}) is outside the {h}x{w} map of {self.name!r}")
        size = self.receptive_field if size is None else size
        top = self.center + 0.5 + row * self.stride - size / 2
        left = self.center + 0.5 + col * self.stride - size / 2
        return _num(top), _num(left), _num(top + size), _num(left + size)


def _num(x: float) -> int | float:
    return int(x) if float(x).is_integer() else float(x)


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def conv_output_size(size: int, kernel_size: int, stride: int = 1, padding: int = 0,
                     dilation: int = 1, ceil_mode: bool = False) -> int:
    """Output length of a convolution or pooling along one axis (PyTorch's rule).

    floor((size + 2 padding - dilation (kernel_size - 1) - 1) / stride) + 1, with ceil in
    place of floor for ceil_mode pooling, whose last window must still start inside the
    input or its left padding.
    """
    _check_int("size", size, 1)
    _check_int("kernel_size", kernel_size, 1)
    _check_int("stride", stride, 1)
    _check_int("padding", padding, 0)
    _check_int("dilation", dilation, 1)
    span = size + 2 * padding - dilation * (kernel_size - 1) - 1
    if span < 0:
        raise ValueError(
            f"input of size {size} (padded by {padding} on each side) is smaller than the "
            f"kernel's extent {dilation * (kernel_size - 1) + 1}: no output cell fits"
        )
    rounded = -(-span // stride) if ceil_mode else span // stride
    out = rounded + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out


def conv_transpose_output_size(size: int, kernel_size: int, stride: int = 1, padding: int = 0,
                               output_padding: int = 0, dilation: int = 1) -> int:
    """Output length of a transposed convolution: (size - 1) stride - 2 padding
    + dilation (kernel_size - 1) + output_padding + 1."""
    _check_int("size", size, 1)
    _check_int("kernel_size", kernel_size, 1)
    _check_int("stride", stride, 1)
    _check_int("padding", padding, 0)
    _check_int("output_padding", output_padding, 0)
    _check_int("dilation", dilation, 1)
    out = (size - 1) * stride - 2 * padding + dilation * (kernel_size - 1) + output_padding + 1
    if out < 1:
        raise ValueError(
            f"padding {padding} crops away the whole output of size {out + 2 * padding}")
    return out


def vgg16_score_size(height: int, width: int, fc6_padding: int = 0) -> tuple[int, int]:
    """(h, w) of the score map of a convolutionalized VGG16 on an (height, width) image.

    Five 2x2 poolings floor each side to n // 32; the 7x7 fc6 then fits n // 32 - 6 times
    (with `fc6_padding` 3, as in the FCN backbone, n // 32 times).
    """
    sizes = []
    for name, n in (("height", height), ("width", width)):
        _check_int(name, n, 1)
        pool5 = n
        for _ in range(5):
            pool5 //= 2
        if pool5 + 2 * fc6_padding < 7:
            smallest = 32 * (7 - 2 * fc6_padding)
            raise ValueError(f"{name} {n} is too small: fc6 needs 7 pool5 cells, i.e. at least "
                             f"{smallest} pixels (with fc6 padding {fc6_padding})")
        sizes.append(conv_output_size(pool5, 7, padding=fc6_padding))
    return sizes[0], sizes[1]


def meta_vgg16(convolutional: bool = False) -> nn.Module:
    """torchvision's VGG16 (or its `convolutionalize`d copy) on the meta device: every layer's
    shape, none of its 138M weights; it builds in milliseconds, for geometry only."""
    from torchvision.models import vgg16  # slow to import, and only needed here

    with torch.device("meta"):
        vgg = vgg16()
        return convolutionalize(vgg) if convolutional else vgg


def _square(layer: nn.Module, attr: str) -> int:
    value = getattr(layer, attr)
    if isinstance(value, tuple):
        if len(set(value)) != 1:
            raise ValueError(f"{type(layer).__name__} has {attr}={value}; stage_table handles "
                             "square kernels, strides and paddings only")
        value = value[0]
    if not isinstance(value, int):
        raise ValueError(f"{type(layer).__name__} has {attr}={value!r}; stage_table needs an int")
    return value


def _apply(layer: nn.Module, stage: Stage, name: str) -> Stage:
    """The output of `layer` on a map described by `stage`."""
    if isinstance(layer, _POINTWISE):
        return stage._replace(name=name)
    if isinstance(layer, nn.Linear):
        if layer.in_features != math.prod(stage.shape):
            raise ValueError(f"{name} is a Linear layer with {layer.in_features} inputs, but "
                             f"it receives {stage.shape} = {math.prod(stage.shape)} values")
        return Stage(name, (layer.out_features,), None, None, None)
    if len(stage.shape) != 3:
        raise ValueError(
            f"{name} ({type(layer).__name__}) needs a (C, h, w) map, got {stage.shape}")
    channels, h, w = stage.shape
    if isinstance(layer, nn.AdaptiveAvgPool2d):
        out = layer.output_size
        out = out if isinstance(out, tuple) else (out, out)
        out = tuple(n if o is None else o for n, o in zip((h, w), out, strict=True))
        if out == (h, w):  # nothing to resize: the identity, geometry kept
            return stage._replace(name=name)
        # Windows of varying size and position: the cells no longer have one stride.
        return Stage(name, (channels, *out), None, None, None)
    if stage.stride is None:
        raise ValueError(f"{name} ({type(layer).__name__}) follows a layer that threw "
                         "position away; there is no geometry left to follow")
    s, r, c = stage.stride, stage.receptive_field, stage.center
    if isinstance(layer, BilinearUpsample):
        k, t, p = 2 * layer.factor, layer.factor, layer.factor // 2
        out_channels, dilation, output_padding, transposed = layer.channels, 1, 0, True
    elif isinstance(layer, nn.ConvTranspose2d):
        k, t, p = (_square(layer, a) for a in ("kernel_size", "stride", "padding"))
        dilation, output_padding = _square(layer, "dilation"), _square(layer, "output_padding")
        out_channels, transposed = layer.out_channels, True
    elif isinstance(layer, (nn.Conv2d, *_POOLS)):
        k, t, p = (_square(layer, a) for a in ("kernel_size", "stride", "padding"))
        dilation = 1 if isinstance(layer, nn.AvgPool2d) else _square(layer, "dilation")
        out_channels = layer.out_channels if isinstance(layer, nn.Conv2d) else channels
        transposed = False
    else:
        raise TypeError(f"stage_table does not know the layer {name} ({type(layer).__name__})")
    if transposed:
        size = [conv_transpose_output_size(n, k, t, p, output_padding, dilation) for n in (h, w)]
        # One output cell gets stamps from up to ceil(extent / t) neighbouring input cells.
        extent = dilation * (k - 1) + 1
        return Stage(name, (out_channels, *size), _num(s / t),
                     _num(r + (math.ceil(extent / t) - 1) * s),
                     c + (p - dilation * (k - 1) / 2) * s / t)
    ceil_mode = getattr(layer, "ceil_mode", False)
    try:
        size = [conv_output_size(n, k, t, p, dilation, ceil_mode) for n in (h, w)]
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from None
    return Stage(name, (out_channels, *size), s * t, r + dilation * (k - 1) * s,
                 c + (dilation * (k - 1) / 2 - p) * s)


def _leaves(module: nn.Module) -> list[tuple[str, nn.Module]]:
    # Registration order, which is the order a Sequential (and torchvision's VGG) runs them.
    return [(n, m) for n, m in module.named_modules() if next(m.children(), None) is None]


def _walk(module: nn.Module, stage: Stage, rows: list[Stage], pools_before: int = 0) -> Stage:
    """Follow `module`'s layers in order, adding a row after each pooling and each layer
    after the last pooling (the classifier / head), named as VGG names them: pool1, ...,
    then fc6, ... (`pools_before` continues the numbering of an earlier part)."""
    leaves = _leaves(module)
    total_pools = sum(isinstance(m, _POOLS) for _, m in leaves)
    pools = after = 0
    for qualified, layer in leaves:
        short = qualified.rsplit(".", 1)[-1]
        in_head = isinstance(layer, (nn.Conv2d, nn.Linear)) and pools == total_pools
        if isinstance(layer, _POOLS):
            pools += 1
            name = f"pool{pools_before + pools}"
        elif isinstance(layer, nn.AdaptiveAvgPool2d):
            name = "avgpool"
        elif in_head:
            after += 1
            name = f"fc{pools_before + total_pools + after}" if short.isdigit() else short
        else:
            name = short
        stage = _apply(layer, stage, name)
        if in_head or isinstance(layer, (*_POOLS, nn.AdaptiveAvgPool2d)):
            rows.append(stage)
    return stage


def _fused(name: str, a: Stage, b: Stage) -> Stage:
    if a.shape != b.shape or a.stride != b.stride or a.center != b.center:
        raise ValueError(f"{name} adds maps that do not line up: {a.name} {a.shape} (stride "
                         f"{a.stride}, centre {a.center}) and {b.name} {b.shape} (stride "
                         f"{b.stride}, centre {b.center})")
    return Stage(name, a.shape, a.stride, max(a.receptive_field, b.receptive_field), a.center)


def _fcn_table(model: FCN, height: int, width: int) -> list[Stage]:
    # The same steps as FCN.forward_maps: pad to a multiple of 32, backbone, score, fuse the
    # skips, upsample, crop.
    padded = (-(-height // 32) * 32, -(-width // 32) * 32)
    rows = [Stage("input", (3, height, width), 1, 1, 0.0),
            Stage("padded input", (3, *padded), 1, 1, 0.0)]
    backbone = model.backbone
    stage, taps = rows[-1], {}
    for part in (backbone.to_pool3, backbone.to_pool4, backbone.to_pool5):
        stage = _walk(part, stage, rows, pools_before=len(taps))
        taps = {row.name: row for row in rows if row.name.startswith("pool")}
    stage = _walk(backbone.head, stage, rows)
    score = _apply(model.score_fr, stage, "score_fr")
    rows.append(score)
    skips = (("upscore2", "score_pool4", "fuse_pool4", "pool4"),
             ("upscore_pool4", "score_pool3", "fuse_pool3", "pool3"))
    for up_name, score_name, fuse_name, tap in skips[:model.skips]:
        up = _apply(getattr(model, up_name), score, up_name)
        skip = _apply(getattr(model, score_name), taps[tap], score_name)
        score = _fused(fuse_name, up, skip)
        rows += [up, skip, score]
    up = _apply(model.upscore_final, score, "upscore_final")
    rows += [up, up._replace(name="out", shape=(up.shape[0], height, width))]
    return rows


def stage_table(model: nn.Module, height: int, width: int) -> list[Stage]:
    """Output shape, stride, receptive field and centre of each stage of `model` on an
    (height, width) image, computed from the layer definitions (no forward pass).

    `model` is an FCN (`FCN32s`, `FCN16s`, `FCN8s`), a torchvision VGG, or the module
    `convolutionalize` makes of one. Rows: the input, each pooling, the classifier or head
    layers after pool5; for an FCN also the padded input, the score maps in
    `FCN.forward_maps` order, the final upsampling and the output cropped to the input size.
    """
    _check_int("height", height, 1)
    _check_int("width", width, 1)
    if isinstance(model, FCN):
        return _fcn_table(model, height, width)
    if not hasattr(model, "features"):
        raise TypeError(f"stage_table expects an FCN, a torchvision VGG or a convolutionalized "
                        f"VGG (with .features), got {type(model).__name__}")
    rows = [Stage("input", (3, height, width), 1, 1, 0.0)]
    _walk(model, rows[0], rows)
    return rows
