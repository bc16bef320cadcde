"""Checks for the notebooks' implement-it-yourself cells.

Each `check_*` runs the student's function on real inputs (ShapesDataset images, one size not a
multiple of 32), compares it with the package's own computation and prints a verdict in plain
words: what is right, or which typical mistake the output looks like (wrong shape, forgotten
crop, a shifted crop, the skip missing, added at the wrong stride, the wrong skip, ...).
`diagnose_*` returns the same verdict as a `Verdict` instead of printing it.

A cell left blank (body `...` or `pass`, `raise NotImplementedError`, or returning None) gets
"not done yet" and nothing is raised, so an instructor's Run All goes through.

The heads are written as `fn(model, features, height, width) -> logits (N, K, height, width)`
where `features = model.backbone(pad_to_multiple(x, 32))` (pool3, pool4, fc7) and (height,
width) is the size of `x`: everything `FCN.forward` does after the backbone.
"""

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fcn_lesson.core.models import FCN, VARIANTS, pad_to_multiple
from fcn_lesson.core.upsample import bilinear_kernel, bilinear_upsample
from fcn_lesson.datasets.shapes import ShapesDataset

NOT_DONE = "not done yet: write the function above, then run this cell again."
# One real image per size: 100 x 150 (not a multiple of 32: pads to 128 x 160, where a wrong crop
# shows) first, then 128 x 128.
CHECK_SIZES = ((100, 150), (128, 128))
KERNEL_SIZES = (1, 2, 3, 4, 5, 8, 16)


@dataclass(frozen=True)
class Verdict:
    """passed: True (correct), False (a mistake, explained in `message`), None (not done yet)."""

    passed: bool | None
    message: str


def _report(verdict: Verdict) -> None:
    print(verdict.message)


def _is_blank(fn, args) -> tuple[bool, object]:
    """Call fn; (True, None) if it is a blank stub, else (False, result). Other errors propagate."""
    try:
        result = fn(*args)
    except NotImplementedError:
        return True, None
    return result is None or result is Ellipsis, result


def _call(fn, args) -> Verdict | object:
    """The student's result, or a Verdict for a blank stub or an exception."""
    try:
        blank, result = _is_blank(fn, args)
    except Exception as err:  # the student's bug, reported in words, never raised
        return Verdict(False, f"calling your function raised {type(err).__name__}: {err}")
    if blank:
        return Verdict(None, NOT_DONE)
    return result


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape:
        return False
    scale = b.abs().max().item() or 1.0
    return torch.allclose(a.double(), b.double(), rtol=1e-4, atol=1e-5 * scale)


# --- bilinear_kernel -------------------------------------------------------------------------------

def diagnose_bilinear_kernel(fn) -> Verdict:
    """`fn(kernel_size) -> (k, k) tensor` against `fcn_lesson.bilinear_kernel` for k in KERNEL_SIZES."""
    for k in KERNEL_SIZES:
        got = _call(fn, (k,))
        if isinstance(got, Verdict):
            return got
        ref = bilinear_kernel(k).double()
        if not isinstance(got, torch.Tensor):
            try:
                got = torch.as_tensor(got)
            except (TypeError, ValueError, RuntimeError):
                return Verdict(False, f"bilinear_kernel({k}) returned a {type(got).__name__}; "
                                      "return a torch tensor of shape (k, k)")
        got = got.detach().double().cpu()
        if got.shape != (k, k):
            hint = (" It looks 1-D: the 2-D kernel is the outer product of the 1-D tent with "
                    "itself, torch.outer(filt, filt)." if got.dim() == 1 else "")
            return Verdict(False, f"wrong shape: bilinear_kernel({k}) returned shape {tuple(got.shape)}, "
                                  f"expected ({k}, {k}).{hint}")
        if _close(got, ref):
            continue
        if not torch.allclose(got, got.flip(0).flip(1), atol=1e-6):
            peak = divmod(int(got.argmax()), k)
            return Verdict(False, f"bilinear_kernel({k}) is not symmetric: its peak is at {peak}, off "
                                  f"the centre. Wrong kernel centre: use factor - 1 for odd k and "
                                  f"factor - 0.5 for even k, with factor = (k + 1) // 2.")
        if abs(got.sum().item() - 1) < 1e-6 and _close(got / got.sum(), ref / ref.sum()):
            return Verdict(False, f"bilinear_kernel({k}) has the right shape of tent but is scaled by "
                                  f"{(got.sum() / ref.sum()).item():.3g}: did you normalise it? FCN's "
                                  f"kernel is not normalised: for k = 2s its weights sum to s * s, so "
                                  f"that a transposed convolution with stride s keeps a constant "
                                  f"image constant.")
        if got.min() < -1e-9:
            return Verdict(False, f"bilinear_kernel({k}) has negative weights: the tent is "
                                  "1 - |i - centre| / factor, which is >= 0 on the kernel.")
        mid = (k - 1) // 2
        return Verdict(False, f"bilinear_kernel({k}) is symmetric but has the wrong values: "
                              f"middle row {[round(v, 3) for v in got[mid].tolist()]}, expected "
                              f"{[round(v, 3) for v in ref[mid].tolist()]}. "
                              f"Check the factor, (k + 1) // 2: each step from the centre lowers "
                              f"the tent by 1 / factor.")
    return Verdict(True, f"correct: your bilinear_kernel equals fcn_lesson's for k = "
                         f"{', '.join(map(str, KERNEL_SIZES))} (odd and even sizes).")


