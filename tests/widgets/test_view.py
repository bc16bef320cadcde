"""The explorers' PNG encoding: the same pixels as matplotlib's savefig, zoomed exactly."""

import io

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from fcn_lesson.widgets.view import encode_png, figure_png


def _decode(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def test_encode_png_round_trips_and_zooms_nearest_neighbour():
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    assert np.array_equal(_decode(encode_png(rgb)), rgb)
    zoomed = _decode(encode_png(rgb, zoom=3))
    assert zoomed.shape == (15, 21, 3)
    assert np.array_equal(zoomed[::3, ::3], rgb) and np.array_equal(zoomed[2::3, 1::3], rgb)


def test_figure_png_matches_savefig():
    figure = Figure(figsize=(3, 2), dpi=50)
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    ax.imshow(np.arange(12.0).reshape(3, 4))
    ax.set_title("a title")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    expected = _decode(buffer.getvalue())
    assert expected.shape == (100, 150, 3)
    assert np.array_equal(_decode(figure_png(figure)), expected)
