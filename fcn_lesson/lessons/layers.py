"""Layer outputs (notebooks 3 and 6): every layer's activation for one image, recorded with forward
hooks; how the layer explorer colours a map; its view as a figure, and the static strip of the stages.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from fcn_lesson.core.models import FCN, SCORE_MAPS
from fcn_lesson.engine.device import eval_mode
from fcn_lesson.lessons.viz import to_numpy_image


def layer_modules(model: FCN) -> OrderedDict[str, nn.Module]:
    """Backbone layer name -> the module whose output is that layer's activation: the ReLU
    after conv{i}_{j} (and after fc6, fc7), the pooling layer for pool{i}."""
    relu_of = {"relu6": "fc6", "relu7": "fc7"}
    layers = OrderedDict()
    for name, module in model.backbone.named_modules():
        short = name.rsplit(".", 1)[-1]
        if short.startswith("relu"):
            layers[relu_of.get(short, "conv" + short.removeprefix("relu"))] = module
        elif short.startswith("pool"):
            layers[short] = module
    return layers


@torch.no_grad()
def capture_activations(model: FCN, image: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
    """Every layer's output for one image (3, H, W): name -> (C, h, w) float32 CPU tensor,
    backbone layers (see `layer_modules`) then the model's score maps."""
    if image.dim() != 3:
        raise ValueError(f"expected one image (3, H, W), got shape {tuple(image.shape)}")
    captured = OrderedDict()

    def keep(name):
        # clone: an in-place ReLU later on would otherwise overwrite what was recorded
        # (in a net without BatchNorm, relu6 works in place on fc6's output).
        def hook(_module, _inputs, output):
            captured[name] = output[0].detach().float().cpu().clone()
        return hook

    handles = [m.register_forward_hook(keep(name)) for name, m in layer_modules(model).items()]
    try:
        with eval_mode(model):
            maps = model.forward_maps(image[None].to(next(model.parameters()).device))
    finally:
        for handle in handles:
            handle.remove()
    for name in SCORE_MAPS:
        if name in maps:
            captured[name] = maps[name][0].float().cpu()
    return captured