def check_bilinear_kernel(fn) -> None:
    """Print whether `fn(kernel_size)` computes FCN's bilinear kernel, or what is wrong."""
    _report(diagnose_bilinear_kernel(fn))


# --- the FCN heads -------------------------------------------------------------------------------

def checking_model(variant: str, seed: int = 0) -> FCN:
    """A classroom-sized FCN with random weights, every score layer and learnable upsampler
    non-zero and away from bilinear: each mistake then changes the output visibly."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    torch.manual_seed(seed)
    model = VARIANTS[variant](num_classes=6, width=0.125, batch_norm=True).eval()
    with torch.no_grad():
        for name in ("score_fr", "score_pool4", "score_pool3"):
            if hasattr(model, name):
                nn.init.normal_(getattr(model, name).weight, std=0.1)
                nn.init.normal_(getattr(model, name).bias, std=0.1)
        for name in ("upscore2", "upscore_pool4"):
            if hasattr(model, name):
                getattr(model, name).weight.add_(0.1 * torch.randn_like(getattr(model, name).weight))
    return model


def _inputs(model: FCN):
    """(x, features, the model's maps) for each size in CHECK_SIZES, one real image each."""
    device = next(model.parameters()).device
    for size in CHECK_SIZES:
        x = ShapesDataset(1, size, seed=7).tensors()[0].to(device)
        with torch.no_grad():
            features, maps = model.backbone(pad_to_multiple(x, 32)), model.forward_maps(x)
        yield x, features, maps


def _shift(out: torch.Tensor, full: torch.Tensor, max_shift: int = 32) -> tuple[int, int] | None:
    """(dy, dx) != (0, 0) with out[..., y, x] == full[..., y + dy, x + dx] wherever both exist."""
    height, width = out.shape[-2:]
    for dy in range(-max_shift, max_shift + 1):
        for dx in range(-max_shift, max_shift + 1):
            if (dy, dx) == (0, 0):
                continue
            y0, y1 = max(0, -dy), min(height, full.shape[-2] - dy)
            x0, x1 = max(0, -dx), min(width, full.shape[-1] - dx)
            if (y1 - y0) * 2 < height or (x1 - x0) * 2 < width:
                continue
            # A cheap 8 x 8 probe first: almost every shift is rejected there.
            probe = (0, 0, slice(y0, y0 + 8), slice(x0, x0 + 8))
            moved = (0, 0, slice(y0 + dy, y0 + dy + 8), slice(x0 + dx, x0 + dx + 8))
            if not _close(out[probe], full[moved]):
                continue
            if _close(out[..., y0:y1, x0:x1], full[..., y0 + dy:y1 + dy, x0 + dx:x1 + dx]):
                return dy, dx
    return None


def _explain_error(message: str, model: FCN) -> str | None:
    channels = model.backbone.channels
    names = {c: n for n, c in channels.items()}
    found = re.search(r"to have (\d+) channels, but got (\d+)", message)
    if found:
        want, got = int(found.group(1)), int(found.group(2))
        return (f"a layer expected {want} input channels ({names.get(want, '?')}'s features) but got "
                f"{got} ({names.get(got, 'not a backbone tap')}): the wrong map went into a score "
                f"layer. score_fr reads features['fc7'], score_pool4 reads features['pool4'], "
                f"score_pool3 reads features['pool3'].")
    found = re.search(r"size of tensor a \((\d+)\) must match the size of tensor b \((\d+)\)", message)
    if found:
        return (f"you added two maps of different sizes ({found.group(1)} vs {found.group(2)} cells): "
                "maps at different strides. Upsample the coarser scores 2x first (model.upscore2 "
                "for score_fr, model.upscore_pool4 for the pool4 fusion), then add.")
    return None


def _last_map(model: FCN, maps: dict) -> torch.Tensor:
    """The last score map before the final upsampling: score_fr, fuse_pool4 or fuse_pool3."""
    return maps[("score_fr", "fuse_pool4", "fuse_pool3")[model.skips]]


def _head_candidates(model: FCN, maps: dict, height: int, width: int) -> dict:
    """Outputs of typical mistakes, keyed by their explanation; each is compared with the student's."""
    crop = (..., slice(0, height), slice(0, width))
    up = model.upscore_final
    score_fr = maps["score_fr"]
    wrong = {}
    if model.skips == 0:
        wrong["you upsampled with F.interpolate(..., align_corners=True), which puts the score "
              "cells at other places than the net's upsampling (use model.upscore_final)"] = (
            F.interpolate(score_fr, scale_factor=32, mode="bilinear", align_corners=True))
        wrong["you upsampled with nearest-neighbour copies: blocky, not bilinear (use "
              "model.upscore_final)"] = F.interpolate(score_fr, scale_factor=32)
    if model.skips >= 1:
        pool4, up2 = maps["score_pool4"], maps["upscore2"]
        wrong["you added pool4's scores before upsampling, pooled down to stride 32, where they "
              "lose the detail they are there for: upsample score_fr 2x with model.upscore2, then "
              "add score_pool4 at stride 16"] = bilinear_upsample(score_fr + F.avg_pool2d(pool4, 2), 32)
        interpolated = F.interpolate(score_fr, scale_factor=2, mode="bilinear")
    if model.skips == 1:
        wrong["the pool4 skip is missing: this is the 2x-upsampled score_fr alone. Add "
              "model.score_pool4(features['pool4'])"] = up(up2)
        wrong["you averaged the two maps; FCN sums them (upscore2 + score_pool4)"] = up(0.5 * (up2 + pool4))
        wrong["you upsampled score_fr 2x with F.interpolate instead of the net's learned "
              "model.upscore2"] = up(interpolated + pool4)
    if model.skips == 2:
        pool3, up4 = maps["score_pool3"], model.upscore_pool4
        wrong["the pool3 skip is missing: add model.score_pool3(features['pool3']) to the "
              "2x-upsampled fuse_pool4"] = up(maps["upscore_pool4"])
        wrong["the pool4 skip is missing: fuse_pool4 = model.upscore2(score_fr) + "
              "model.score_pool4(features['pool4'])"] = up(up4(up2) + pool3)
        wrong["you averaged the maps; FCN sums them"] = up(0.5 * (up4(0.5 * (up2 + pool4)) + pool3))
        wrong["you upsampled fuse_pool4 2x with F.interpolate instead of the net's learned "
              "model.upscore_pool4"] = up(F.interpolate(maps["fuse_pool4"], scale_factor=2,
                                                        mode="bilinear") + pool3)
        wrong["you upsampled score_fr 2x with F.interpolate instead of the net's learned "
              "model.upscore2"] = up(up4(interpolated + pool4) + pool3)
    wrong["you resized the whole padded score map onto the image (F.interpolate(..., size=(height, "
          "width))): that stretches it, and predictions drift off the objects by up to the padding's "
          "width. Upsample by the stride, then crop"] = F.interpolate(
        _last_map(model, maps), size=(height, width), mode="bilinear")
    stride = model.output_stride
    wrong[f"you upsampled the last map with F.interpolate instead of model.upscore_final: they "
          f"agree inside the image but not within {stride // 2} px of its edges"] = F.interpolate(
        _last_map(model, maps), scale_factor=stride, mode="bilinear")
    return {why: out[crop] for why, out in wrong.items()}


def _diagnose_head(fn, model: FCN, what: str) -> Verdict:
    model.eval()
    for x, features, maps in _inputs(model):
        height, width = x.shape[-2:]
        got = _call(fn, (model, features, height, width))
        if isinstance(got, Verdict):
            if got.passed is False:
                explained = _explain_error(got.message, model)
                if explained:
                    return Verdict(False, f"{got.message}\n-> {explained}")
            return got
        ref = maps["out"]
        if not isinstance(got, torch.Tensor):
            return Verdict(False, f"your function returned a {type(got).__name__}; return the logits "
                                  f"tensor (N, {model.num_classes}, height, width)")
        got = got.detach()
        shape, want = tuple(got.shape), tuple(ref.shape)
        padded = tuple(pad_to_multiple(x, 32).shape[-2:])
        size = f"a {height} x {width} image"
        if shape == want[:1] + want[2:]:
            return Verdict(False, f"your output has shape {shape}: class indices? Return the class "
                                  f"scores (logits) of shape {want}, not their argmax.")
        if len(shape) == 4 and shape[-2:] == padded and shape[-2:] != want[-2:]:
            return Verdict(False, f"forgot the crop: for {size} your output is {shape[-2]} x "
                                  f"{shape[-1]}, the size of the input padded to a multiple of 32. "
                                  f"Crop it back with [..., :height, :width].")
        if len(shape) == 4 and shape[1] != want[1]:
            return Verdict(False, f"your output has {shape[1]} channels, expected one per class "
                                  f"({want[1]}): score the features with the 1 x 1 score layer(s) "
                                  "before upsampling.")
        if shape != want:
            return Verdict(False, f"wrong shape: for {size} your output is {shape}, expected {want} "
                                  f"({what}: stride-{model.output_stride} scores upsampled "
                                  f"{model.output_stride}x, then cropped to the image).")
        if _close(got, ref):
            continue
        with torch.no_grad():
            candidates = _head_candidates(model, maps, height, width)
        for why, out in candidates.items():
            if _close(got, out):
                return Verdict(False, f"not quite, for {size}: {why}.")
        with torch.no_grad():
            full = model.upscore_final(_last_map(model, maps))
        shift = _shift(got, full)
        if shift:
            dy, dx = shift
            return Verdict(False, f"misaligned by ({dy:+d}, {dx:+d}) pixels (rows, columns) for {size}: "
                                  f"your output pixel (y, x) holds the net's scores for pixel "
                                  f"(y {dy:+d}, x {dx:+d}). The padding is at the bottom and right, "
                                  "so crop from the top-left corner: [..., :height, :width], and "
                                  "use the upsampling layers as they are (their padding centres the "
                                  "cells).")
        diff = (got - ref).abs().max().item()
        return Verdict(False, f"right shape, wrong values for {size} (largest difference {diff:.3g}). "
                              f"Compare your steps with model.forward_maps(x): which map differs "
                              f"first?")
    sizes = " and ".join(f"{h} x {w}" for h, w in CHECK_SIZES)
    return Verdict(True, f"correct: your {what} gives exactly the model's logits on {sizes} images "
                         f"(the second is not a multiple of 32).")


def diagnose_fcn32s_head(fn, model: FCN | None = None) -> Verdict:
    model = checking_model("fcn32s") if model is None else model
    if model.skips != 0:
        raise ValueError(f"check the FCN-32s head against an FCN-32s, not a {model.variant}")
    return _diagnose_head(fn, model, "FCN-32s head")


def diagnose_fuse_pool4(fn, model: FCN | None = None) -> Verdict:
    model = checking_model("fcn16s") if model is None else model
    if model.skips != 1:
        raise ValueError(f"check the pool4 fusion against an FCN-16s, not a {model.variant}")
    return _diagnose_head(fn, model, "FCN-16s head")


def diagnose_fuse_pool3(fn, model: FCN | None = None) -> Verdict:
    model = checking_model("fcn8s") if model is None else model
    if model.skips != 2:
        raise ValueError(f"check the pool3 fusion against an FCN-8s, not a {model.variant}")
    return _diagnose_head(fn, model, "FCN-8s head")


def check_fcn32s_head(fn, model: FCN | None = None) -> None:
    """Print whether `fn(model, features, height, width)` computes FCN-32s's head: score_fr on
    fc7, the fixed 32x upsampling, the crop. `model` defaults to `checking_model('fcn32s')`."""
    _report(diagnose_fcn32s_head(fn, model))


def check_fuse_pool4(fn, model: FCN | None = None) -> None:
    """Print whether `fn(model, features, height, width)` computes FCN-16s's head (the pool4
    fusion, then 16x and the crop). `model` defaults to `checking_model('fcn16s')`."""
    _report(diagnose_fuse_pool4(fn, model))


def check_fuse_pool3(fn, model: FCN | None = None) -> None:
    """Print whether `fn(model, features, height, width)` computes FCN-8s's head (both fusions,
    then 8x and the crop). `model` defaults to `checking_model('fcn8s')`."""
    _report(diagnose_fuse_pool3(fn, model))
