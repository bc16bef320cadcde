"""Notebook 5's pixel explorer: pick an image and a pixel, see why the net predicts what it does.

It shows what `plot_pixel_explanation` draws, as separate panels fast enough to follow a
slider (`fcn_lesson.lessons.explain_panels`): the receptive fields of the pixel, the prediction,
the score-map cells at strides 32, 16 and 8 that feed the pixel, and the streams' contributions
to the top classes, with the sentence that explains the prediction. The backbone runs while the
explorer is built, on every image for every model (`ScoreMapCache`); a control move only redoes
`explain_from_maps` on the cached score maps and draws five small PNGs and an SVG chart into one
HTML view (`fcn_lesson.widgets.view`), and a setting seen recently is shown again from its cached
view. `static_png` draws the matplotlib figure, for readers without a kernel.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

import ipywidgets as widgets
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fcn_lesson.core.geometry import stage_table
from fcn_lesson.core.models import FCN
from fcn_lesson.datasets.shapes import CLASSES, PALETTE
from fcn_lesson.lessons.explain import (
    SOURCES,
    PixelExplanation,
    explain_from_maps,
    explain_sentence,
    plot_pixel_explanation,
)
from fcn_lesson.lessons.explain_panels import (
    contributions_svg,
    feeding_panel,
    feeding_side,
    pixel_panel,
    receptive_field_panel,
    stream_rgb,
)
from fcn_lesson.lessons.legends import swatch
from fcn_lesson.lessons.viz import colorize, to_numpy_image
from fcn_lesson.widgets.base import Explorer, check_models_and_dataset
from fcn_lesson.widgets.score_cache import ScoreMapCache
from fcn_lesson.widgets.view import encode_png, figure_png, panel_html, row_html, view_html

__all__ = ["PixelExplorer", "PixelView"]

_CELLS_CAPTION = (
    "Below, one panel per stream: the cells of its score map that feed the pixel (+), in a window "
    "four cells wide (fc7's at the scale of the image above, pool4's 2&times; and pool3's 4&times; "
    "closer; grey lies past the image). A cell is red where it adds to the predicted class and blue "
    "where it takes away, scaled to the panel's strongest cell; its number is what it adds to that "
    "class's logit.")


@dataclass(frozen=True)
class PixelView:
    """What the explorer shows for one setting of its controls."""

    model: str
    image_index: int
    explanation: PixelExplanation
    sentence: str
    truth: int  # the ground-truth class at the pixel


class PixelExplorer(Explorer):
    """A model menu (when given several), image, row and column sliders; the panels explain
    the chosen pixel's prediction stream by stream.

    `update()` reads the controls, puts the panels (PNGs), their titles, the readout and an SVG
    bar chart into `view`, one HTML widget, and returns a `PixelView` (kept as `.result`);
    moving a control calls it. `dataset[i]` must give (image (3, H, W), mask (H, W)); `zoom`
    enlarges the image panels. Display with `display(explorer)`.

    Building it runs every model's backbone on the whole dataset (`ScoreMapCache`: in batches,
    for up to 512 images; a larger dataset is run image by image on first view). The pictures
    each (model, image) starts from are kept for the last `cache_size` of them, and the
    views of the last `drawings` settings of the controls.
    """

    what = "pixel explorer"

    def __init__(self, models: FCN | Mapping[str, FCN], dataset, *, image: int = 0,
                 row: int | None = None, col: int | None = None, classes=CLASSES,
                 palette=PALETTE, zoom: int = 2, cache_size: int = 8, drawings: int = 64):
        models = check_models_and_dataset(models, dataset, image)
        if any(m.num_classes != len(classes) for m in models.values()):
            raise ValueError(f"{len(classes)} class names for models with "
                             f"{sorted({m.num_classes for m in models.values()})} classes")
        self.models, self.dataset = dict(models), dataset
        self.classes, self.palette, self.zoom = tuple(classes), palette, zoom
        self.score_maps = {name: ScoreMapCache(m, dataset) for name, m in self.models.items()}
        self._entry = lru_cache(maxsize=cache_size)(self._image_entry)
        self._drawing = lru_cache(maxsize=drawings)(self._draw)
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
        self.view = widgets.HTML()
        colours = colorize(torch.arange(len(self.classes))[None], palette)[0]  # (K, 3) uint8
        self._class_legend = "prediction: " + "".join(
            swatch(rgb, name) for name, rgb in zip(self.classes, colours, strict=True))
        self._start((self.model, self.image, self.row, self.col))

    @torch.no_grad()
    def _image_entry(self, name: str, index: int) -> dict:
        """What every move on one (model, image) starts from: the streams' score maps (cached,
        no backbone), the prediction, the geometry of every stage, and the pictures the panels
        are drawn on."""
        model = self.models[name]
        image, mask = self.dataset[index]
        maps = self.score_maps[name][index]
        height, width = image.shape[-2:]
        prediction = model.fuse(maps, None, height, width)["out"][0].argmax(0).cpu()
        return {
            "image": image, "mask": mask, "maps": maps, "size": (height, width),
            "prediction": prediction, "picture": to_numpy_image(image),
            "prediction_rgb": colorize(prediction, self.palette),
            "stages": {stage.name: stage for stage in stage_table(model, height, width)},
        }

    def _draw(self, name: str, index: int, row: int, col: int) -> tuple[PixelView, str]:
        """Explain pixel (row, col) of image `index` under model `name`, and draw it: the view's
        result and its HTML."""
        entry = self._entry(name, index)
        e = explain_from_maps(self.models[name], entry["maps"], *entry["size"], row, col,
                              entry["stages"])
        sentence = explain_sentence(e, self.classes)
        truth = int(entry["mask"][row, col])
        predicted = self._name(e.prediction)
        cells = ", ".join(f"{len(f.cells)} at stride {f.stride}" for f in e.feeding.values())
        verdict = "right" if truth == e.prediction else f"wrong (truth: {self._name(truth)})"
        readout = (f"<b>{name}, image {index}, pixel ({row}, {col})</b>: predicts "
                   f"<b>{predicted}</b>, {verdict}. {sentence}. Feeding cells: {cells}.")
        top = row_html(
            panel_html(f"<b>pixel ({row}, {col}): receptive fields</b>",
                       encode_png(receptive_field_panel(entry["picture"], e, self.zoom)),
                       "receptive fields"),
            panel_html(f"<b>{name} predicts: {predicted}</b>",
                       encode_png(pixel_panel(entry["prediction_rgb"], e, self.zoom)),
                       "prediction"),
            f"<div style='flex:none'><div><b>what each stream adds to the top classes</b></div>"
            f"{contributions_svg(e, self.classes)}</div>")
        field_legend = "receptive fields: " + "".join(
            swatch(stream_rgb(s), f"{SOURCES[s]} {self._side(e, s)}") for s in e.streams)
        # One panel per stream the model has, each as wide as its picture so long titles wrap.
        feeding = row_html(*(
            panel_html(f"<b>{SOURCES[s]} cells (stride {e.feeding[s].stride}) add "
                       f"{float(e.contributions[s][e.prediction]):+.1f} to {predicted}</b>",
                       encode_png(feeding_panel(entry["picture"], e, s, self.zoom)), s,
                       width=feeding_side(self.zoom))
            for s in e.streams))
        html = view_html(readout, top, field_legend, self._class_legend, feeding, _CELLS_CAPTION)
        return PixelView(name, index, e, sentence, truth), html

    def update(self) -> PixelView:
        name, index = self.model.value, self.image.value
        height, width = self._entry(name, index)["size"]
        # A new image may be smaller: shrinking the sliders fires their observers, which
        # `quietly` keeps out until this update ends.
        with self.quietly():
            self.row.max, self.col.max = height - 1, width - 1
        view, html = self._drawing(name, index, self.row.value, self.col.value)
        self.view.value = html
        return view

    @staticmethod
    def _side(e: PixelExplanation, stream: str) -> str:
        """A stream's receptive field in words: its side, and whether it reaches past the image."""
        top, left, bottom, right = e.receptive_fields[stream]
        height, width = e.image_size
        beyond = top < 0 or left < 0 or bottom > height or right > width
        return f"{right - left:g} px" + (" (past the image)" if beyond else "")

    def _name(self, k: int) -> str:
        return self.classes[k] if 0 <= k < len(self.classes) else f"label {k}"

    def widget(self) -> widgets.Widget:
        controls = widgets.HBox([widgets.VBox([self.model, self.image]),
                                 widgets.VBox([self.row, self.col])])
        return widgets.VBox([controls, self.view])

    def static_png(self) -> bytes:
        """The current view as one matplotlib figure (`plot_pixel_explanation`): what a reader
        without a kernel sees in place of the widget."""
        v = self.result
        entry = self._entry(v.model, v.image_index)
        figure = Figure(dpi=72)
        FigureCanvasAgg(figure)
        plot_pixel_explanation(v.explanation, entry["image"], self.classes, self.palette,
                               prediction=entry["prediction"], figure=figure)
        return figure_png(figure)
