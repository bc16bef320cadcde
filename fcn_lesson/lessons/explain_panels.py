"""A pixel's explanation drawn fast enough to follow a slider: RGB arrays and an SVG bar chart.

`plot_pixel_explanation` draws a `PixelExplanation` with matplotlib, which takes most of a
second; the pixel explorer redraws on every slider move, so it shows the same panels drawn
here in a few milliseconds: the image (or the prediction) enlarged pixel by pixel, with boxes,
shaded cells, a cross and numbers drawn straight into the array, and the bar chart of the
streams' contributions as inline SVG.

Boxes are (top, left, bottom, right) in pixel-edge coordinates, as everywhere in
`fcn_lesson.lessons.explain`: pixel k spans [k, k + 1).
"""

from __future__ import annotations

from functools import cache
from html import escape

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import to_hex, to_rgb
from matplotlib.ticker import MaxNLocator
from PIL import Image, ImageDraw, ImageFont

from fcn_lesson.lessons.explain import (
    SOURCES,
    STREAM_COLOURS,
    Box,
    PixelExplanation,
    top_classes,
)

__all__ = ["contributions_svg", "enlarge", "feeding_panel", "feeding_side", "feeding_window",
           "mark_pixel", "outline", "pixel_panel", "receptive_field_panel", "shade", "stream_rgb",
           "write"]

OUTSIDE = (224, 224, 224)  # where a panel reaches past the image: light grey
_SHADE_CMAP = colormaps["RdBu_r"]  # as in plot_pixel_explanation: red adds, blue takes away
_SHADE_ALPHA = 0.55
_WINDOW_STRIDES = 4  # a feeding panel's side, in cells


def stream_rgb(stream: str) -> tuple[int, int, int]:
    """A stream's colour (`STREAM_COLOURS`) as 0-255 RGB."""
    return tuple(round(255 * c) for c in to_rgb(STREAM_COLOURS[stream]))


def enlarge(rgb: np.ndarray, zoom: int) -> np.ndarray:
    """An (H, W, 3) uint8 image with each pixel repeated zoom x zoom times: a new array to draw
    on. (PIL's nearest-neighbour resize gives the same pixels as `np.repeat` on both axes, in
    half the time: a slider move enlarges five panels.)"""
    height, width = rgb.shape[:2]
    picture = Image.fromarray(np.ascontiguousarray(rgb))
    return np.array(picture.resize((width * zoom, height * zoom), Image.Resampling.NEAREST))


def _inside(canvas: np.ndarray, box: Box) -> np.ndarray:
    """The part of the canvas that `box` (in canvas pixels) covers: a view, maybe empty."""
    height, width = canvas.shape[:2]
    top, left, bottom, right = (int(v) for v in box)
    # Clipped at both ends: a negative index would count from the far edge.
    return canvas[min(max(top, 0), height):min(max(bottom, 0), height),
                  min(max(left, 0), width):min(max(right, 0), width)]


def _fill(canvas: np.ndarray, box: Box, rgb) -> None:
    """Paint `box` (in canvas pixels) in `rgb`, clipped to the canvas."""
    _inside(canvas, box)[:] = rgb


def outline(canvas: np.ndarray, box: Box, rgb, width: int = 2) -> None:
    """Draw `box` (in canvas pixels) as a frame `width` pixels thick, inside the box: its outer
    edge is the box's edge. Edges outside the canvas are not drawn."""
    top, left, bottom, right = (int(v) for v in box)
    _fill(canvas, (top, left, top + width, right), rgb)
    _fill(canvas, (bottom - width, left, bottom, right), rgb)
    _fill(canvas, (top, left, bottom, left + width), rgb)
    _fill(canvas, (top, right - width, bottom, right), rgb)


def shade(canvas: np.ndarray, box: Box, rgb, alpha: float = _SHADE_ALPHA) -> None:
    """Blend `rgb` over the canvas pixels inside `box`, clipped to the canvas."""
    region = _inside(canvas, box)
    region[:] = np.rint((1 - alpha) * region + alpha * np.asarray(rgb, dtype=np.float64))


def mark_pixel(canvas: np.ndarray, row: int, col: int, zoom: int, arm: int = 6) -> None:
    """A black cross with a white rim on image pixel (row, col) of a canvas enlarged `zoom`
    times: visible on any colour, and the pixel itself stays under its centre."""
    y, x = row * zoom + zoom // 2, col * zoom + zoom // 2
    reach = zoom // 2 + arm
    for rim, rgb in ((1, (255, 255, 255)), (0, (0, 0, 0))):
        _fill(canvas, (y - 1 - rim, x - reach - rim, y + 1 + rim, x + reach + rim), rgb)
        _fill(canvas, (y - reach - rim, x - 1 - rim, y + reach + rim, x + 1 + rim), rgb)


@cache
def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


