"""The pixel explorer, headless: set controls through `.value`, check what it shows."""

import base64
import io
import statistics
import time

import numpy as np
import pytest
import torch
from PIL import Image
from support import scored_classroom_model

from fcn_lesson.datasets.shapes import CLASSES, ShapesDataset
from fcn_lesson.lessons.explain import explain_from_maps, explain_pixel, explain_sentence, score_maps
from fcn_lesson.lessons.explain_panels import stream_rgb
from fcn_lesson.lessons.viz import to_numpy_image
from fcn_lesson.widgets.pixel import PixelExplorer
from fcn_lesson.widgets.view import pngs_in


@pytest.fixture(scope="module")
def data():
    return ShapesDataset(3, (72, 90), seed=7)  # not a multiple of 32


@pytest.fixture(scope="module")
def models():
    return {"FCN-16s": scored_classroom_model("fcn16s"), "FCN-8s": scored_classroom_model("fcn8s", 1)}


@pytest.fixture
def explorer(models, data):
    return PixelExplorer(models, data, image=1, row=10, col=80)


def _counting(models, monkeypatch):
    calls = []
    for m in models.values():
        original = m.backbone.forward
        monkeypatch.setattr(m.backbone, "forward", lambda x, _f=original: calls.append(1) or _f(x))
    return calls


