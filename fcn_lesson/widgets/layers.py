"""The layer-output explorer: pick an image, a layer and a channel, see its activation map.

One forward pass per (model, image) records every layer with forward hooks and keeps the
maps (a few MB for a classroom model); moving the layer or channel slider then only
redraws. Each map is drawn beside the image at its true geometry: a cell of a stride-s map
covers the s x s pixels it was computed from (the input is padded to a multiple of 32, so
the cells of every stage tile the padded image exactly; see models.py).

Both pictures are arrays coloured with numpy and shown as small PNGs (a move takes a few
milliseconds); titles, captions and the colour scale are HTML, sent with the pictures as one
value (`fcn_lesson.widgets.view`). Redrawing a matplotlib figure took several times longer,
mostly for its text: matplotlib draws only the static picture.

Layers, in the order the network computes them:
  conv1_1 ... conv5_3  a convolution's output after its BatchNorm (if any) and ReLU,
                       i.e. what the next layer reads;
  pool1 ... pool5      the max-pooled maps, stride 2 ... 32;
  fc6, fc7             the convolutionalized classifier, after its ReLU (stride 32);
  score_fr ... out     the named score maps of `FCN.forward_maps`, one channel per class.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import NamedTuple

import ipywidgets as widgets
import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure

from fcn_lesson.core.models import FCN
from fcn_lesson.datasets.shapes import CLASSES
from fcn_lesson.lessons.layers import (
    MapColours,
    capture_activations,
    channel_label,
    label_edges,
    map_colours,
    map_stride,
    plot_layer_view,
)
from fcn_lesson.lessons.legends import colour_bar
from fcn_lesson.lessons.viz import to_numpy_image
from fcn_lesson.widgets.base import Explorer, check_models_and_dataset
from fcn_lesson.widgets.view import encode_png, figure_png, panel_html, row_html, view_html

__all__ = ["LayerExplorer"]

# Each picture is enlarged by a whole factor (pixels stay sharp squares) to at most this many
# screen pixels a side: the lesson's 128-pixel images are shown 2 x 2 screen pixels a pixel.
PANEL_PX = 256


def colour_scale_html(colours: MapColours) -> str:
    """The colour scale as HTML: the gradient between the values at both ends."""
    zero = " (white: 0)" if colours.cmap == "RdBu_r" else " (0: off)"
    return colour_bar(colours.cmap, colours.low, colours.high, zero)


def map_rgb(values: np.ndarray, stride: int, colours: MapColours, edges: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8, the map as the explorer shows it: each cell of `values` in its colour,
    repeated over the `stride` x `stride` pixels it covers and cropped to the image (the
    padding beyond it stays out of view), with the objects' outlines (`edges`, (H, W)) on top."""
    scaled = (values - colours.low) / (colours.high - colours.low)
    cells = colormaps[colours.cmap](np.clip(scaled, 0.0, 1.0), bytes=True)[..., :3]
    height, width = edges.shape
    rgb = np.repeat(np.repeat(cells, stride, axis=0), stride, axis=1)[:height, :width]
    rgb[edges] = np.multiply(colours.outline, 255)
    return rgb


class _Capture(NamedTuple):
    """What the explorer keeps of one (model, image): every layer's activation, and what the
    pictures need of the image (its PNG, the objects' outlines)."""

    image: torch.Tensor
    mask: torch.Tensor
    activations: OrderedDict[str, torch.Tensor]
    image_png: bytes
    edges: np.ndarray
    zoom: int


