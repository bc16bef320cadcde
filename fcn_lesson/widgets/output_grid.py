"""Notebook 1's explorer: input size -> score map size, and what one score cell sees.

A convolutionalized VGG16 gives one score vector per 7x7 window of pool5 cells, i.e. per
224-pixel window of the image at stride 32: the window the classifier was trained on.
Through the 3x3 convolutions a cell can see further, 404 pixels (its receptive field),
which near the image border includes zero padding. The FCN backbone pads fc6 by 3, so its
score map has a cell for every 32 pixels of the (padded) image instead of 6 fewer.
"""

from __future__ import annotations

import ipywidgets as widgets
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fcn_lesson.core.geometry import VGG_INPUT
from fcn_lesson.lessons.output_grid import (
    HEADS,
    MAX_SIDE,
    GridArtists,
    OutputGrid,
    output_grid,
    sample_canvas,
)
from fcn_lesson.widgets.base import Explorer
from fcn_lesson.widgets.png import figure_png, show_png

__all__ = ["OutputGridExplorer"]


class OutputGridExplorer(Explorer):
    """Input height/width sliders -> score map size; row/column sliders pick a cell whose
    224-pixel window and receptive field are drawn on the image.

    `update()` recomputes from the controls' values, moves the figure's artists and returns
    the `OutputGrid`; moving a control calls it, then `render()` redraws the picture in
    place. Display the explorer with `display(explorer)`.
    """

    what = "output grid explorer"

    def __init__(self, height: int = 375, width: int = 500, row: int = 0, col: int = 0,
                 head: str = "convolutionalized VGG16"):
        if head not in HEADS:
            raise ValueError(f"unknown head {head!r}; choose one of {', '.join(HEADS)}")
        self.height = widgets.IntSlider(height, min=VGG_INPUT, max=MAX_SIDE,
                                        description="height")
        self.width = widgets.IntSlider(width, min=VGG_INPUT, max=MAX_SIDE,
                                       description="width")
        self.row = widgets.IntSlider(row, min=0, max=MAX_SIDE // 32, description="cell row")
        self.col = widgets.IntSlider(col, min=0, max=MAX_SIDE // 32,
                                     description="cell column")
        # Buttons as wide as their labels (the default width cut them to "convolutionalized…"),
        # with a tooltip each.
        self.head = widgets.ToggleButtons(
            options=list(HEADS), value=head, description="head",
            tooltips=["VGG16's classifier as convolutions: fc6 is a 7 x 7 convolution without "
                      "padding, so the map is 6 cells smaller than the image / 32",
                      "the FCN backbone used from notebook 3 on: the input padded to a multiple "
                      "of 32 and fc6 padded by 3, one cell per 32 x 32 block"],
            style={"button_width": "auto"})
        self.readout = widgets.HTML()
        self.picture = widgets.Image(format="png")
        self.figure = Figure(figsize=(11, 4.6), dpi=72)
        FigureCanvasAgg(self.figure)
        self._artists = GridArtists(self.figure, sample_canvas())
        self._start((self.height, self.width, self.row, self.col, self.head))

    def update(self) -> OutputGrid:
        height, width, head = self.height.value, self.width.value, self.head.value
        h, w = output_grid(height, width, head=head).map_size
        # Shrinking the map moves the cell sliders; `quietly` stops those moves from
        # re-entering `update` halfway through this one.
        with self.quietly():
            self.row.max, self.col.max = h - 1, w - 1
        grid = output_grid(height, width, self.row.value, self.col.value, head)
        self._artists.set(grid)
        stage, (top, left, bottom, right) = grid.stage, grid.window
        rf = grid.receptive_field
        self.readout.value = (
            f"<b>{height} x {width}</b> image &rarr; <b>{h} x {w}</b> score map "
            f"({h * w} cells, stride {stage.stride}). Cell {grid.cell}: {VGG_INPUT}-px window "
            f"rows {top}&ndash;{bottom - 1}, columns {left}&ndash;{right - 1}; receptive "
            f"field {stage.receptive_field} px: rows {rf[0]}&ndash;{rf[2] - 1}, columns "
            f"{rf[1]}&ndash;{rf[3] - 1} (beyond the image it sees zero padding).")
        return grid

    def layout(self) -> None:
        self.figure.tight_layout()

    def render(self) -> None:
        show_png(self.picture, figure_png(self.figure))

    def widget(self) -> widgets.Widget:
        sizes = widgets.VBox([self.height, self.width])
        cell = widgets.VBox([self.row, self.col])
        return widgets.VBox([widgets.HBox([sizes, cell]), self.head, self.readout,
                             self.picture])
