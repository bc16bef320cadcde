"""PNG encoding for the explorers: fast compression, since a slider move re-encodes the picture.

zlib level 1 instead of matplotlib's default 6 makes the files a little larger and the
encoding several times faster; for a picture in the notebook that is the right trade.
"""

import io

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
