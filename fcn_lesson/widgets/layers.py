"""The layer-output explorer: pick an image, a layer and a channel, see its activation map.

One forward pass per (model, image) records every layer with forward hooks and keeps the
maps (a few MB for a classroom model); moving the layer or channel slider then only
redraws. Each map is drawn over the image at its true geometry: a cell of a stride-s map
covers the s x s pixels it was computed from (the input is padded to a multiple of 32, so
the cells of every stage tile the padded image exactly; see models.py).

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

import ipywidgets as widgets
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from fcn_lesson.core.models import FCN, SCORE_MAPS
from fcn_lesson.datasets.shapes import CLASSES
from fcn_lesson.lessons.layers import capture_activations, channel_label, label_edges, map_stride
from fcn_lesson.lessons.viz import to_numpy_image
from fcn_lesson.widgets.base import Explorer, check_models_and_dataset
from fcn_lesson.widgets.png import encode_png, show_png

__all__ = ["LayerExplorer"]

_WIDEST_TICK = "-8.88e-08"  # the widest label "{:.3g}" writes for a colour-bar tick


class _Artists:
    """Image on the left; the activation over the image on the right, with the objects'
    outlines and a colour bar. Built once; the `set_*` methods only change data, extent and
    labels, and `draw` repaints only what a new layer or channel changes (blitting)."""

    def __init__(self, figure: Figure):
        self.figure = figure
        self.image_ax, self.map_ax = figure.subplots(1, 2)
        self.picture = self.image_ax.imshow(np.zeros((1, 1, 3)), interpolation="nearest")
        self.map = self.map_ax.imshow(np.zeros((1, 1)), interpolation="nearest", cmap="viridis")
        self.outline = self.map_ax.imshow(np.zeros((1, 1, 4)), interpolation="nearest")
        self.colorbar = figure.colorbar(self.map, ax=self.map_ax, fraction=0.046, pad=0.04)
        self.colorbar.formatter = FuncFormatter(lambda value, _: f"{value:.3g}")
        for ax in (self.image_ax, self.map_ax):
            ax.set_xlabel("x (pixels)")
            ax.set_ylabel("y (pixels)")
        # Drawn on every update, over a cached picture of everything else: tick labels are
        # most of Agg's drawing time, and only the colour bar's change (with the channel). The
        # image and the titles are drawn each time too, so a new image or model is a blit as
        # well; only a new image size redraws the axes.
        self._titles = (self.image_ax.title, self.map_ax.title)
        self._dynamic = [self.picture, *self._titles, self.map, self.outline,
                         *self.map_ax.spines.values(), self.colorbar.ax]
        self._background = None
        self._size = None

    def draw(self) -> np.ndarray:
        """The figure as an RGB array, repainting only the dynamic artists when the static
        ones (image, axes, labels) are unchanged since the last call."""
        canvas = self.figure.canvas
        if self._background is None:
            # Titles are emptied, not hidden: matplotlib places an axes title while drawing
            # the axes, and a hidden one is moved off the figure (it vanished on image changes).
            texts = [title.get_text() for title in self._titles]
            for title in self._titles:
                title.set_text("")
            for artist in self._dynamic:
                if artist not in self._titles:
                    artist.set_visible(False)
            canvas.draw()
            self._background = canvas.copy_from_bbox(self.figure.bbox)
            for artist in self._dynamic:
                artist.set_visible(True)
            for title, text in zip(self._titles, texts, strict=True):
                title.set_text(text)
        canvas.restore_region(self._background)
        for artist in self._dynamic:
            self.figure.draw_artist(artist)
        return np.asarray(canvas.buffer_rgba())[..., :3]

    def relayout(self) -> None:
        self.figure.tight_layout()
        # The colour bar's tick labels change with every channel, after this layout: leave room
        # for the widest label its formatter writes, or wider ones are clipped ("10.(").
        renderer = self.figure.canvas.get_renderer()
        size = self.colorbar.ax.yaxis.get_ticklabels()[0].get_fontsize()
        probe = self.figure.text(0, 0, _WIDEST_TICK, fontsize=size)
        need = probe.get_window_extent(renderer).width + 12  # + tick length and pad
        probe.remove()
        spare = self.figure.bbox.x1 - self.colorbar.ax.get_window_extent(renderer).x1
        if spare < need:
            right = self.figure.subplotpars.right - (need - spare) / self.figure.bbox.width
            self.figure.subplots_adjust(right=right)
        self._background = None

    def set_image(self, image: torch.Tensor, mask: torch.Tensor, title: str) -> None:
        height, width = image.shape[-2:]
        self.picture.set_data(to_numpy_image(image))
        self.picture.set_extent((-0.5, width - 0.5, height - 0.5, -0.5))
        # white on viridis (dark at zero), black on the diverging map (white at zero)
        self._outlines = {False: label_edges(mask, (1, 1, 1)), True: label_edges(mask, (0, 0, 0))}
        self.outline.set_extent((-0.5, width - 0.5, height - 0.5, -0.5))
        self.image_ax.set_title(title, fontsize=10)
        if self._size != (height, width):  # new limits: the axes and their ticks are redrawn
            for ax in (self.image_ax, self.map_ax):
                ax.set_xlim(-0.5, width - 0.5)
                ax.set_ylim(height - 0.5, -0.5)  # the padding beyond the image stays out of view
            self._size = (height, width)
            self._background = None

    def set_map(self, values: np.ndarray, stride: int, signed: bool, title: str) -> None:
        h, w = values.shape
        self.map.set_data(values)
        self.outline.set_data(self._outlines[signed])
        # cell (i, j) covers pixels [i s, (i + 1) s) x [j s, (j + 1) s)
        self.map.set_extent((-0.5, w * stride - 0.5, h * stride - 0.5, -0.5))
        low, high = float(values.min()), float(values.max())
        if signed:  # class scores: white at zero
            bound = max(-low, high, 1e-12)
            self.map.set_cmap("RdBu_r")
            self.map.set_clim(-bound, bound)
        else:
            self.map.set_cmap("viridis")
            self.map.set_clim(0, max(high, 1e-12))  # after a ReLU zero means "off"
        self.map_ax.set_title(title, fontsize=10)


class LayerExplorer(Explorer):
    """Sliders for the image, layer and channel (and a model menu when given several
    models); the chosen channel's activation is drawn over the image.

    `update()` reads the controls, redraws the figure's artists and returns the map shown,
    (h, w) numpy (kept as `.result`); moving a control calls it and then `render()`, which puts
    the figure into the `picture` widget. Activations are captured once per (model, image) and
    kept for the `cache_size` most recent ones; when every (model, image) pair fits, all are
    captured up front. Display with `display(explorer)`.
    """

    what = "layer explorer"

    def __init__(self, models: FCN | Mapping[str, FCN], dataset, *, layer: str = "conv1_1",
                 channel: int = 0, image: int = 0, cache_size: int = 32):
        models = check_models_and_dataset(models, dataset, image)
        if cache_size < 1:
            raise ValueError(f"cache_size must be >= 1, got {cache_size}")
        self.models, self.dataset, self.cache_size = dict(models), dataset, cache_size
        self.classes = getattr(dataset, "classes", CLASSES)
        self._cache: OrderedDict[tuple[str, int], tuple] = OrderedDict()
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
        self.readout = widgets.HTML()
        self.picture = widgets.Image(format="png")
        self.figure = Figure(figsize=(9, 4), dpi=72)
        FigureCanvasAgg(self.figure)
        self._artists = _Artists(self.figure)
        self._shown_image: tuple[str, int] | None = None
        self._start((self.model, self.image, self.layer, self.channel))

    def activations(self, model: str, index: int) -> OrderedDict[str, torch.Tensor]:
        """Every layer's activation for image `index` under `model`, computed once and cached."""
        return self._cached(model, index)[2]

    def _cached(self, model: str, index: int) -> tuple:
        # (image, mask, activations); the dataset may render an item afresh on every access
        key = (model, index)
        if key in self._cache:
            self._cache.move_to_end(key)
        else:
            image, mask = self.dataset[index]
            self._cache[key] = (image, mask, capture_activations(self.models[model], image))
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return self._cache[key]

    def update(self) -> np.ndarray:
        model, index = self.model.value, self.image.value
        image, mask, activations = self._cached(model, index)
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
        if self._shown_image != (model, index):
            self._artists.set_image(image, mask, f"image #{index}")
            self._shown_image = (model, index)
        values = activations[name][channel].numpy()
        stride = map_stride(name, activations[name], image.shape[-2])
        h, w = values.shape
        self._artists.set_map(values, stride, name in SCORE_MAPS,
                              f"{name}: {channel_label(name, channel, channels, self.classes)}")
        self.readout.value = (
            f"<b>{name}</b> ({model}): {channels} channels of {h} x {w} cells, stride {stride} "
            f"(one cell per {stride} x {stride} pixels); this channel ranges "
            f"{values.min():.3g} to {values.max():.3g}.")
        return values

    def layout(self) -> None:
        self._artists.relayout()

    def render(self) -> None:
        # Blitted Agg drawing instead of `savefig`'s full redraw: a slider move then takes a
        # few tens of milliseconds.
        show_png(self.picture, encode_png(self._artists.draw()))

    def widget(self) -> widgets.Widget:
        controls = widgets.HBox([widgets.VBox([self.model, self.image]),
                                 widgets.VBox([self.layer, self.channel])])
        return widgets.VBox([controls, self.readout, self.picture])


