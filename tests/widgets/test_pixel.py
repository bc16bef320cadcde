"""The pixel explorer, headless: set controls through `.value`, check what it shows."""

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image
from support import scored_classroom_model

from fcn_lesson.datasets.shapes import CLASSES, ShapesDataset
from fcn_lesson.lessons.explain import explain_pixel, explain_sentence
from fcn_lesson.widgets.pixel import PixelExplorer


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
    torch.testing.assert_close(view.explanation.logits, expected.logits)
    with torch.no_grad():
        out = models["FCN-16s"](image[None])[0, :, 71, 3]
    torch.testing.assert_close(view.explanation.logits.float(), out, rtol=1e-4, atol=1e-5)
    assert view.sentence == explain_sentence(expected, CLASSES)
    assert view.sentence in explorer.readout.value
    assert view.truth == int(mask[71, 3])
    assert f"predicts <b>{CLASSES[view.explanation.prediction]}</b>" in explorer.readout.value


def test_model_and_image_switch_and_sliders_follow_the_image_size(explorer, models):
    explorer.model.value = "FCN-8s"
    view = explorer.result
    assert view.model == "FCN-8s"
    assert view.explanation.streams == ("score_fr", "score_pool4", "score_pool3")
    assert "stride 8" in explorer.readout.value
    assert (explorer.row.max, explorer.col.max) == (71, 89)
    explorer.image.value = 2
    assert explorer.result.image_index == 2


def test_a_slider_move_never_reruns_the_backbone(explorer, models, monkeypatch):
    calls = _counting(models, monkeypatch)
    for row in range(20, 25):
        explorer.row.value = row
    explorer.col.value = 5
    assert calls == [] and explorer.result.explanation.row == 24
    explorer.image.value = 0  # a new image: one backbone run, then cached
    explorer.image.value = 1
    explorer.image.value = 0
    assert len(calls) == 1


def test_picture_is_the_figure_at_its_own_size_and_readable_without_a_kernel(explorer):
    png = explorer.picture.value
    picture = Image.open(io.BytesIO(png))
    assert explorer.picture.layout.width == f"{picture.width}px"
    assert explorer.picture.layout.height == f"{picture.height}px"
    assert np.asarray(picture.convert("RGB")).std() > 10  # a drawing, not a blank
    bundle = explorer._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert base64.b64decode(bundle["image/png"]) == png
    assert "VBox" not in bundle["text/plain"]
    # every title and label lies inside the figure
    figure = explorer.figure
    renderer = figure.canvas.get_renderer()
    box = figure.bbox
    for ax in figure.axes:
        for text in (ax.title, ax.xaxis.label, ax.yaxis.label):
            if text.get_text():
                extent = text.get_window_extent(renderer)
                assert box.x0 - 1 <= extent.x0 and extent.x1 <= box.x1 + 1, text.get_text()
                assert box.y0 - 1 <= extent.y0 and extent.y1 <= box.y1 + 1, text.get_text()


def test_bad_arguments_are_refused(models, data):
    with pytest.raises(ValueError, match="outside the 72x90 image"):
        PixelExplorer(models, data, row=72)
    with pytest.raises(TypeError, match="FCN"):
        PixelExplorer({"x": torch.nn.Identity()}, data)
    with pytest.raises(ValueError, match="image must be in"):
        PixelExplorer(models, data, image=3)


def test_moving_away_and_back_redraws_the_same_picture(explorer):
    # The explorer reuses its axes between moves: nothing of the previous pixel may be left over.
    first = np.asarray(Image.open(io.BytesIO(explorer.picture.value)))
    explorer.row.value, explorer.col.value = 40, 20
    explorer.model.value = "FCN-8s"
    explorer.model.value = "FCN-16s"
    explorer.row.value, explorer.col.value = 10, 80
    again = np.asarray(Image.open(io.BytesIO(explorer.picture.value)))
    assert first.shape == again.shape and np.array_equal(first, again)