def _rgb(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def _shown(explorer) -> dict[str, bytes]:
    """The pictures the explorer's view shows, by panel, as the browser gets them."""
    return pngs_in(explorer.view.value)


def test_controls_pick_the_pixel_and_the_readout_explains_it(explorer, models, data):
    view = explorer.result
    assert (view.model, view.image_index) == ("FCN-16s", 1)
    assert (view.explanation.row, view.explanation.col) == (10, 80)
    explorer.row.value, explorer.col.value = 71, 3
    view = explorer.result
    assert (view.explanation.row, view.explanation.col) == (71, 3)
    image, mask = data[1]
    # The same explanation as explain_pixel's, and the logits are the model's
    expected = explain_pixel(models["FCN-16s"], image, 71, 3)
    # the explorer's maps come from a batch: equal to one image's up to float rounding
    torch.testing.assert_close(view.explanation.logits, expected.logits, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        out = models["FCN-16s"](image[None])[0, :, 71, 3]
    torch.testing.assert_close(view.explanation.logits.float(), out, rtol=1e-4, atol=1e-5)
    assert view.sentence == explain_sentence(expected, CLASSES)
    assert view.sentence in explorer.view.value
    assert view.truth == int(mask[71, 3])
    predicted = CLASSES[view.explanation.prediction]
    assert f"predicts <b>{predicted}</b>" in explorer.view.value
    # the titles name the pixel, the prediction and what each stream adds to it
    assert "pixel (71, 3)" in explorer.view.value
    assert f"FCN-16s predicts: {predicted}" in explorer.view.value
    pool4 = float(view.explanation.contributions["score_pool4"][view.explanation.prediction])
    assert f"pool4 cells (stride 16) add {pool4:+.1f} to {predicted}" in explorer.view.value
    chart = explorer.view.value[explorer.view.value.index("<svg"):]
    assert predicted in chart and "logit" in chart


def test_model_and_image_switch_and_sliders_follow_the_image_size(explorer, models):
    assert set(_shown(explorer)) == {"receptive fields", "prediction", "score_fr", "score_pool4"}
    explorer.model.value = "FCN-8s"
    view = explorer.result
    assert view.model == "FCN-8s"
    assert view.explanation.streams == ("score_fr", "score_pool4", "score_pool3")
    assert "stride 8" in explorer.view.value
    assert "score_pool3" in _shown(explorer)  # FCN-16s has no pool3 skip, FCN-8s has
    assert "pool3 cells (stride 8)" in explorer.view.value
    assert (explorer.row.max, explorer.col.max) == (71, 89)
    explorer.image.value = 2
    assert explorer.result.image_index == 2


def test_no_control_move_runs_the_backbone(explorer, models, monkeypatch):
    # building the explorer ran every model on every image; moves only read the cached maps
    assert all(cache.up_front for cache in explorer.score_maps.values())
    calls = _counting(models, monkeypatch)
    for row in range(20, 25):
        explorer.row.value = row
    explorer.col.value = 5
    explorer.model.value = "FCN-8s"
    for image in (0, 2, 1):
        explorer.image.value = image
    explorer.model.value = "FCN-16s"
    assert calls == [] and explorer.result.explanation.row == 24


def test_the_images_change_when_a_control_moves(explorer):
    before = _shown(explorer)
    explorer.row.value = 11
    after_row = _shown(explorer)
    for panel in ("receptive fields", "prediction"):  # the cross moves
        assert after_row[panel] != before[panel]
    explorer.col.value = 79
    assert _shown(explorer)["receptive fields"] != after_row["receptive fields"]
    before = _shown(explorer)
    explorer.model.value = "FCN-8s"
    assert _shown(explorer)["prediction"] != before["prediction"]
    before = _shown(explorer)
    explorer.image.value = 2
    assert _shown(explorer)["receptive fields"] != before["receptive fields"]


def test_moving_away_and_back_shows_the_same_images(explorer):
    first = explorer.view.value
    explorer.row.value, explorer.col.value = 40, 20
    explorer.model.value = "FCN-8s"
    explorer.image.value = 2
    assert explorer.view.value != first
    explorer.image.value = 1
    explorer.model.value = "FCN-16s"
    explorer.row.value, explorer.col.value = 10, 80
    assert explorer.view.value == first


def test_the_receptive_field_frames_are_where_explain_from_maps_says(explorer, models, data):
    explorer.model.value = "FCN-8s"
    explorer.row.value, explorer.col.value = 36, 45  # pool3's field lies inside the image here
    image, _ = data[1]
    e = explain_from_maps(models["FCN-8s"], score_maps(models["FCN-8s"], image), 72, 90, 36, 45)
    top, left, bottom, right = (int(v) for v in e.receptive_fields["score_pool3"])
    assert 0 < top and 0 < left and bottom < 72 and right < 90
    panel, zoom = _rgb(_shown(explorer)["receptive fields"]), explorer.zoom
    assert panel.shape == (72 * zoom, 90 * zoom, 3)
    picture = np.repeat(np.repeat(to_numpy_image(image), zoom, 0), zoom, 1)
    green = stream_rgb("score_pool3")
    middle_y, middle_x = (top + bottom) * zoom // 2, (left + right) * zoom // 2
    # the frame's outer edge is the field's edge: on it the stream's colour, just outside and
    # just inside the frame the image
    for y, x, outward in ((top * zoom, middle_x, (-1, 0)), (bottom * zoom - 1, middle_x, (1, 0)),
                          (middle_y, left * zoom, (0, -1)), (middle_y, right * zoom - 1, (0, 1))):
        assert tuple(panel[y, x]) == green, (y, x)
        for step in (1, -2):  # one pixel outside, then the first pixel inside the 2-pixel frame
            ys, xs = y + step * outward[0], x + step * outward[1]
            assert tuple(panel[ys, xs]) == tuple(picture[ys, xs]), (ys, xs)


def test_panels_are_pictures_at_their_own_size_and_readable_without_a_kernel(explorer):
    for name, png in _shown(explorer).items():
        rgb = _rgb(png)
        # shown at the PNG's own size: the browser does not stretch (and blur) it
        assert f"<img alt='{name}' width='{rgb.shape[1]}' height='{rgb.shape[0]}'" in explorer.view.value
        assert rgb.std() > 10, name  # a drawing, not a blank
    # a feeding panel is four cells wide, each 32 x zoom pixels, whatever its stride, and its
    # title is as wide, so that it wraps
    side = 4 * 32 * explorer.zoom
    assert _rgb(_shown(explorer)["score_pool4"]).shape == (side, side, 3)
    assert f"<div style='width:{side}px;flex:none'><div><b>pool4 cells" in explorer.view.value
    assert "<svg" in explorer.view.value
    # the static picture: the matplotlib figure of the same view, beside the live widget
    bundle = explorer._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    static = Image.open(io.BytesIO(base64.b64decode(bundle["image/png"])))
    assert static.width > 3 * static.height  # the figure's row of panels, not one panel
    assert np.asarray(static.convert("RGB")).std() > 10
    assert "VBox" not in bundle["text/plain"]


def test_bad_arguments_are_refused(models, data):
    with pytest.raises(ValueError, match="outside the 72x90 image"):
        PixelExplorer(models, data, row=72)
    with pytest.raises(TypeError, match="FCN"):
        PixelExplorer({"x": torch.nn.Identity()}, data)
    with pytest.raises(ValueError, match="image must be in"):
        PixelExplorer(models, data, image=3)


def test_every_control_moves_fast(explorer):
    # The Python side of a move must leave the browser time to show it within 100 ms: about 20 ms
    # on a laptop CPU; the bound is generous so that a busy test machine does not fail it. Every
    # timed move goes to a setting not shown before (a setting seen again is not redrawn).
    timings = {explorer.row: [], explorer.col: [], explorer.model: [], explorer.image: []}

    def timed(control, value):
        start = time.perf_counter()
        control.value = value
        timings[control].append(time.perf_counter() - start)

    for row in range(12, 22):
        timed(explorer.row, row)
    for col in range(60, 70):
        timed(explorer.col, col)
    for row, model in zip(range(30, 40), ("FCN-8s", "FCN-16s") * 5, strict=True):
        explorer.row.value = row  # untimed: so that the model move lands on a new pixel
        timed(explorer.model, model)
    for image in (0, 2) * 5:
        explorer.row.value += 1
        timed(explorer.image, image)
    for control, seconds in timings.items():
        assert statistics.median(seconds) < 0.060, (control.description, seconds)
