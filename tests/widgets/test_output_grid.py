"""Notebook 1's output-grid explorer, driven headless through its controls."""

import io

import numpy as np
import pytest
import torch
from PIL import Image
from support import fastest_seconds, median_move_seconds, set_controls

from fcn_lesson.lessons.output_grid import output_grid, plot_output_grid, plot_window_mismatch
from fcn_lesson.widgets.output_grid import OutputGridExplorer
from fcn_lesson.widgets.view import pngs_in

VGG, FCN = "convolutionalized VGG16", "FCN (fc6 padding 3)"
BLUE, RED = (31, 119, 180), (214, 39, 40)


def _pixels(explorer, name: str = "image") -> np.ndarray:
    """A picture of the explorer's view, as the browser gets it."""
    return np.asarray(Image.open(io.BytesIO(pngs_in(explorer.view.value)[name])).convert("RGB"))


@pytest.fixture(scope="module")
def explorer():
    return OutputGridExplorer()


@pytest.mark.parametrize("height,width,head,expected", [
    (375, 500, VGG, (5, 9)), (500, 375, VGG, (9, 5)), (224, 224, VGG, (1, 1)),
    (255, 287, VGG, (1, 2)), (375, 500, FCN, (12, 16)), (224, 225, FCN, (7, 8)),
])
def test_map_size_follows_the_sliders(explorer, height, width, head, expected):
    grid = set_controls(explorer, head=head, height=height, width=width)
    assert grid.map_size == expected
    if head == VGG:  # floor pooling, then a 7x7 fc6 without padding
        assert expected == (height // 32 - 6, width // 32 - 6)
    assert (explorer.row.max, explorer.col.max) == (expected[0] - 1, expected[1] - 1)
    assert f"{expected[0]} x {expected[1]}</b> score map" in explorer.view.value


def test_window_and_receptive_field_of_a_cell(explorer):
    grid = set_controls(explorer, head=VGG, height=375, width=500, row=2, col=4)
    assert grid.cell == (2, 4)
    # the classifier reads pool5 rows 2..8 and columns 4..10: pixels 64..287 x 128..351
    assert grid.window == (64, 128, 288, 352)
    # 404 pixels, centred on the window: 90 more on every side
    assert grid.receptive_field == (64 - 90, 128 - 90, 288 + 90, 352 + 90)
    assert "rows 64&ndash;287, columns 128&ndash;351" in explorer.view.value
    # ... and the picture shows those boxes. It spans -98 to 450 (y) and -98 to 578 (x): every
    # cell's receptive field and 8 px more, at 2 image pixels per screen pixel.
    shown = _pixels(explorer)
    assert shown.shape == (274, 338, 3)
    window = [(64 + 98) // 2, (128 + 98) // 2, (288 + 98) // 2 - 1, (352 + 98) // 2 - 1]
    top, left, bottom, right = window  # the window's edge: its outermost screen pixels
    for y, x in [(top, 150), (bottom, 150), (150, left), (150, right)]:
        assert tuple(shown[y, x]) == BLUE, (y, x)
    assert tuple(shown[top - 1, 150]) != BLUE and tuple(shown[150, right + 1]) != BLUE
    rf_top, rf_left = (-26 + 98) // 2, (38 + 98) // 2  # dashed: on for its first 6 pixels
    assert tuple(shown[rf_top, rf_left + 3]) == tuple(shown[rf_top + 3, rf_left]) == RED
    assert tuple(shown[rf_top, rf_left + 8]) != RED
    assert tuple(shown[rf_top, rf_left + (404 // 2) - 1]) == RED  # the width: 404 px
    # the score map: the chosen cell of 5 x 9 (26-px squares) is blue
    score_map = _pixels(explorer, "score map")
    assert score_map.shape == (5 * 26 + 1, 9 * 26 + 1, 3)
    assert tuple(score_map[2 * 26 + 13, 4 * 26 + 13]) == BLUE
    assert tuple(score_map[13, 13]) == (255, 255, 255)
    assert "cell (2, 4) of the 5 x 9 score map" in explorer.view.value


def test_fcn_head_windows_are_centred_on_their_32px_block(explorer):
    grid = set_controls(explorer, head=FCN, height=375, width=500, row=0, col=3)
    # cell (0, 3) covers pixels 0..31 x 96..127; its window reaches 96 px beyond each side
    assert grid.window == (-96, 0, 128, 224)
    assert grid.receptive_field == (-90 - 96, -90, 314 - 96, 314)


def test_shrinking_the_image_clamps_the_cell(explorer):
    set_controls(explorer, head=VGG, height=640, width=640, row=13, col=10)
    grid = set_controls(explorer, height=300)  # 3 x 14 map now
    assert grid.map_size == (3, 14) and grid.cell == (2, 10)
    assert explorer.row.value == 2


def test_output_grid_function_matches_the_explorer(explorer):
    grid = set_controls(explorer, head=VGG, height=480, width=400, row=3, col=1)
    assert output_grid(480, 400, 3, 1) == grid
    with pytest.raises(ValueError, match="unknown head"):
        output_grid(480, 400, head="resnet")
    with pytest.raises(ValueError, match="unknown head"):
        OutputGridExplorer(head="resnet")
    with pytest.raises(ValueError, match="outside the 9x6 map"):
        output_grid(480, 400, row=9)


def test_update_is_fast(explorer):
    set_controls(explorer, head=VGG, height=640, width=613, row=5, col=5)
    assert fastest_seconds(explorer.update) < 0.1


def test_every_control_moves_fast(explorer):
    # A move (update and render) takes 10-20 ms on a laptop core; a browser adds 30-40 ms,
    # and the lesson wants under 100 ms from key press to picture. Generous, for busy CI.
    set_controls(explorer, head=VGG, height=375, width=500, row=2, col=4)
    moves = {"height": [376, 400, 450, 500, 600, 640, 375], "width": [501, 540, 600, 640, 450, 500],
             "row": [0, 1, 3, 4, 2, 0], "col": [1, 3, 5, 8, 6, 4], "head": [FCN, VGG] * 3}
    for name, values in moves.items():
        assert median_move_seconds(getattr(explorer, name), values) < 0.08, name


def test_every_control_changes_the_picture_and_back(explorer):
    # The browser test moves each control one step and waits for a new picture.
    set_controls(explorer, head=VGG, height=375, width=500, row=2, col=4)
    start = pngs_in(explorer.view.value)["image"]
    for name, away in (("height", 376), ("width", 499), ("row", 3), ("col", 5), ("head", FCN)):
        back = getattr(explorer, name).value
        set_controls(explorer, **{name: away})
        assert pngs_in(explorer.view.value)["image"] != start, name
        set_controls(explorer, **{name: back})
        assert pngs_in(explorer.view.value)["image"] == start, name


def test_static_figures():
    grid = output_grid(375, 500, 2, 4)
    fig = plot_output_grid(grid)
    ax = fig.axes[0]
    assert "cell (2, 4) of the 5 x 9 score map" in ax.get_title()
    assert ax.get_xlabel() == "x (pixels)"
    with pytest.raises(ValueError, match="smaller than the grid"):
        plot_output_grid(grid, image=torch.zeros(100, 100, 3).numpy())
    mismatch = torch.zeros(7, 7)
    mismatch[0], mismatch[1, 0] = 0.5, 1e-4
    fig = plot_window_mismatch(mismatch)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts[:9] == ["50"] * 7 + ["1e-02", "0"]


def test_the_head_menu_is_not_truncated_and_each_head_is_explained(explorer):
    # a narrow control cut the labels to "convolutionalized…": the menu leaves 9 px a letter
    # (13-px text is about 7), after the 80-px description
    width = int(explorer.head.layout.width.removesuffix("px"))
    assert width >= 80 + 9 * max(len(head) for head in explorer.head.options)
    assert explorer.head.options == (VGG, FCN)
    for head, said in ((VGG, "without padding"), (FCN, "fc6 padded by 3")):
        set_controls(explorer, head=head)
        assert f"({head}: " in explorer.view.value and said in explorer.view.value


def test_pictures_have_their_own_size_and_a_static_png_for_readers(explorer):
    import base64

    from fcn_lesson.widgets.view import png_size

    set_controls(explorer, head=FCN, height=640, width=640)
    shown = pngs_in(explorer.view.value)
    for name, png in shown.items():  # shown at their own size: the browser does not stretch them
        width, height = png_size(png)
        assert f"<img alt='{name}' width='{width}' height='{height}'" in explorer.view.value
    assert png_size(shown["image"]) == (514, 514)  # the largest frame: 1028 image px
    bundle = explorer._repr_mimebundle_()
    static = base64.b64decode(bundle["image/png"])
    assert static == explorer.static_png() and png_size(static) == (792, 331)  # 11 x 4.6 in
    assert not bundle["text/plain"].startswith("VBox")