@cache
def _stamp(text: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """`text` rendered once: (ink, rim) coverage masks in [0, 1], the rim two pixels wide, for
    black writing on a white rim. A panel's numbers repeat from move to move."""
    font = _font(size)
    left, top, right, bottom = font.getbbox(text, anchor="mm", stroke_width=2)
    masks = []
    for stroke in (0, 2):
        picture = Image.new("L", (right - left, bottom - top))
        ImageDraw.Draw(picture).text((-left, -top), text, fill=255, font=font, anchor="mm",
                                     stroke_width=stroke)
        masks.append(np.asarray(picture, dtype=np.float32)[..., None] / 255)
    return masks[0], masks[1]


def write(canvas: np.ndarray, y: float, x: float, text: str, size: int) -> None:
    """Write `text` centred on canvas pixel (y, x), black on a white rim; the whole text must
    fit inside the canvas."""
    ink, rim = _stamp(text, size)
    top, left = round(y - ink.shape[0] / 2), round(x - ink.shape[1] / 2)
    region = canvas[top:top + ink.shape[0], left:left + ink.shape[1]]
    region[:] = np.rint((region * (1 - rim) + 255 * rim) * (1 - ink))


def _scaled(box: Box, origin: tuple[int, int], zoom: int) -> Box:
    """An image box in the canvas pixels of a panel whose top-left corner is image pixel
    `origin`, enlarged `zoom` times."""
    top, left, bottom, right = box
    return ((top - origin[0]) * zoom, (left - origin[1]) * zoom,
            (bottom - origin[0]) * zoom, (right - origin[1]) * zoom)


def pixel_panel(rgb: np.ndarray, explanation: PixelExplanation, zoom: int) -> np.ndarray:
    """An (H, W, 3) picture of the explained image (the image, its prediction) enlarged `zoom`
    times, with the pixel marked."""
    canvas = enlarge(rgb, zoom)
    mark_pixel(canvas, explanation.row, explanation.col, zoom)
    return canvas


def receptive_field_panel(picture: np.ndarray, explanation: PixelExplanation,
                          zoom: int) -> np.ndarray:
    """The image enlarged `zoom` times with the pixel marked and each stream's receptive field
    framed in its colour, coarsest first so the finest frame stays on top. A field that reaches
    past the image (fc7's does, on a small one) shows only the edges that fall inside it."""
    canvas = enlarge(picture, zoom)
    for stream in explanation.streams:
        outline(canvas, _scaled(explanation.receptive_fields[stream], (0, 0), zoom),
                stream_rgb(stream))
    mark_pixel(canvas, explanation.row, explanation.col, zoom)
    return canvas


def feeding_window(explanation: PixelExplanation, stream: str) -> Box:
    """The square of image pixels a feeding panel shows: four cells wide, centred on the
    stream's feeding cells (they span at most three: the final upsampler has two taps per
    axis, and each learned 2x layer widens the span by at most one cell)."""
    cells = explanation.feeding[stream]
    boxes = cells.cell_boxes()
    middle_y = (min(b[0] for b in boxes) + max(b[2] for b in boxes)) // 2
    middle_x = (min(b[1] for b in boxes) + max(b[3] for b in boxes)) // 2
    half = _WINDOW_STRIDES * cells.stride // 2
    return middle_y - half, middle_x - half, middle_y + half, middle_x + half


def feeding_side(zoom: int) -> int:
    """A feeding panel's side in canvas pixels: four cells of 32 x zoom pixels."""
    return _WINDOW_STRIDES * 32 * zoom


def feeding_panel(picture: np.ndarray, explanation: PixelExplanation, stream: str,
                  zoom: int) -> np.ndarray:
    """One stream's feeding cells over the image, shaded by what each adds to the predicted
    class (red adds, blue takes away, scaled to the largest cell) and labelled with it.

    The panel is `feeding_window`, enlarged so that every cell is 32 * zoom canvas pixels wide
    whatever its stride: fc7's panel is at the image's scale x zoom, pool3's four times closer.
    Cells beyond the image (the score maps cover it padded to a multiple of 32) lie on grey.
    """
    e, cells = explanation, explanation.feeding[stream]
    scale = 32 * zoom // cells.stride
    top, left, bottom, right = feeding_window(e, stream)
    window = np.empty((bottom - top, right - left, 3), dtype=np.uint8)
    window[:] = OUTSIDE
    # the image's pixels, in the window's own coordinates
    _inside(window, _scaled((0, 0, *picture.shape[:2]), (top, left), 1))[:] = _inside(
        picture, (top, left, bottom, right))
    share = cells.contributions[:, e.prediction].numpy()
    limit = max(float(np.abs(share).max()), 1e-6)
    colours = _SHADE_CMAP(0.5 + 0.5 * share / limit, bytes=True)[:, :3]
    # Cells cover whole image pixels: shaded before enlarging, the same canvas at 1/scale^2 the work
    for box, rgb in zip(cells.cell_boxes(), colours, strict=True):
        shade(window, _scaled(box, (top, left), 1), rgb)
    canvas = enlarge(window, scale)

    pixel_y, pixel_x = (e.row - top) * scale + scale // 2, (e.col - left) * scale + scale // 2
    for box, value in zip(cells.cell_boxes(), share.tolist(), strict=True):
        cell_top, cell_left, cell_bottom, cell_right = _scaled(box, (top, left), scale)
        outline(canvas, (cell_top, cell_left, cell_bottom, cell_right), stream_rgb(stream), width=1)
        y = (cell_top + cell_bottom) / 2
        if cell_top <= pixel_y < cell_bottom and cell_left <= pixel_x < cell_right:
            # the number moves to the half of the cell away from the pixel's cross
            y += 0.3 * (cell_bottom - cell_top) * (1 if pixel_y < y else -1)
        write(canvas, y, (cell_left + cell_right) / 2, f"{value:+.1f}", size=7 * zoom)
    mark_pixel(canvas, e.row - top, e.col - left, scale)
    return canvas


def contributions_svg(explanation: PixelExplanation, classes, k: int = 3, width: int = 300,
                      height: int = 256) -> str:
    """The bar chart of `plot_pixel_explanation` as inline SVG: for each of the k top classes,
    one bar per stream (what it adds to that class's logit) and a diamond for their sum, the
    logit. Axis: logit; legend above the plot."""
    e = explanation
    shown = top_classes(e, k)
    values = [float(e.contributions[s][c]) for s in e.streams for c in shown]
    totals = [float(e.logits[c]) for c in shown]
    ticks = MaxNLocator(nbins=5).tick_values(min(0.0, *values, *totals), max(0.0, *values, *totals))
    low, high = float(ticks[0]), float(ticks[-1])
    left, right, top, bottom = 40, width - 6, 44, height - 22  # the plot area

    def y(v: float) -> float:
        return bottom - (v - low) / (high - low) * (bottom - top)

    font = "font-family='sans-serif' font-size='11'"
    parts = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
             f"viewBox='0 0 {width} {height}' {font}>"]
    # legend: one entry per stream, then the total
    entries = [(to_hex(STREAM_COLOURS[s]), f"{SOURCES[s]} (stride {e.feeding[s].stride})")
               for s in e.streams]
    for n, (colour, label) in enumerate(entries + [("#000", "total (the logit)")]):
        x, row_y = left + (n % 2) * 128, 6 + (n // 2) * 16
        mark = (f"<rect x='{x}' y='{row_y}' width='10' height='10' fill='{colour}'/>"
                if n < len(entries) else
                f"<polygon points='{x + 5},{row_y} {x + 10},{row_y + 5} {x + 5},{row_y + 10} "
                f"{x},{row_y + 5}' fill='#000'/>")
        parts.append(f"{mark}<text x='{x + 14}' y='{row_y + 9}'>{escape(label)}</text>")
    # axis, ticks and the zero line
    for t in ticks:
        parts.append(f"<line x1='{left - 4}' x2='{left}' y1='{y(t):.1f}' y2='{y(t):.1f}' "
                     f"stroke='#000'/><text x='{left - 6}' y='{y(t) + 4:.1f}' "
                     f"text-anchor='end'>{t:g}</text>")
    parts.append(f"<line x1='{left}' x2='{left}' y1='{top}' y2='{bottom}' stroke='#000'/>"
                 f"<line x1='{left}' x2='{right}' y1='{y(0):.1f}' y2='{y(0):.1f}' stroke='#888'/>"
                 f"<text transform='translate(11 {(top + bottom) / 2:.0f}) rotate(-90)' "
                 "text-anchor='middle'>logit</text>")
    # one group of bars per class
    group = (right - left) / len(shown)
    bar = 0.8 * group / len(e.streams)
    for i, c in enumerate(shown):
        middle = left + (i + 0.5) * group
        for n, s in enumerate(e.streams):
            v = float(e.contributions[s][c])
            x = middle + (n - len(e.streams) / 2) * bar
            parts.append(f"<rect x='{x:.1f}' y='{min(y(v), y(0)):.1f}' width='{bar:.1f}' "
                         f"height='{abs(y(v) - y(0)):.1f}' fill='{to_hex(STREAM_COLOURS[s])}'>"
                         f"<title>{SOURCES[s]} adds {v:+.2f} to {escape(classes[c])}</title></rect>")
        t = y(totals[i])
        parts.append(f"<polygon points='{middle:.1f},{t - 6:.1f} {middle + 6:.1f},{t:.1f} "
                     f"{middle:.1f},{t + 6:.1f} {middle - 6:.1f},{t:.1f}' fill='#000'>"
                     f"<title>logit of {escape(classes[c])}: {totals[i]:+.2f}</title></polygon>"
                     f"<text x='{middle:.1f}' y='{height - 6}' text-anchor='middle'>"
                     f"{escape(classes[c])}</text>")
    parts.append("</svg>")
    return "".join(parts)
