"""Explain one pixel: split an FCN's prediction into the contributions of its skip streams.

Everything after the backbone is linear: the 1x1 score layers end the non-linear part, then
come the learned 2x transposed convolutions (`upscore2`, `upscore_pool4`), the sums, the final
upsampler (fixed bilinear, or learned) and the crop, none of them with a bias. So the logits of
output pixel (row, col) are exactly a sum over the score maps' cells,

    logit[c] = sum over streams s, cells (i, j), classes c' of  W_s[c, c', i, j] * score_s[c', i, j],

with `score_fr` at stride 32, `score_pool4` at stride 16 and `score_pool3` at stride 8 (the
score layers' biases live inside the score maps). `W_s` is what the upsamplers make of a cell
on its way to the pixel: a (classes x classes) matrix, since the learned 2x layers may mix
classes. It is non-zero only for the few cells near the pixel, the *feeding cells*.

`explain_pixel` computes `W_s` from the upsamplers' own kernels: the final upsampler's two taps
per axis, then backwards through each learned 2x layer with its adjoint (a strided
convolution with the same kernel), on maps as small as the score maps. The contributions are
`W_s` applied to the cached score maps, in float64: the backbone runs once per image, and a
new pixel costs a few small convolutions. The tests check the sum against `model(image)` and
each stream against `model.fuse` run on that stream alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fcn_lesson.core.geometry import stage_table
from fcn_lesson.core.models import FCN
from fcn_lesson.core.upsample import BilinearUpsample
from fcn_lesson.datasets.shapes import CLASSES, PALETTE
from fcn_lesson.engine.device import eval_mode
from fcn_lesson.lessons.viz import colorize, to_numpy_image

__all__ = ["STREAMS", "FeedingCells", "PixelExplanation", "deciding_stream", "explain_from_maps",
           "explain_pixel", "explain_sentence", "plot_pixel_explanation", "score_maps",
           "top_classes"]

# The streams in the order the net fuses them, with their strides and the layer they score.
STREAMS = ("score_fr", "score_pool4", "score_pool3")
STRIDES = {"score_fr": 32, "score_pool4": 16, "score_pool3": 8}
SOURCES = {"score_fr": "fc7", "score_pool4": "pool4", "score_pool3": "pool3"}
STREAM_COLOURS = {"score_fr": "tab:blue", "score_pool4": "tab:orange", "score_pool3": "tab:green"}

Box = tuple[float, float, float, float]  # (top, left, bottom, right), pixel-edge coordinates


@dataclass(frozen=True)
class FeedingCells:
    """The cells of one stream's score map that reach the pixel, and how.

    `cells[k]` is (row, col) in the score map (which covers the image padded to a multiple of
    32: cells below or right of the image see replicated border pixels); `weights[k]` is the
    (classes_out, classes_in) matrix the upsamplers apply to that cell's scores `values[k]` on
    the way to the pixel; `boxes[k]` is the cell's receptive field in image coordinates.
    """

    stream: str
    stride: int
    cells: torch.Tensor  # (K, 2) long
    weights: torch.Tensor  # (K, C, C)
    values: torch.Tensor  # (K, C)
    boxes: tuple[Box, ...]

    @property
    def contributions(self) -> torch.Tensor:
        """(K, C): what each cell adds to each class's logit at the pixel."""
        return torch.einsum("koi,ki->ko", self.weights, self.values)

    def cell_boxes(self) -> list[Box]:
        """Each cell's own square of stride x stride pixels (where it sits, not what it sees)."""
        s = self.stride
        return [(r * s, c * s, (r + 1) * s, (c + 1) * s) for r, c in self.cells.tolist()]


@dataclass(frozen=True)
class PixelExplanation:
    """`explain_pixel`'s answer for output pixel (row, col) of one image."""

    variant: str
    row: int
    col: int
    image_size: tuple[int, int]
    logits: torch.Tensor  # (C,) the sum of the contributions: the model's output at the pixel
    contributions: dict[str, torch.Tensor]  # stream -> (C,); they sum to `logits`
    feeding: dict[str, FeedingCells]  # stream -> its feeding cells and their weights
    receptive_fields: dict[str, Box]  # stream -> union of its feeding cells' receptive fields;
    # "pixel" -> union of all of them: every image pixel that can change this output pixel

    @property
    def streams(self) -> tuple[str, ...]:
        return tuple(self.contributions)

    @property
    def prediction(self) -> int:
        return int(self.logits.argmax())


def _check_model(model) -> FCN:
    if not isinstance(model, FCN):
        raise TypeError(f"expected an FCN32s, FCN16s or FCN8s, got {type(model).__name__}")
    return model


