"""Notebook 2's explorer: upsampling factor and kernel size -> kernel, upsampled test
pattern, and its difference from `F.interpolate(mode="bilinear", align_corners=False)`.

With FCN's setting (bilinear kernel 2s, stride s, padding s/2) the difference is zero away
from the border. Other kernel sizes show the two ways a transposed convolution goes wrong:
phases with unequal gains (a checkerboard) and, when kernel size and factor differ in
parity, a half-pixel shift that no padding can remove.

Each panel is an array coloured with its colormap and enlarged to a small PNG (a few
milliseconds); titles and colour scales are HTML. Redrawing a matplotlib figure on every move
took several times longer, mostly for its text. Matplotlib draws only the static picture.
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
from fcn_lesson.widgets.png import encode_png, figure_png, show_png

__all__ = ["UpsamplingExplorer"]

# Each panel is enlarged by a whole factor (pixels stay sharp squares) to at most this many
# screen pixels a side: kernels of 1 to 32 taps and outputs of 24 to 96 pixels come out 168
# to 216 pixels wide.
PANEL_PX = 216


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
    scales, and returns the `UpsamplingResult`; moving a control calls it, then `render()`
    puts the four panels' PNGs in place (after the text, so they are the last to load).
    Display the explorer with `display(explorer)`.
    """

    what = "upsampling explorer"

    def __init__(self, factor: int = 2, kernel_size: int = 4, kind: str = "bilinear",
                 pattern_size: int = 12):
        self.image = pattern_image(pattern_size)
        self.factor = widgets.IntSlider(factor, min=2, max=8, description="factor s")
        self.kernel_size = widgets.IntSlider(kernel_size, min=1, max=32,
                                             description="kernel k")
        self.kind = widgets.ToggleButtons(options=KERNEL_KINDS, value=kind,
                                          description="kernel")
        self.readout = widgets.HTML()
        self.pictures = [widgets.Image(format="png") for _ in range(4)]
        self.titles = [widgets.HTML() for _ in range(4)]
        self.scales = [widgets.HTML() for _ in range(4)]
        self._start((self.factor, self.kernel_size, self.kind))

    def update(self) -> UpsamplingResult:
        r = compare_upsampling(self.image, self.factor.value, self.kernel_size.value,
                               self.kind.value)
        for panel, title, scale in zip(upsampling_panels(r), self.titles, self.scales,
                                       strict=True):
            height, width = panel.values.shape
            what = "taps" if panel.title == "kernel" else "pixels"
            title.value = f"<b>{panel.title}</b><br>{height} x {width} {what}"
            scale.value = _colour_scale(panel)
        fcn = " (FCN's setting)" if r.kind == "bilinear" and r.kernel_size == 2 * r.factor else ""
        height, width = r.upsampled.shape
        if math.isnan(r.interior_max_diff):  # every pixel is within `margin` of the border
            compared = (f"no pixel of this {height} x {width} output is more than {r.margin} px "
                        f"from the border, so there is no interior to compare; within the border "
                        f"max |conv - interpolate| is {r.border_max_diff:.2g}")
        else:
            compared = (f"max |conv - interpolate|: {r.interior_max_diff:.2g} more than "
                        f"{r.margin} px from the border, {r.border_max_diff:.2g} within it")
        self.readout.value = (
            f"<b>k = {r.kernel_size}, s = {r.factor}, {r.kind}{fcn}</b>: {r.verdict}.<br>"
            f"{compared}; checkerboard variance {r.checkerboard_var:.3g}; shift {r.shift:g} px.")
        return r

    def render(self) -> None:
        for panel, picture in zip(upsampling_panels(self.result), self.pictures, strict=True):
            show_png(picture, encode_png(panel_rgb(panel), panel_zoom(panel)))

    def static_png(self) -> bytes:
        """The current view as a matplotlib figure, with axes and colour bars: what a reader
        without a kernel sees in place of the widget."""
        return figure_png(plot_upsampling(self.result))

    def widget(self) -> widgets.Widget:
        controls = widgets.HBox([self.factor, self.kernel_size, self.kind])
        # Fixed-width columns: the panels change size with the controls, the layout does not.
        panels = widgets.HBox(
            [widgets.VBox(column, layout=widgets.Layout(width=f"{PANEL_PX + 14}px"))
             for column in zip(self.titles, self.pictures, self.scales, strict=True)],
            layout=widgets.Layout(flex_flow="row wrap"))
        note = widgets.HTML("Each square is one pixel (in the kernel: one tap); row 0 at the top, "
                            "column 0 at the left. Below each panel: its colour scale.")
        return widgets.VBox([controls, self.readout, note, panels])
