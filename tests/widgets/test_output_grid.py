"""Notebook 1's output-grid explorer, driven headless through its controls."""


import pytest
import torch
from support import fastest_seconds, set_controls

from fcn_lesson.lessons.output_grid import output_grid, plot_output_grid, plot_window_mismatch
from fcn_lesson.widgets.output_grid import OutputGridExplorer

VGG, FCN = "convolutionalized VGG16", "FCN (fc6 padding 3)"


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
    assert f"{expected[0]} x {expected[1]}</b> score map" in explorer.readout.value


def test_window_and_receptive_field_of_a_cell(explorer):
    grid = set_controls(explorer, head=VGG, height=375, width=500, row=2, col=4)
    assert grid.cell == (2, 4)
    # the classifier reads pool5 rows 2..8 and columns 4..10: pixels 64..287 x 128..351
    assert grid.window == (64, 128, 288, 352)
    # 404 pixels, centred on the window: 90 more on every side
    assert grid.receptive_field == (64 - 90, 128 - 90, 288 + 90, 352 + 90)
    assert "rows 64&ndash;287, columns 128&ndash;351" in explorer.readout.value
    # ... and the picture shows those boxes
    artists = explorer._artists
    assert (artists.window.get_x(), artists.window.get_y()) == (128, 64)
    assert artists.window.get_width() == artists.window.get_height() == 224
    assert (artists.rf.get_x(), artists.rf.get_y(), artists.rf.get_width()) == (38, -26, 404)
    assert len(artists.centres.get_offsets()) == 5 * 9


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


def test_render_redraws_in_place(explorer):
    set_controls(explorer, head=VGG, height=375, width=500, row=0, col=0)
    before = explorer.picture.value
    assert before[:8] == b"\x89PNG\r\n\x1a\n"
    set_controls(explorer, col=5)
    assert explorer.picture.value != before


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


def test_head_buttons_are_not_truncated_and_explain_themselves(explorer):
    # ToggleButtons cut labels at a fixed button width unless told "auto"
    assert explorer.head.style.button_width == "auto"
    assert len(explorer.head.tooltips) == len(explorer.head.options) == 2
    assert all(len(t) > 20 for t in explorer.head.tooltips)


def test_picture_has_its_own_size_and_a_static_png_for_readers(explorer):
    import base64

    from fcn_lesson.widgets.png import png_size

    explorer.render()
    width, height = png_size(explorer.picture.value)
    assert explorer.picture.layout.width == f"{width}px"
    assert explorer.picture.layout.height == f"{height}px"
    bundle = explorer._repr_mimebundle_()
    assert base64.b64decode(bundle["image/png"]) == explorer.picture.value
    assert not bundle["text/plain"].startswith("VBox")
