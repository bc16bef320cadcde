"""Notebook 1's explorer: input size -> score map size, and what one score cell sees.

A convolutionalized VGG16 gives one score vector per 7x7 window of pool5 cells, i.e. per
224-pixel window of the image at stride 32: the window the classifier was trained on.
Through the 3x3 convolutions a cell can see further, 404 pixels (its receptive field),
which near the image border includes zero padding. The FCN backbone pads fc6 by 3, so its
score map has a cell for every 32 pixels of the (padded) image instead of 6 fewer.

The pictures are arrays drawn with numpy and shown as PNGs (a move takes milliseconds; a
matplotlib redraw took several times longer, mostly for its text). The image with its grid
and cell centres is drawn once per image size and head; moving the cell only copies it and
draws the two boxes. Titles and legend are HTML, sent with the pictures as one value
(`fcn_lesson.widgets.view`); matplotlib draws only the static picture.
"""

from __future__ import annotations

import ipywidgets as widgets
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fcn_lesson.core.geometry import VGG_INPUT
from fcn_lesson.lessons.output_grid import (
    HEADS,
    MAX_SIDE,
    OutputGrid,
    draw_output_grid,
    output_grid,
    sample_canvas,
)
from fcn_lesson.widgets.base import Explorer
from fcn_lesson.widgets.view import encode_png, figure_png, panel_html, row_html, view_html

__all__ = ["OutputGridExplorer"]

# Image pixels per screen pixel a side: the largest frame (FCN head, 640 x 640, with room for
# the receptive fields) is 1028 image pixels, 514 on screen.
SCALE = 2
OUTSIDE = 217.0  # light grey beyond the image: there the network sees zero padding
BLUE = np.array([31, 119, 180])  # matplotlib's tab:blue and tab:red, as in the static figure
RED = np.array([214, 39, 40])
MAP_PX = 240  # the score map panel's longer side, at most, in screen pixels