class LayerExplorer(Explorer):
    """Sliders for the image, layer and channel (and a model menu when given several
    models); the image and, beside it, the chosen channel's activation map.

    `update()` reads the controls, puts the titles, captions and the two pictures in `view`
    (one HTML widget) and returns the map shown, (h, w) numpy (kept as `.result`); moving a control calls it.
    Activations are captured once per (model, image) and kept for the `cache_size` most recent
    ones; when every (model, image) pair fits, all are captured up front. Display with
    `display(explorer)`; `static_figure()` draws the current view with matplotlib.
    """

    what = "layer explorer"

    def __init__(self, models: FCN | Mapping[str, FCN], dataset, *, layer: str = "conv1_1",
                 channel: int = 0, image: int = 0, cache_size: int = 32):
        models = check_models_and_dataset(models, dataset, image)
        if cache_size < 1:
            raise ValueError(f"cache_size must be >= 1, got {cache_size}")
        self.models, self.dataset, self.cache_size = dict(models), dataset, cache_size
        self.classes = getattr(dataset, "classes", CLASSES)
        self._cache: OrderedDict[tuple[str, int], _Capture] = OrderedDict()
        first = next(iter(self.models))
        activations = self.activations(first, image)
        if len(self.models) * len(dataset) <= cache_size:
            # A classroom's handful of images (about 3 MB each per model): computed now, so that
            # no image or model move waits for a forward pass.
            for name in self.models:
                for index in range(len(dataset)):
                    self._cached(name, index)
        if layer not in activations:
            raise ValueError(f"unknown layer {layer!r}; choose one of {', '.join(activations)}")
        channels = activations[layer].shape[0]
        if not 0 <= channel < channels:
            raise ValueError(f"{layer} has channels 0 to {channels - 1}, got channel={channel}")
        self.model = widgets.Dropdown(options=list(self.models), value=first, description="model",
                                      layout=widgets.Layout(display="" if len(models) > 1 else "none"))
        self.image = widgets.IntSlider(image, min=0, max=len(dataset) - 1, description="image")
        self.layer = widgets.Dropdown(options=list(activations), value=layer, description="layer")
        self.channel = widgets.IntSlider(channel, min=0, max=channels - 1, description="channel")
        self.view = widgets.HTML()
        self._start((self.model, self.image, self.layer, self.channel))

    def activations(self, model: str, index: int) -> OrderedDict[str, torch.Tensor]:
        """Every layer's activation for image `index` under `model`, computed once and cached."""
        return self._cached(model, index).activations

    def _cached(self, model: str, index: int) -> _Capture:
        # the dataset may render an item afresh on every access: it is read once, here
        key = (model, index)
        if key in self._cache:
            self._cache.move_to_end(key)
        else:
            image, mask = self.dataset[index]
            zoom = max(1, PANEL_PX // max(image.shape[-2:]))
            self._cache[key] = _Capture(image, mask, capture_activations(self.models[model], image),
                                        encode_png(to_numpy_image(image), zoom), label_edges(mask),
                                        zoom)
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return self._cache[key]

    def _titles(self) -> tuple[str, str]:
        """The titles of the image and of the map, for the controls' current values."""
        name, channel = self.layer.value, self.channel.value
        channels = self.activations(self.model.value, self.image.value)[name].shape[0]
        return f"image #{self.image.value}", f"{name}: {channel_label(name, channel, channels, self.classes)}"

    def update(self) -> np.ndarray:
        model, index = self.model.value, self.image.value
        capture = self._cached(model, index)
        activations = capture.activations
        names = list(activations)
        # A new model may lack the current layer, a new layer have fewer channels: adjusting
        # the controls fires their observers, which `quietly` keeps out until this update ends.
        with self.quietly():
            if list(self.layer.options) != names:
                keep = self.layer.value if self.layer.value in names else "score_fr"
                self.layer.options = names
                self.layer.value = keep
            channels = activations[self.layer.value].shape[0]
            self.channel.max = channels - 1
        name, channel = self.layer.value, self.channel.value
        values = activations[name][channel].numpy()
        height, width = capture.image.shape[-2:]
        stride = map_stride(name, activations[name], height)
        colours = map_colours(name, values)
        h, w = values.shape
        readout = (
            f"<b>{name}</b> ({model}): {channels} channels of {h} x {w} cells, stride {stride} "
            f"(one cell per {stride} x {stride} pixels); this channel ranges "
            f"{values.min():.3g} to {values.max():.3g}.")
        image_title, map_title = self._titles()
        self.view.value = view_html(readout, row_html(
            panel_html(f"<b>{image_title}</b>", capture.image_png, "image",
                       below=f"{width} x {height} pixels; x to the right, y down"),
            panel_html(f"<b>{map_title}</b>",
                       encode_png(map_rgb(values, stride, colours, capture.edges), capture.zoom),
                       "activation",
                       below=(f"one cell = {stride} x {stride} pixels; outlines: the objects' "
                              f"edges<br>{colour_scale_html(colours)}"))))
        return values

    def static_figure(self) -> Figure:
        """The current view as a matplotlib figure, with axes and a colour bar."""
        capture = self._cached(self.model.value, self.image.value)
        name = self.layer.value
        image_title, map_title = self._titles()
        return plot_layer_view(capture.image, capture.mask, name, self.result,
                               map_stride(name, capture.activations[name], capture.image.shape[-2]),
                               image_title=image_title, map_title=map_title)

    def static_png(self) -> bytes:
        """What a reader without a kernel sees in place of the widget: `static_figure()`."""
        return figure_png(self.static_figure())

    def widget(self) -> widgets.Widget:
        controls = widgets.HBox([widgets.VBox([self.model, self.image]),
                                 widgets.VBox([self.layer, self.channel])])
        return widgets.VBox([controls, self.view])
