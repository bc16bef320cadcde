"""PNG encoding for the explorers: fast compression, since a slider move re-encodes the picture.

zlib level 1 instead of matplotlib's default 6 makes the files a little larger and the
encoding several times faster; for a picture in the notebook that is the right trade.
"""

import base64
import io

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


def show_png(picture: widgets.Image, png: bytes) -> None:
    """Put PNG bytes into an Image widget and pin its size to theirs: left to itself the browser
    stretches the picture to its container, blurring the figure's text."""
    width, height = (f"{n}px" for n in png_size(png))
    if (picture.layout.width, picture.layout.height) != (width, height):
        picture.layout.width, picture.layout.height = width, height
    picture.value = png


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
