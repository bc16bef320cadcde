"""The explorers' views: PNG encoding, and each view as one piece of HTML.

Compression is fast, since a slider move re-encodes the picture: zlib level 1 instead of
matplotlib's default 6 makes the files a little larger and the encoding several times faster;
for a picture in the notebook that is the right trade.

An explorer's whole view (titles, pictures, readouts) goes to the browser as one HTML value,
its pictures inlined as `data:` URIs. Each widget value is a message of its own, and the browser
lays the page out again after each: a pixel-explorer move that set ten widgets (five titles, five
`ipywidgets.Image`s) took 123-171 ms from key press to repaint at p95 in notebook 5, a long page,
where its Python side took under 40 ms (our own measurement, JupyterLab and Chromium on a
2-core CPU). One value per move is one message and one layout.
"""

import base64
import html
import io
import re

import ipywidgets as widgets
import numpy as np
from matplotlib.figure import Figure
from PIL import Image


def encode_png(rgb: np.ndarray, zoom: int = 1) -> bytes:
    """An (H, W, 3) uint8 array as PNG bytes, each pixel repeated `zoom` x `zoom` times
    (nearest-neighbour, so pixels stay sharp where the browser would blur them)."""
    if zoom > 1:
        rgb = np.repeat(np.repeat(rgb, zoom, axis=0), zoom, axis=1)
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buffer, format="png", compress_level=1)
    return buffer.getvalue()


def figure_png(figure: Figure) -> bytes:
    """A matplotlib figure (on an Agg canvas) as PNG bytes: what `savefig` writes, faster."""
    figure.canvas.draw()
    return encode_png(np.asarray(figure.canvas.buffer_rgba())[..., :3])


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) in pixels, read from a PNG's header (its IHDR chunk)."""
    if png[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def img_html(png: bytes, name: str) -> str:
    """An <img> holding PNG bytes, named `name` (its alt text), at the PNG's own size: left to
    itself the browser stretches a picture to its container, blurring the figure's text."""
    width, height = png_size(png)
    return (f"<img alt='{html.escape(name, quote=True)}' width='{width}' height='{height}' "
            f"style='max-width:none;image-rendering:pixelated;display:block' "
            f"src='data:image/png;base64,{base64.b64encode(png).decode('ascii')}'>")


_IMG = re.compile(r"<img alt='([^']*)' [^>]*src='data:image/png;base64,([A-Za-z0-9+/=]*)'>")


def pngs_in(view: str) -> dict[str, bytes]:
    """The pictures of an explorer's HTML view (`img_html`), by name: what the browser shows."""
    return {html.unescape(name): base64.b64decode(data) for name, data in _IMG.findall(view)}


def panel_html(title: str, png: bytes, name: str, below: str = "", width: int | None = None) -> str:
    """A titled picture: `title` (HTML) above the PNG, `below` (HTML) under it, in a column
    `width` px wide (so that long titles wrap) or as wide as its content."""
    size = f"width:{width}px;" if width else ""
    return (f"<div style='{size}flex:none'><div>{title}</div>{img_html(png, name)}"
            f"{f'<div>{below}</div>' if below else ''}</div>")


def row_html(*items: str) -> str:
    """Items side by side, top-aligned, wrapping onto a new line when the notebook is narrow."""
    return ("<div style='display:flex;flex-wrap:wrap;gap:6px 14px;align-items:flex-start;"
            f"margin:4px 0'>{''.join(items)}</div>")


def view_html(*blocks: str) -> str:
    """An explorer's whole view: blocks one under the other, at a readable line height (an HTML
    widget's own is a control's, 28 px)."""
    return f"<div style='line-height:1.35'>{''.join(f'<div>{b}</div>' for b in blocks)}</div>"


def static_bundle(widget: widgets.Widget, png: bytes, what: str) -> dict:
    """The MIME bundle of an explorer: the live widget, and beside it a PNG of the current view.

    Where a kernel runs, Jupyter shows the widget; where none does (nbviewer, GitHub, a notebook
    opened before its kernel), a reader sees the PNG, the explorer's initial view, instead of
    the widget's raw text.
    """
    data = widget._repr_mimebundle_()
    data["image/png"] = base64.b64encode(png).decode("ascii")
    data["text/plain"] = f"<{what}: run the notebook to use it>"
    return data