def shrink(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) -> (ceil(H / SCALE), ceil(W / SCALE), 3): the mean of each SCALE x SCALE
    block. Where an odd size cuts a block, its outside part counts as grey, so that a 1-pixel
    change of the image size still shows."""
    height, width = image.shape[:2]
    padded = np.pad(image, ((0, -height % SCALE), (0, -width % SCALE), (0, 0)),
                    constant_values=OUTSIDE)
    return padded.reshape(padded.shape[0] // SCALE, SCALE, padded.shape[1] // SCALE, SCALE,
                          3).mean(axis=(1, 3))


def outline(picture: np.ndarray, box, colour, width: int = 2, dash: int = 0) -> None:
    """Draw the edge of `box` (top, left, bottom, right; screen pixels, bottom and right
    excluded) `width` pixels thick inside it; dashed (`dash` pixels on, `dash` off) if `dash`."""
    top, left, bottom, right = box
    rows, cols = np.arange(top, bottom), np.arange(left, right)
    if dash:
        rows, cols = rows[(rows - top) // dash % 2 == 0], cols[(cols - left) // dash % 2 == 0]
    for inset in range(width):
        picture[top + inset, cols] = picture[bottom - 1 - inset, cols] = colour
        picture[rows, left + inset] = picture[rows, right - 1 - inset] = colour


def _swatch(style: str) -> str:
    return (f"<span style='display:inline-block;width:14px;height:14px;margin:0 4px 0 12px;"
            f"vertical-align:middle;{style}'></span>")


# What each head does to the map, said under the map's title.
HEAD_NOTES = {
    "convolutionalized VGG16": "fc6 is a 7 x 7 convolution without padding, so the map is 6 "
                               "cells smaller than the image / 32",
    "FCN (fc6 padding 3)": "the FCN backbone used from notebook 3 on: the input padded to a "
                           "multiple of 32 and fc6 padded by 3, one cell per 32 x 32 block",
}

LEGEND = (
    _swatch("background:rgba(31,119,180,0.25);border:2px solid rgb(31,119,180)")
    + f"the chosen cell's {VGG_INPUT}-px window"
    + _swatch("border:2px dashed rgb(214,39,40)") + "its receptive field"
    + "<span style='color:rgb(214,39,40);margin:0 4px 0 12px;font-weight:bold'>&#x2716;</span>"
    + "its centre"
    + _swatch("width:4px;height:4px;background:black;margin-left:16px") + "every cell's centre"
    + _swatch("background:#888;border-left:2px solid white") + "the stride grid"
    + _swatch(f"background:rgb({OUTSIDE:.0f},{OUTSIDE:.0f},{OUTSIDE:.0f});border:1px solid #999")
    + "outside the image (zero padding)")


class OutputGridExplorer(Explorer):
    """Input height/width sliders -> score map size; row/column sliders pick a cell whose
    224-pixel window and receptive field are drawn on the image.

    `update()` recomputes from the controls' values, draws the pictures, sends the whole view,
    texts and pictures, as one HTML value (`view`) and returns the `OutputGrid`; moving a
    control calls it. Display the explorer
    with `display(explorer)`.
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
        # A menu, not toggle buttons: with toggle buttons a head switch took 117 and 123 ms from
        # click to picture at p95 in two browser runs, the sliders 68-89 ms.
        self.head = widgets.Dropdown(
            options=list(HEADS), value=head, description="head",
            layout=widgets.Layout(width="340px"))  # "max-content" hid the labels' last letter
        self.view = widgets.HTML()
        self.canvas = sample_canvas()
        self._canvas_255 = self.canvas * 255.0
        # Shrunk once: shrinking the whole image on every size change took most of a move.
        self._shrunk_canvas = shrink(self._canvas_255)
        self._background_key = self._background = None
        # Build both heads' (weightless) models now, or the first switch of head would.
        for name in HEADS:
            output_grid(VGG_INPUT, VGG_INPUT, head=name)
        self._start((self.height, self.width, self.row, self.col, self.head))

    def update(self) -> OutputGrid:
        height, width, head = self.height.value, self.width.value, self.head.value
        h, w = output_grid(height, width, head=head).map_size
        # Shrinking the map moves the cell sliders; `quietly` stops those moves from
        # re-entering `update` halfway through this one.
        with self.quietly():
            self.row.max, self.col.max = h - 1, w - 1
        grid = output_grid(height, width, self.row.value, self.col.value, head)
        stage, (top, left, bottom, right) = grid.stage, grid.window
        rf = grid.receptive_field
        readout = (
            f"<b>{height} x {width}</b> image &rarr; <b>{h} x {w}</b> score map "
            f"({h * w} cells, stride {stage.stride}). Cell {grid.cell}: {VGG_INPUT}-px window "
            f"rows {top}&ndash;{bottom - 1}, columns {left}&ndash;{right - 1}; receptive "
            f"field {stage.receptive_field} px: rows {rf[0]}&ndash;{rf[2] - 1}, columns "
            f"{rf[1]}&ndash;{rf[3] - 1} (beyond the image it sees zero padding).")
        frame_top, frame_left, frame_bottom, frame_right = self._frame(grid)
        title = (
            f"<b>{height} x {width} image: cell {grid.cell} of the {h} x {w} score map</b><br>"
            f"x from {frame_left} to {frame_right} px (left to right), y from {frame_top} to "
            f"{frame_bottom} px (top to bottom); the image starts at (0, 0). One screen pixel "
            f"is {SCALE} x {SCALE} image pixels; grid lines every {stage.stride} px.")
        map_title = (f"<b>score map {h} x {w}</b> ({head}: {HEAD_NOTES[head]})<br>row 0 at "
                     f"the top, column 0 at the left; blue: cell {grid.cell}")
        # Columns as wide as the largest pictures (514 px, and the score map's MAP_PX): the
        # pictures change size with the controls, the layout does not.
        self.view.value = view_html(readout, row_html(
            panel_html(title, encode_png(self.picture_rgb(grid)), "image", width=530),
            panel_html(map_title, encode_png(self.map_rgb(grid)), "score map", width=MAP_PX + 60)))
        return grid

    @staticmethod
    def _frame(grid: OutputGrid) -> tuple[int, ...]:
        """`grid.frame()` widened to whole screen pixels."""
        top, left, bottom, right = grid.frame()
        return (SCALE * (top // SCALE), SCALE * (left // SCALE),
                -SCALE * (-bottom // SCALE), -SCALE * (-right // SCALE))

    def _screen(self, grid: OutputGrid, box) -> tuple[int, ...]:
        """A (top, left, bottom, right) box in image pixels -> screen pixels of the picture."""
        frame_top, frame_left = self._frame(grid)[:2]
        top, left, bottom, right = box
        return (round((top - frame_top) / SCALE), round((left - frame_left) / SCALE),
                round((bottom - frame_top) / SCALE), round((right - frame_left) / SCALE))

    def background(self, grid: OutputGrid) -> np.ndarray:
        """(H, W, 3) float: the frame with the image, the stride grid and every cell's centre.
        It depends on the image size and head only: the last one is kept for the cell moves."""
        key = (grid.height, grid.width, grid.head)
        if key != self._background_key:
            _, _, height, width = self._screen(grid, self._frame(grid))
            picture = np.full((height, width, 3), OUTSIDE)
            image = self._shrunk_canvas[:-(-grid.height // SCALE), :-(-grid.width // SCALE)].copy()
            # The last row and column of blocks again, with their part beyond the image grey.
            last_row, last_col = SCALE * (image.shape[0] - 1), SCALE * (image.shape[1] - 1)
            image[-1] = shrink(self._canvas_255[last_row:grid.height, :grid.width])[0]
            image[:, -1] = shrink(self._canvas_255[:grid.height, last_col:grid.width])[:, 0]
            y0, x0 = self._screen(grid, (0, 0, 0, 0))[:2]
            y1, x1 = y0 + image.shape[0], x0 + image.shape[1]
            picture[y0:y1, x0:x1] = image
            stride = grid.stage.stride
            columns = x0 + np.arange(0, grid.width + 1, stride) // SCALE
            rows = y0 + np.arange(0, grid.height + 1, stride) // SCALE
            # white lines, 60% opaque
            picture[y0:y1, columns] = 0.4 * picture[y0:y1, columns] + 0.6 * 255
            picture[rows, x0:x1] = 0.4 * picture[rows, x0:x1] + 0.6 * 255
            centres = np.round(grid.centers() / SCALE).astype(int) + (x0, y0)  # (n, 2) x, y
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    picture[centres[:, 1] + dy, centres[:, 0] + dx] = 0.0
            self._background_key, self._background = key, picture
        return self._background

    def picture_rgb(self, grid: OutputGrid) -> np.ndarray:
        """(H, W, 3) uint8: the background with the cell's receptive field (red, dashed) and
        its 224-px window (blue, filled) on top, and a red cross on the window's centre."""
        picture = self.background(grid).copy()
        outline(picture, self._screen(grid, grid.receptive_field), RED, dash=6)
        top, left, bottom, right = self._screen(grid, grid.window)
        picture[top:bottom, left:right] = 0.75 * picture[top:bottom, left:right] + 0.25 * BLUE
        outline(picture, (top, left, bottom, right), BLUE)
        y, x, arm = (top + bottom) // 2, (left + right) // 2, np.arange(-5, 6)
        for shift in (0, 1):  # two pixels thick
            picture[y + arm, x + arm + shift] = picture[y + arm, x - arm + shift] = RED
        return np.rint(picture).astype(np.uint8)

    @staticmethod
    def map_rgb(grid: OutputGrid) -> np.ndarray:
        """(H, W, 3) uint8: the score map as white squares in a grey grid, the chosen cell blue
        with a red edge."""
        h, w = grid.map_size
        row, col = grid.cell
        side = max(6, min(40, MAP_PX // max(h, w)))  # of a cell, in screen pixels
        picture = np.full((h * side + 1, w * side + 1, 3), 255, dtype=np.uint8)
        picture[::side], picture[:, ::side] = 178, 178
        cell = (row * side, col * side, (row + 1) * side + 1, (col + 1) * side + 1)
        picture[cell[0]:cell[2], cell[1]:cell[3]] = BLUE
        outline(picture, cell, RED, width=1)
        return picture

    def static_png(self) -> bytes:
        """The current view as a matplotlib figure, with axes and a legend: what a reader
        without a kernel sees in place of the widget."""
        figure = Figure(figsize=(11, 4.6), dpi=72)
        FigureCanvasAgg(figure)
        draw_output_grid(figure, self.result, self.canvas)
        figure.tight_layout()
        return figure_png(figure)

    def widget(self) -> widgets.Widget:
        sizes = widgets.VBox([self.height, self.width])
        cell = widgets.VBox([self.row, self.col])
        return widgets.VBox([widgets.HBox([sizes, cell]), self.head, self.view,
                             widgets.HTML(LEGEND)])