def _batch(image: torch.Tensor) -> torch.Tensor:
    if isinstance(image, torch.Tensor) and image.dim() == 3:
        image = image[None]
    if not isinstance(image, torch.Tensor) or image.dim() != 4 or image.shape[0] != 1:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"expected one image (3, H, W) or (1, 3, H, W), got {shape}")
    return image


@torch.no_grad()
def score_maps(model: FCN, image: torch.Tensor) -> dict[str, torch.Tensor]:
    """The backbone's part, run once: the streams' score maps (1, C, h, w) of one image, on the
    model's device. Everything `explain_from_maps` needs besides the image size."""
    model = _check_model(model)
    image = _batch(image).to(next(model.parameters()).device)
    with eval_mode(model):
        maps = model.forward_maps(image)
    return {s: maps[s] for s in STREAMS[:model.skips + 1]}


def _union(boxes) -> Box:
    tops, lefts, bottoms, rights = zip(*boxes, strict=True)
    return min(tops), min(lefts), max(bottoms), max(rights)


def _back(up: BilinearUpsample, grad: torch.Tensor) -> torch.Tensor:
    """The adjoint of the transposed convolution `up`: maps a (B, C, H, W) weight on its
    output to the (B, C, H / factor, W / factor) weight on its input. A transposed
    convolution's adjoint is the convolution with the same kernel, stride and padding."""
    return F.conv2d(grad, up.weight.detach().cpu().double(), stride=up.factor,
                    padding=up.factor // 2, groups=1 if up.learnable else up.channels)


def _pixel_weights(model: FCN, sizes: dict[str, tuple[int, int]], row: int,
                   col: int) -> dict[str, torch.Tensor]:
    """stream -> (C_out, C_in, h, w) float64: d logit[c_out] at (row, col) / d score[c_in, i, j].

    The final upsampler: output pixel y (in the padded image; the crop keeps the top-left
    corner, so coordinates do not move) gets the kernel tap y + p - i f from fused cell i, for
    the two cells with 0 <= y + p - i f < 2f. The fixed one is per class (a diagonal matrix); a
    learned one may mix classes. The learned 2x layers are then followed backwards with their
    adjoint, on maps as small as the score maps.
    """
    up = model.upscore_final
    f, pad = up.factor, up.factor // 2
    kernel = up.weight.detach().cpu().double()  # (C in, C out, 2f, 2f); fixed: (C, 1, 2f, 2f)
    if not up.learnable:
        kernel = torch.diag_embed(kernel[:, 0].permute(1, 2, 0)).permute(2, 3, 0, 1)
    finest = STREAMS[model.skips]
    h, w = sizes[finest]
    classes = model.num_classes
    grad = torch.zeros(classes, classes, h, w, dtype=torch.float64)
    y, x = row + pad, col + pad
    for i in (y // f - 1, y // f):
        for j in (x // f - 1, x // f):
            if 0 <= i < h and 0 <= j < w:
                grad[:, :, i, j] = kernel[:, :, y - i * f, x - j * f].T
    weights = {finest: grad}
    # Backwards through the fusion: a sum passes its weight to both terms unchanged.
    for up_name, coarser in (("upscore_pool4", "score_pool4"), ("upscore2", "score_fr"))[2 - model.skips:]:
        grad = _back(getattr(model, up_name), grad)
        weights[coarser] = grad
    return weights


def _side(box: Box) -> str:
    return f"{box[3] - box[1]:g}"


def explain_from_maps(model: FCN, maps: dict[str, torch.Tensor], height: int, width: int,
                      row: int, col: int, stages: dict | None = None) -> PixelExplanation:
    """`explain_pixel` from cached `score_maps(model, image)` of an (height, width) image:
    no backbone, a few milliseconds (what the explorer runs on a slider move). `stages`:
    `stage_table(model, height, width)` by name, to reuse it too."""
    model = _check_model(model)
    streams = STREAMS[:model.skips + 1]
    if set(maps) < set(streams):
        raise ValueError(f"a {model.variant} needs the score maps {streams}, got {tuple(maps)}; "
                         "use score_maps(model, image)")
    for name, value in (("row", row), ("col", col)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {value!r}")
    if not (0 <= row < height and 0 <= col < width):
        raise ValueError(f"pixel ({row}, {col}) is outside the {height}x{width} image")
    if stages is None:
        stages = {stage.name: stage for stage in stage_table(model, height, width)}

    weights = _pixel_weights(model, {s: tuple(maps[s].shape[-2:]) for s in streams}, row, col)
    feeding, fields, contributions = {}, {}, {}
    for s in streams:
        weight = weights[s]  # (C_out, C_in, h, w)
        cells = (weight.abs().amax(dim=(0, 1)) > 0).nonzero()  # structurally non-zero cells
        boxes = tuple(stages[s].box(r, c) for r, c in cells.tolist())
        feeding[s] = FeedingCells(
            stream=s, stride=STRIDES[s], cells=cells,
            weights=weight[:, :, cells[:, 0], cells[:, 1]].permute(2, 0, 1),
            values=maps[s][0].detach().cpu().double()[:, cells[:, 0], cells[:, 1]].T, boxes=boxes)
        contributions[s] = feeding[s].contributions.sum(0)
        fields[s] = _union(boxes)
    fields["pixel"] = _union(fields.values())
    return PixelExplanation(
        variant=model.variant, row=row, col=col, image_size=(height, width),
        logits=sum(contributions.values()), contributions=contributions, feeding=feeding,
        receptive_fields=fields)


def explain_pixel(model: FCN, image: torch.Tensor, row: int, col: int) -> PixelExplanation:
    """Why does `model` predict what it does at output pixel (row, col) of `image`?

    `image` is (3, H, W) or (1, 3, H, W), any H, W. Returns a `PixelExplanation`:
    `.contributions` maps each stream the model has (`score_fr`; + `score_pool4` for FCN-16s;
    + `score_pool3` for FCN-8s) to a (C,) tensor, and they sum to
    `model(image)[0, :, row, col]`; `.feeding` gives each stream's feeding cells with their
    weights through the upsamplers; `.receptive_fields` the image pixels each stream sees.
    """
    image = _batch(image)
    height, width = image.shape[-2:]
    return explain_from_maps(model, score_maps(model, image), height, width, row, col)


def top_classes(explanation: PixelExplanation, k: int = 3) -> list[int]:
    """The k classes with the highest logits at the pixel, best first."""
    return explanation.logits.topk(min(k, len(explanation.logits))).indices.tolist()


def deciding_stream(explanation: PixelExplanation) -> tuple[str, int] | None:
    """(stream, class) if switching off one skip stream alone would change the prediction, to
    that class (the finest such stream); None if no single skip decides the pixel."""
    total = explanation.logits
    for s in reversed(explanation.streams[1:]):
        without = int((total - explanation.contributions[s]).argmax())
        if without != explanation.prediction:
            return s, without
    return None


def explain_sentence(explanation: PixelExplanation, classes=CLASSES) -> str:
    """The prediction at the pixel in words, naming the stream that decides it, e.g.
    "ring: pool3 adds +4.1 to ring and -0.3 to disk, enough to beat disk"."""
    e, contrib = explanation, explanation.contributions
    p = e.prediction
    name = classes[p]
    decided = deciding_stream(e)
    if decided is not None:
        s, q = decided
        without = e.logits - contrib[s]
        return (f"{name}: {SOURCES[s]} adds {float(contrib[s][p]):+.1f} to {name} and "
                f"{float(contrib[s][q]):+.1f} to {classes[q]}, enough to beat {classes[q]} "
                f"(without {SOURCES[s]}, {classes[q]} would win by "
                f"{float(without[q] - without[p]):.1f})")
    runner = top_classes(e, 2)[-1]
    margin = float(e.logits[p] - e.logits[runner])
    if len(e.streams) == 1:
        return (f"{name}, ahead of {classes[runner]} by {margin:.1f}: an FCN-32s has one "
                "stream, fc7's scores at stride 32")
    coarse = int(contrib["score_fr"].argmax())
    skips = ", ".join(f"{SOURCES[s]} {float(contrib[s][p]):+.1f}" for s in e.streams[1:])
    if coarse == p:
        return (f"{name}, ahead of {classes[runner]} by {margin:.1f}: fc7 alone already picks "
                f"{name}; the skips add {skips}")
    return (f"{name}, ahead of {classes[runner]} by {margin:.1f}: fc7 alone picks "
            f"{classes[coarse]}, and only the skips together ({skips}) turn it to {name}")


def plot_pixel_explanation(explanation: PixelExplanation, image: torch.Tensor, classes=CLASSES,
                           palette=PALETTE, prediction: torch.Tensor | None = None, k: int = 3,
                           figure=None):
    """Draw a `PixelExplanation`: the image with the pixel and each stream's receptive field,
    the feeding cells of each stream over the image (shaded by what each adds to the predicted
    class), and a bar chart of the streams' contributions to the top k classes, titled with
    `explain_sentence`. `prediction` (H, W), if given, is drawn beside the image.

    Draws into `figure` when given (an empty one, e.g. a `matplotlib.figure.Figure` to draw
    without pyplot; it is resized to fit the panels), else into a new pyplot figure. Returns it.
    `fcn_lesson.lessons.explain_panels` draws the same panels fast enough for a slider.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    e = explanation
    height, width = e.image_size
    picture = to_numpy_image(image)
    if picture.shape[:2] != (height, width):
        raise ValueError(f"the explanation is for a {height}x{width} image, got "
                         f"{picture.shape[0]}x{picture.shape[1]}")
    streams = e.streams
    panels = 2 + len(streams) + (prediction is not None)
    ratios = [1] * (panels - 1) + [1.3]
    size = (2.7 * panels + 0.8, 3.7)
    if figure is None:
        figure = plt.figure(figsize=size, layout="constrained")
    else:
        figure.set_size_inches(size)
        figure.set_layout_engine("constrained")
    axes = figure.subplots(1, panels, width_ratios=ratios)
    p = e.prediction

    def pixel_image(ax, title, ticks=False):
        ax.imshow(picture, extent=(0, width, height, 0), interpolation="nearest")
        ax.plot(e.col + 0.5, e.row + 0.5, "+", color="white", ms=12, mew=3)
        ax.plot(e.col + 0.5, e.row + 0.5, "+", color="black", ms=10, mew=1.5)
        ax.set_xlim(0, width)
        ax.set_ylim(height, 0)
        ax.set_title(title, fontsize=10)
        if ticks:
            ax.tick_params(labelsize=8)
        else:
            # Pixel coordinates on the first panel only: the others are zoomed or share its
            # coordinates, and their ticks would only crowd the row.
            ax.set_xticks([])
            ax.set_yticks([])

    ax = axes[0]
    pixel_image(ax, f"pixel ({e.row}, {e.col}):\nreceptive fields", ticks=True)
    for s in streams:
        top, left, bottom, right = e.receptive_fields[s]
        ax.add_patch(Rectangle((left, top), right - left, bottom - top, fill=False, lw=2,
                               color=STREAM_COLOURS[s]))
    column = 1
    if prediction is not None:
        axes[column].imshow(colorize(prediction, palette), extent=(0, width, height, 0),
                            interpolation="nearest")
        axes[column].plot(e.col + 0.5, e.row + 0.5, "+", color="black", ms=10, mew=1.5)
        axes[column].set_title(f"{e.variant} predicts: {classes[p]}", fontsize=10)
        axes[column].set_xticks([])
        axes[column].set_yticks([])
        column += 1
    cmap = plt.get_cmap("RdBu_r")
    for ax, s in zip(axes[column:column + len(streams)], streams, strict=True):
        cells = e.feeding[s]
        share = cells.contributions[:, p]
        limit = max(float(share.abs().max()), 1e-6)
        pixel_image(ax, f"{SOURCES[s]} cells (stride {cells.stride})\nadd "
                        f"{float(e.contributions[s][p]):+.1f} to {classes[p]}")
        # Zoomed to the feeding cells and one cell around them, so each cell's label fits.
        top, left, bottom, right = _union(cells.cell_boxes())
        margin = cells.stride / 2
        ax.set_xlim(max(left - margin, 0), min(right + margin, max(right, width)))
        ax.set_ylim(min(bottom + margin, max(bottom, height)), max(top - margin, 0))
        for (top, left, bottom, right), v in zip(cells.cell_boxes(), share.tolist(), strict=True):
            ax.add_patch(Rectangle((left, top), right - left, bottom - top, alpha=0.55,
                                   color=cmap(0.5 + 0.5 * v / limit)))
            ax.add_patch(Rectangle((left, top), right - left, bottom - top, fill=False, lw=1,
                                   color=STREAM_COLOURS[s]))
            ax.text((left + right) / 2, (top + bottom) / 2, f"{v:+.1f}", ha="center",
                    va="center", fontsize=7.5, clip_on=True,
                    color="white" if abs(v) > 0.6 * limit else "black")
    ax = axes[-1]
    shown = top_classes(e, k)
    bar = 0.8 / len(streams)
    for n, s in enumerate(streams):
        ax.bar([i + (n - (len(streams) - 1) / 2) * bar for i in range(len(shown))],
               [float(e.contributions[s][c]) for c in shown], bar, color=STREAM_COLOURS[s],
               label=f"{SOURCES[s]}, field {_side(e.receptive_fields[s])} px")
    ax.plot(range(len(shown)), [float(e.logits[c]) for c in shown], "kD", ms=6, label="total")
    ax.axhline(0, color="0.5", lw=0.8)
    ax.set_xticks(range(len(shown)), [classes[c] for c in shown], fontsize=9)
    ax.set_title("what each stream adds", fontsize=10)
    ax.set_ylabel("logit", fontsize=9)
    ax.tick_params(labelsize=8)
    # Headroom above the bars for the legend, so that it hides none of them.
    low, high = ax.get_ylim()
    ax.set_ylim(low, high + 0.7 * (high - low))
    ax.legend(fontsize=7, loc="upper left", handlelength=1.2)
    figure.suptitle(explain_sentence(e, classes), fontsize=11)
    return figure
