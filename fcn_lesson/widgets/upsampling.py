"""Notebook 2's explorer: upsampling factor and kernel size -> kernel, upsampled test
pattern, and its difference from `F.interpolate(mode="bilinear", align_corners=False)`.

With FCN's setting (bilinear kernel 2s, stride s, padding s/2) the difference is zero away
from the border. Other kernel sizes show the two ways a transposed convolution goes wrong:
phases with unequal gains (a checkerboard) and, when kernel size and factor differ in
parity, a half-pixel shift that no padding can remove.

Each panel is an array coloured with its colormap and enlarged to a small PNG (a few
milliseconds); titles and colour scales are HTML, sent with the pictures as one value
(`fcn_lesson.widgets.view`). Redrawing a matplotlib figure on every move took several times
longer, mostly for its text. Matplotlib draws only the static picture.
"""

from __future__ import annotations

import math

import ipywidgets as widgets
import numpy as np
from matplotlib import colormaps

from fcn_lesson.lessons.legends import colour_bar
from fcn_lesson.lessons.upsampling import (
    KERNEL_KINDS,
    Panel,
    UpsamplingResult,
    compare_upsampling,
    pattern_image,
    plot_upsampling,
    upsampling_panels,
)
from fcn_lesson.widgets.base import Explorer
from fcn_lesson.widgets.view import encode_png, figure_png, panel_html, row_html, view_html

__all__ = ["UpsamplingExplorer"]

# Each panel is enlarged by a whole factor (pixels stay sharp squares) to at most this many
# screen pixels a side: kernels of 1 to 32 taps and outputs of 24 to 96 pixels come out 168
# to 216 pixels wide.
PANEL_PX = 216


_NOTE = ("Each square is one pixel (in the kernel: one tap); row 0 at the top, column 0 at the "
         "left. Below each panel: its colour scale.")


def panel_rgb(panel: Panel) -> np.ndarray:
    """(H, W, 3) uint8: the panel's values through its colormap, clipped to [vmin, vmax]."""
    scaled = (panel.values - panel.vmin) / (panel.vmax - panel.vmin)
    rgba = colormaps[panel.cmap](np.clip(scaled, 0.0, 1.0), bytes=True)
    return np.ascontiguousarray(rgba[..., :3])


def panel_zoom(panel: Panel) -> int:
    return max(1, PANEL_PX // max(panel.values.shape))


def _colour_scale(panel: Panel) -> str:
    """The panel's colour scale as HTML: its gradient between the values at both ends."""
    middle = " (white: 0)" if panel.vmin == -panel.vmax else ""
    return colour_bar(panel.cmap, panel.vmin, panel.vmax, middle, width=100)


class UpsamplingExplorer(Explorer):
    """Sliders for the factor and kernel size, a kernel kind, and four images: the kernel,
    the transposed convolution of a test pattern, `F.interpolate` of it, and their difference.

    `update()` recomputes from the controls' values, writes the readout, titles and colour
    scales, draws the four panels, sends the whole view as one HTML value (`view`) and returns
    the `UpsamplingResult`; moving a control calls it.
    Display the explorer with `display(explorer)`.
    """

    what = "upsampling explorer"

    def __init__(self, factor: int = 2, kernel_size: int = 4, kind: str = "bilinear",
                 pattern_size: int = 12):
        self.image = pattern_image(pattern_size)
        self.factor = widgets.IntSlider(factor, min=2, max=8, description="factor s")
        self.kernel_size = widgets.IntSlider(kernel_size, min=1, max=32,
                                             description="kernel k")
        # A menu, not toggle buttons: with toggle buttons a change of kind took 113 and 121 ms
        # from click to picture at p95 in two browser runs, the sliders 83-104 ms.
        self.kind = widgets.Dropdown(options=KERNEL_KINDS, value=kind, description="kernel",
                                     layout=widgets.Layout(width="220px"))
        self.view = widgets.HTML()
        self._start((self.factor, self.kernel_size, self.kind))

    def update(self) -> UpsamplingResult:
        r = compare_upsampling(self.image, self.factor.value, self.kernel_size.value,
                               self.kind.value)
        # Fixed-width columns: the panels change size with the controls, the layout does not.
        panels = []
        for panel in upsampling_panels(r):
            height, width = panel.values.shape
            what = "taps" if panel.title == "kernel" else "pixels"
            panels.append(panel_html(f"<b>{panel.title}</b><br>{height} x {width} {what}",
                                     encode_png(panel_rgb(panel), panel_zoom(panel)), panel.title,
                                     below=_colour_scale(panel), width=PANEL_PX + 14))
        fcn = " (FCN's setting)" if r.kind == "bilinear" and r.kernel_size == 2 * r.factor else ""
        height, width = r.upsampled.shape
        if math.isnan(r.interior_max_diff):  # every pixel is within `margin` of the border
            compared = (f"no pixel of this {height} x {width} output is more than {r.margin} px "
                        f"from the border, so there is no interior to compare; within the border "
                        f"max |conv - interpolate| is {r.border_max_diff:.2g}")
        else:
            compared = (f"max |conv - interpolate|: {r.interior_max_diff:.2g} more than "
                        f"{r.margin} px from the border, {r.border_max_diff:.2g} within it")
        readout = (
            f"<b>k = {r.kernel_size}, s = {r.factor}, {r.kind}{fcn}</b>: {r.verdict}.<br>"
            f"{compared}; checkerboard variance {r.checkerboard_var:.3g}; shift {r.shift:g} px.")
        self.view.value = view_html(readout, _NOTE, row_html(*panels))
        return r

    def static_png(self) -> bytes:
        """The current view as a matplotlib figure, with axes and colour bars: what a reader
        without a kernel sees in place of the widget."""
        return figure_png(plot_upsampling(self.result))

    def widget(self) -> widgets.Widget:
        return widgets.VBox([widgets.HBox([self.factor, self.kernel_size, self.kind]), self.view])
