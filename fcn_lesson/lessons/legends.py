"""HTML legends for pictures drawn as plain pixels (the explorers' live views): a swatch of
colour with its label, and a colour bar with the values at both ends."""

from __future__ import annotations

import functools
from html import escape

import numpy as np
from matplotlib import colormaps

__all__ = ["colour_bar", "swatch"]


def swatch(rgb, label: str) -> str:
    """A small square of colour `rgb` (0-255) followed by `label`."""
    r, g, b = (int(c) for c in rgb)
    return (f"<span style='white-space:nowrap'><span style='display:inline-block;width:11px;"
            f"height:11px;background:rgb({r},{g},{b});border:1px solid #000;margin:0 4px 0 8px;"
            f"vertical-align:middle'></span>{escape(label)}</span> ")


@functools.cache
def _gradient(cmap: str) -> str:
    """A CSS gradient through `cmap`, left (low) to right (high)."""
    stops = colormaps[cmap](np.linspace(0.0, 1.0, 9), bytes=True)[:, :3]
    return "linear-gradient(to right, " + ", ".join(f"rgb({r},{g},{b})" for r, g, b in stops) + ")"


def colour_bar(cmap: str, low: float, high: float, note: str = "", width: int = 120) -> str:
    """`low`, a bar of `cmap` `width` px wide, `high` (3 significant digits), then `note`."""
    bar = (f"<span style='display:inline-block;width:{width}px;height:10px;margin:0 4px;"
           f"vertical-align:middle;border:1px solid #888;background:{_gradient(cmap)}'></span>")
    return f"{low:.3g}{bar}{high:.3g}{note}"
