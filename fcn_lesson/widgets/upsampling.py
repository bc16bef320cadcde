"""Notebook 2's explorer: upsampling factor and kernel size -> kernel, upsampled test
pattern, and its difference from `F.interpolate(mode="bilinear", align_corners=False)`.

With FCN's setting (bilinear kernel 2s, stride s, padding s/2) the difference is zero away
from the border. Other kernel sizes show the two ways a transposed convolution goes wrong:
phases with unequal gains (a checkerboard) and, when kernel size and factor differ in
parity, a half-pixel shift that no padding can remove.
"""

from __future__ import annotations

import math

import ipywidgets as widgets
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from fcn_lesson.lessons.upsampling import (
    KERNEL_KINDS,
    UpsamplingResult,
    compare_upsampling,
    pattern_image,
)
from fcn_lesson.widgets.base import Explorer
from fcn_lesson.widgets.png import figure_png, show_png

__all__ = ["UpsamplingExplorer"]


class UpsamplingExplorer(Explorer):
    """Sliders for the factor and kernel size, a kernel kind, and four images: the kernel,
    the transposed convolution of a test pattern, `F.interpolate` of it, and their difference.

    `update()` recomputes from the controls' values, moves the figure's artists and returns
    the `UpsamplingResult`; moving a control calls it, then `render()` redraws the picture in
    place (a PNG in an `ipywidgets.Image`). Display the explorer with `display(explorer)`.
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
        self.picture = widgets.Image(format="png")
        self.figure = Figure(figsize=(11, 3), dpi=72)
        FigureCanvasAgg(self.figure)
        axes = self.figure.subplots(1, 4)
        titles = ("kernel", "transposed convolution", "F.interpolate (bilinear)",
                  "difference: conv - interpolate")
        self._images = []
        for ax, title, cmap in zip(axes, titles, ("viridis", "gray", "gray", "RdBu_r"),
                                   strict=True):
            self._images.append(ax.imshow(np.zeros((2, 2)), cmap=cmap))
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("column")
            ax.set_ylabel("row")
            # cell indices: whole numbers only (the default locator put ticks at 2.5, 7.5)
            ax.xaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))
            ax.yaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))
        self.figure.colorbar(self._images[0], ax=axes[0], fraction=0.046)
        self.figure.colorbar(self._images[3], ax=axes[3], fraction=0.046)
        self._start((self.factor, self.kernel_size, self.kind))

    def update(self) -> UpsamplingResult:
        r = compare_upsampling(self.image, self.factor.value, self.kernel_size.value,
                               self.kind.value)
        kernel_im, conv_im, ref_im, diff_im = self._images
        for im, data in ((kernel_im, r.kernel), (conv_im, r.upsampled), (ref_im, r.reference),
                         (diff_im, r.difference)):
            im.set_data(data.numpy())
            h, w = data.shape
            im.set_extent((-0.5, w - 0.5, h - 0.5, -0.5))
            im.axes.set_xlim(-0.5, w - 0.5)
            im.axes.set_ylim(h - 0.5, -0.5)
        kernel_im.set_clim(0, float(r.kernel.max()))
        for im in (conv_im, ref_im):
            im.set_clim(0, 1.3)
        limit = max(float(r.difference.abs().max()), 1e-3)
        diff_im.set_clim(-limit, limit)
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

    def layout(self) -> None:
        self.figure.tight_layout()

    def render(self) -> None:
        show_png(self.picture, figure_png(self.figure))

    def widget(self) -> widgets.Widget:
        controls = widgets.HBox([self.factor, self.kernel_size, self.kind])
        return widgets.VBox([controls, self.readout, self.picture])