def map_stride(name: str, activation: torch.Tensor, image_height: int) -> int:
    # Every map but `out` covers the image padded to a multiple of 32; `out` is cropped to it.
    if name == "out":
        return 1
    padded = -(-image_height // 32) * 32
    return padded // activation.shape[-2]


def channel_label(name: str, channel: int, channels: int, classes) -> str:
    if name in SCORE_MAPS:  # one channel per class
        return f"class {channel} ({classes[channel]})" if len(classes) == channels else f"class {channel}"
    return f"channel {channel} of {channels}"


def label_edges(mask: torch.Tensor) -> np.ndarray:
    """(H, W) bool, the objects' outlines: True where a pixel's right or lower neighbour has
    another label."""
    m = mask.numpy()
    edge = np.zeros(m.shape, dtype=bool)
    edge[:, :-1] |= m[:, 1:] != m[:, :-1]
    edge[:-1, :] |= m[1:, :] != m[:-1, :]
    return edge


class MapColours(NamedTuple):
    """How a map is drawn: colour map `cmap` from `low` to `high`, outlines in `outline` (RGB, 0-1)."""

    cmap: str
    low: float
    high: float
    outline: tuple[float, float, float]


def map_colours(name: str, values: np.ndarray) -> MapColours:
    """The colours of layer `name`'s map `values`: a class-score map on RdBu_r, symmetric about
    zero (white), with black outlines; any other map, read after a ReLU where zero means "off",
    on viridis from 0 (dark) to its maximum, with white outlines."""
    if name in SCORE_MAPS:
        bound = max(-float(values.min()), float(values.max()), 1e-12)
        return MapColours("RdBu_r", -bound, bound, (0.0, 0.0, 0.0))
    return MapColours("viridis", 0.0, max(float(values.max()), 1e-12), (1.0, 1.0, 1.0))


def plot_layer_view(image: torch.Tensor, mask: torch.Tensor, name: str, values: np.ndarray,
                    stride: int, *, image_title: str, map_title: str):
    """The layer explorer's view as a matplotlib figure: the image, and beside it layer `name`'s
    map `values`, each cell over the `stride` x `stride` pixels it covers, with the objects'
    outlines and a colour bar.

    A `Figure` outside pyplot, on an Agg canvas: nothing to close, and drawing it shows nothing
    by itself (the explorer turns it into the PNG that readers without a kernel see)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    height, width = image.shape[-2:]
    h, w = values.shape
    colours = map_colours(name, values)
    outline = np.zeros((height, width, 4))
    outline[label_edges(mask)] = (*colours.outline, 1.0)
    # constrained layout makes room for the colour bar's labels, however wide "{:.3g}" writes them
    fig = Figure(figsize=(9, 4), dpi=72, layout="constrained")
    FigureCanvasAgg(fig)
    image_ax, map_ax = fig.subplots(1, 2)
    image_ax.imshow(to_numpy_image(image))
    # cell (i, j) covers pixels [i s, (i + 1) s) x [j s, (j + 1) s)
    shown = map_ax.imshow(values, cmap=colours.cmap, vmin=colours.low, vmax=colours.high,
                          interpolation="nearest",
                          extent=(-0.5, w * stride - 0.5, h * stride - 0.5, -0.5))
    map_ax.imshow(outline, interpolation="nearest")
    for ax, title in ((image_ax, image_title),
                      (map_ax, f"{map_title}\n{h} x {w} cells of {stride} x {stride} pixels")):
        ax.set_xlim(-0.5, width - 0.5)
        ax.set_ylim(height - 0.5, -0.5)  # the padding beyond the image stays out of view
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("x (pixels)")
        ax.set_ylabel("y (pixels)")
    fig.colorbar(shown, ax=map_ax, fraction=0.046, pad=0.04,
                 format=FuncFormatter(lambda value, _: f"{value:.3g}"),
                 label="class score" if name in SCORE_MAPS else "activation")
    return fig


def plot_layer_strip(activations: Mapping[str, torch.Tensor], image: torch.Tensor,
                     layers=("conv1_2", "pool1", "pool2", "pool3", "pool4", "pool5", "fc7")):
    """One row: the image, then for each layer its most active channel (largest mean), each
    cell drawn over the pixels it covers: the maps get coarser stage by stage. Returns the Figure."""
    import matplotlib.pyplot as plt

    missing = [name for name in layers if name not in activations]
    if missing:
        raise ValueError(f"no activations for {missing}; available: {', '.join(activations)}")
    height, width = image.shape[-2:]
    # At most four panels a row: a notebook shows a figure about 10 inches wide, and one long
    # row of eight shrank the text to 5-6 pixels.
    columns = min(4, len(layers) + 1)
    rows = -(-(len(layers) + 1) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.5 * columns, 2.7 * rows + 0.4),
                             squeeze=False, layout="constrained")
    axes = axes.ravel()
    for ax in axes[len(layers) + 1:]:
        ax.set_visible(False)
    axes[0].imshow(to_numpy_image(image))
    axes[0].set_title("image", fontsize=10)
    for ax, name in zip(axes[1:], layers, strict=False):
        act = activations[name]
        channel = int(act.mean(dim=(1, 2)).argmax())
        stride = map_stride(name, act, height)
        h, w = act.shape[-2:]
        ax.imshow(act[channel].numpy(), cmap="viridis", interpolation="nearest",
                  extent=(-0.5, w * stride - 0.5, h * stride - 0.5, -0.5))
        ax.set_xlim(-0.5, width - 0.5)
        ax.set_ylim(height - 0.5, -0.5)
        ax.set_title(f"{name} ch {channel}\n{h}x{w}, stride {stride}", fontsize=10)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("The most active channel of each stage, each cell over the pixels it covers",
                 fontsize=11)
    return fig
