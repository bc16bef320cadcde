"""The pixel explanation's fast panels: frames, shading and numbers land where the boxes say."""

import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
from support import scored_classroom_model

from fcn_lesson.lessons.explain import STREAMS, explain_pixel, top_classes
from fcn_lesson.lessons.explain_panels import (
    OUTSIDE,
    contributions_svg,
    feeding_panel,
    feeding_window,
    mark_pixel,
    outline,
    receptive_field_panel,
    shade,
    stream_rgb,
)
from fcn_lesson.lessons.viz import to_numpy_image

HEIGHT, WIDTH = 75, 101  # not multiples of 32: cells at the bottom and right lie past the image
RED = (255, 0, 0)


@pytest.fixture(scope="module")
def image():
    return torch.rand(3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(2))


@pytest.fixture(scope="module")
def explanation(image):
    return explain_pixel(scored_classroom_model("fcn8s"), image, HEIGHT - 3, 40)


def _blank(height=20, width=30):
    return np.zeros((height, width, 3), dtype=np.uint8)


def test_outline_draws_inside_the_box_and_clips_at_the_canvas_edges():
    canvas = _blank()
    outline(canvas, (2, 3, 10, 12), RED)
    painted = (canvas == RED).all(-1)
    assert painted[2:4, 3:12].all() and painted[8:10, 3:12].all()  # top and bottom, 2 thick
    assert painted[2:10, 3:5].all() and painted[2:10, 10:12].all()  # left and right
    assert painted.sum() == 9 * 8 - 5 * 4 and not painted[4:8, 5:10].any()
    # hanging off the top left: only the edges inside are drawn, none wraps to the far side
    canvas = _blank()
    outline(canvas, (-6, -5, 8, 9), RED)
    painted = (canvas == RED).all(-1)
    assert painted[6:8, :9].all() and painted[:8, 7:9].all()
    assert painted.sum() == 2 * 9 + 2 * 6


def test_shade_blends_inside_the_box_only():
    canvas = _blank() + 100
    shade(canvas, (-3, 20, 5, 40), (200, 0, 100), alpha=0.5)
    assert (canvas[:5, 20:] == (150, 50, 100)).all()
    assert (canvas[5:] == 100).all() and (canvas[:, :20] == 100).all()


def test_the_cross_is_centred_on_the_pixel():
    canvas = _blank(40, 40) + 128
    mark_pixel(canvas, 5, 7, zoom=4)  # pixel (5, 7) covers canvas rows 20-23, columns 28-31
    black = (canvas == 0).all(-1)
    rows, cols = black.nonzero()
    assert (rows.min() + rows.max()) / 2 == 21.5 and (cols.min() + cols.max()) / 2 == 29.5
    assert black[21:23, 29:31].all()


def test_receptive_field_panel_frames_each_stream_at_its_box(image, explanation):
    panel = receptive_field_panel(to_numpy_image(image), explanation, zoom=2)
    assert panel.shape == (2 * HEIGHT, 2 * WIDTH, 3)
    top, left, bottom, right = (int(v) for v in explanation.receptive_fields["score_pool3"])
    assert top > 0 and left > 0  # the pool3 field's top and left edges lie inside the image
    assert tuple(panel[2 * top, left + right]) == stream_rgb("score_pool3")
    assert tuple(panel[top + bottom, 2 * left]) == stream_rgb("score_pool3")


def test_a_feeding_panel_is_four_cells_around_the_feeding_cells(image, explanation):
    picture = to_numpy_image(image)
    for stream in STREAMS:
        cells = explanation.feeding[stream]
        top, left, bottom, right = feeding_window(explanation, stream)
        assert bottom - top == right - left == 4 * cells.stride
        for box in cells.cell_boxes():
            assert top <= box[0] and box[2] <= bottom and left <= box[1] and box[3] <= right
        panel = feeding_panel(picture, explanation, stream, zoom=2)
        scale = 64 // cells.stride  # every cell is 64 canvas pixels wide
        assert panel.shape == (4 * 64, 4 * 64, 3)
        # the window's corners hold no cell: the image as it is, or grey past its edges
        for y, x in ((top, left), (top, right - 1), (bottom - 1, left), (bottom - 1, right - 1)):
            inside = 0 <= y < HEIGHT and 0 <= x < WIDTH
            expected = tuple(picture[y, x]) if inside else OUTSIDE
            if not any(b[0] <= y < b[2] and b[1] <= x < b[3] for b in cells.cell_boxes()):
                assert tuple(panel[(y - top) * scale, (x - left) * scale]) == expected
    # this pixel sits near the bottom: pool3's window reaches past the image, onto grey
    assert feeding_window(explanation, "score_pool3")[2] > HEIGHT


def test_the_bar_chart_has_a_bar_per_stream_and_class_and_a_legend(explanation):
    names = [f"class {k}" for k in range(len(explanation.logits))]
    svg = ET.fromstring(contributions_svg(explanation, names, k=3))
    ns = "{http://www.w3.org/2000/svg}"
    colours = [r.get("fill") for r in svg.iter(f"{ns}rect")]
    for stream in STREAMS:  # one legend square and three bars per stream
        hex_colour = "#{:02x}{:02x}{:02x}".format(*stream_rgb(stream))
        assert colours.count(hex_colour) == 1 + 3
    texts = [t.text for t in svg.iter(f"{ns}text")]
    assert {"logit", "pool3 (stride 8)", "fc7 (stride 32)", "total (the logit)"} <= set(texts)
    assert [t for t in texts if t.startswith("class")] == [names[c] for c in top_classes(explanation)]
