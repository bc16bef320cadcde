"""Notebook 5's pixel explorer: pick an image and a pixel, see why the net predicts what it does.

The figure is `plot_pixel_explanation`: the receptive fields of the pixel, the score-map cells
at strides 32, 16 and 8 that feed it, and the streams' contributions to the top classes, under
the sentence that explains the prediction. The backbone runs once per (model, image); a row or
column move only redoes `explain_from_maps` on the cached score maps and redraws.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

import ipywidgets as widgets
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fcn_lesson.core.geometry import stage_table
from fcn_lesson.core.models import FCN
from fcn_lesson.datasets.shapes import CLASSES, PALETTE
from fcn_lesson.lessons.explain import (
    PixelExplanation,
    explain_from_maps,
    explain_sentence,
    plot_pixel_explanation,
    score_maps,
)
from fcn_lesson.widgets.base import Explorer, check_models_and_dataset
from fcn_lesson.widgets.png import figure_png, show_png

__all__ = ["PixelExplorer", "PixelView"]


@dataclass(frozen=True)
class PixelView:
    """What the explorer shows for one setting of its controls."""

    model: str
    image_index: int
    explanation: PixelExplanation
    sentence: str
    truth: int  # the ground-truth class at the pixel


class PixelExplorer(Explorer):
    """A model menu (when given several), image, row and column sliders; the figure explains
    the chosen pixel's prediction stream by stream.

    `update()` reads the controls, redraws the figure and returns a `PixelView` (kept as
    `.result`); moving a control calls it, then `render()` puts the figure into `picture`.
    `dataset[i]` must give (image (3, H, W), mask (H, W)). Display with `display(explorer)`.
    """

    what = "pixel explorer"

    def __init__(self, models: FCN | Mapping[str, FCN], dataset, *, image: int = 0,
                 row: int | None = None, col: int | None = None, classes=CLASSES,
                 palette=PALETTE, cache_size: int = 8):
        models = check_models_and_dataset(models, dataset, image)
        if any(m.num_classes != len(classes) for m in models.values()):
            raise ValueError(f"{len(classes)} class names for models with "
                             f"{sorted({m.num_classes for m in models.values()})} classes")
        self.models, self.dataset = dict(models), dataset
        self.classes, self.palette, self.cache_size = tuple(classes), palette, cache_size
        self._cache: OrderedDict[tuple[str, int], dict] = OrderedDict()
        first = next(iter(self.models))
        height, width = self._entry(first, image)["size"]
        row = height // 2 if row is None else row
        col = width // 2 if col is None else col
        if not (0 <= row < height and 0 <= col < width):
            raise ValueError(f"pixel ({row}, {col}) is outside the {height}x{width} image")
        self.model = widgets.Dropdown(options=list(self.models), value=first, description="model",
                                      layout=widgets.Layout(display="" if len(models) > 1 else "none"))
        self.image = widgets.IntSlider(image, min=0, max=len(dataset) - 1, description="image")
        self.row = widgets.IntSlider(row, min=0, max=height - 1, description="row")
        self.col = widgets.IntSlider(col, min=0, max=width - 1, description="column")
        self.readout = widgets.HTML()
        self.picture = widgets.Image(format="png")
        self.figure = Figure(figsize=(13.5, 3.9), dpi=72, layout="constrained")
        FigureCanvasAgg(self.figure)
        self._start((self.model, self.image, self.row, self.col))

    @torch.no_grad()
    def _entry(self, name: str, index: int) -> dict:
        """The backbone's work for one (model, image), done once: the streams' score maps, the
        prediction, and the geometry of every stage."""
        key = (name, index)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        model = self.models[name]
        image, mask = self.dataset[index]
        maps = score_maps(model, image)
        height, width = image.shape[-2:]
        out = model.fuse(maps, None, height, width)["out"][0]
        self._cache[key] = {
            "image": image, "mask": mask, "maps": maps, "size": (height, width),
            "prediction": out.argmax(0).cpu(),
            "stages": {stage.name: stage for stage in stage_table(model, height, width)},
        }
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return self._cache[key]

    def update(self) -> PixelView:
        name, index = self.model.value, self.image.value
        entry = self._entry(name, index)
        height, width = entry["size"]
        # A new image may be smaller: shrinking the sliders fires their observers, which
        # `quietly` keeps out until this update ends.
        with self.quietly():
            self.row.max, self.col.max = height - 1, width - 1
        row, col = self.row.value, self.col.value
        e = explain_from_maps(self.models[name], entry["maps"], height, width, row, col,
                              entry["stages"])
        sentence = explain_sentence(e, self.classes)
        truth = int(entry["mask"][row, col])
        plot_pixel_explanation(e, entry["image"], self.classes, self.palette,
                               prediction=entry["prediction"], figure=self.figure)
        cells = ", ".join(f"{len(f.cells)} at stride {f.stride}" for f in e.feeding.values())
        verdict = "right" if truth == e.prediction else f"wrong (truth: {self._name(truth)})"
        self.readout.value = (
            f"<b>{name}, image {index}, pixel ({row}, {col})</b>: predicts "
            f"<b>{self._name(e.prediction)}</b>, {verdict}. {sentence}. Feeding cells: {cells}.")
        return PixelView(name, index, e, sentence, truth)

    def _name(self, k: int) -> str:
        return self.classes[k] if 0 <= k < len(self.classes) else f"label {k}"

    def render(self) -> None:
        show_png(self.picture, figure_png(self.figure))

    def widget(self) -> widgets.Widget:
        controls = widgets.HBox([widgets.VBox([self.model, self.image]),
                                 widgets.VBox([self.row, self.col])])
        return widgets.VBox([controls, self.readout, self.picture])
