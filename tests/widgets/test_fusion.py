"""The fusion explorer, headless: set controls through `.value`, check what it shows."""

import io
import time

import numpy as np
import pytest
import torch
from PIL import Image

from fcn_lesson import FCN8s, FCN16s, FCN32s
from fcn_lesson.datasets.shapes import CLASSES, ShapesDataset
from fcn_lesson.lessons.fusion import image_mean_iou
from fcn_lesson.lessons.viz import colorize
from fcn_lesson.widgets.fusion import FusionExplorer
from fcn_lesson.widgets.view import png_size, pngs_in

K = len(CLASSES)


def _model(cls, seed=0):
    """A small net whose score layers are not zero, so both skips change the prediction."""
    torch.manual_seed(seed)
    model = cls(num_classes=K, width=1 / 16, batch_norm=True)
    for name in ("score_fr", "score_pool4", "score_pool3"):
        if hasattr(model, name):
            torch.nn.init.normal_(getattr(model, name).weight, std=0.5)
    return model.eval()


@pytest.fixture(scope="module")
def data():
    return ShapesDataset(4, (72, 90), seed=7)  # not a multiple of 32: maps overhang


@pytest.fixture
def explorer(data):
    return FusionExplorer(_model(FCN8s), data)


@torch.no_grad()
def _expected(model, image, pool4_gain, pool3_gain):
    maps = model.forward_maps(image[None])
    return model.fuse(maps, None, *image.shape[-2:], pool4_gain, pool3_gain)["out"][0]


def _decoded(png: bytes, zoom: int) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))[::zoom, ::zoom]


def test_all_gains_one_is_the_models_own_prediction(explorer, data):
    for i in range(len(data)):
        explorer.image_index.value = i
        view = explorer.result
        with torch.no_grad():
            logits = explorer.model(data[i][0][None])[0]
        assert (view.pool4_gain, view.pool3_gain) == (1.0, 1.0)
        assert torch.equal(view.prediction, logits.argmax(0))
        assert torch.allclose(view.class_score, logits[view.class_index], atol=1e-5)
        assert view.mean_iou == view.trained_mean_iou == image_mean_iou(logits.argmax(0), data[i][1], K)


@pytest.mark.parametrize("pool4_gain, pool3_gain", [(0.0, 1.0), (1.0, 0.0), (0.0, 0.0), (0.5, 1.7)])
def test_gains_refuse_the_cached_maps(explorer, data, pool4_gain, pool3_gain):
    explorer.image_index.value = 2
    explorer.class_index.value = 4
    trained = explorer.result.prediction
    explorer.pool4_gain.value = pool4_gain
    explorer.pool3_gain.value = pool3_gain
    view = explorer.result
    image, mask = data[2]
    scores = _expected(explorer.model, image, pool4_gain, pool3_gain)
    assert (view.image_index, view.class_index, view.pool4_gain, view.pool3_gain) == (
        2, 4, pool4_gain, pool3_gain)
    assert torch.equal(view.prediction, scores.argmax(0))
    assert torch.allclose(view.class_score, scores[4], atol=1e-5)
    assert not torch.equal(view.prediction, trained)  # the setting changes what is shown
    assert view.mean_iou == image_mean_iou(scores.argmax(0), mask, K)
    assert f"mean IoU <b>{view.mean_iou:.3f}</b>" in explorer.view.value
    assert f"gains 1: {view.trained_mean_iou:.3f}" in explorer.view.value
    # the picture shown is the prediction in the lesson's colours
    shown = _decoded(pngs_in(explorer.view.value)["prediction"], explorer.zoom)
    assert np.array_equal(shown, colorize(view.prediction))


def test_mean_iou_readout_follows_the_gains(explorer):
    explorer.image_index.value = 1
    shown = {}
    for gain in (1.0, 0.0):
        explorer.pool4_gain.value = explorer.pool3_gain.value = gain
        shown[gain] = (explorer.result.mean_iou, explorer.view.value)
    assert shown[1.0][0] != shown[0.0][0]
    assert shown[1.0][1] != shown[0.0][1]
    assert f"{shown[0.0][0]:.3f}" in shown[0.0][1]


def test_class_changes_the_score_map_not_the_prediction(explorer):
    explorer.pool3_gain.value = 0.0
    first = explorer.result
    explorer.class_index.value = (first.class_index + 1) % K
    second = explorer.result
    assert torch.equal(first.prediction, second.prediction)
    assert not torch.equal(first.class_score, second.class_score)
    assert f"score for '{CLASSES[second.class_index]}'" in explorer.view.value


def test_score_colours_use_a_fixed_per_image_scale(explorer):
    explorer.class_index.value = 3
    trained = explorer.result
    assert trained.score_limit == pytest.approx(trained.class_score.abs().max().item())
    explorer.pool4_gain.value = 2.0
    assert explorer.result.score_limit == trained.score_limit  # the scale does not follow the sliders
    shown = _decoded(pngs_in(explorer.view.value)["class score"], explorer.zoom).astype(int)
    white = np.unravel_index(explorer.result.class_score.abs().argmin().item(), shown.shape[:2])
    strongest = np.unravel_index(explorer.result.class_score.abs().argmax().item(), shown.shape[:2])
    assert (shown[white] > 220).all()  # near zero: white
    assert shown[strongest].max() - shown[strongest].min() > 100  # saturated red or blue


def test_the_backbone_runs_only_while_the_explorer_is_built(data):
    model = _model(FCN8s)
    calls = []
    model.backbone.register_forward_hook(lambda *_: calls.append(1))
    explorer = FusionExplorer(model, data)
    assert len(calls) == 1  # the 4 images in one batch
    for i in (1, 3, 2, 0):
        explorer.image_index.value = i
        explorer.pool4_gain.value = 0.1 * i
    assert len(calls) == 1


def test_every_control_moves_fast(explorer):
    # The Python side of a move must leave the browser time to show it within 100 ms: about 10-20
    # ms on a laptop CPU; the bound is generous so that a busy test machine does not fail it.
    moves = {explorer.image_index: [1, 2, 3, 0] * 3, explorer.class_index: [1, 2, 3, 4, 5] * 2,
             explorer.pool4_gain: [0.0, 1.0, 0.3, 2.0, 0.5] * 2,
             explorer.pool3_gain: [0.0, 1.0, 0.3, 2.0, 0.5] * 2}
    for control, values in moves.items():
        seconds = []
        for value in values:
            start = time.perf_counter()
            control.value = value  # observe -> update, as in the browser
            seconds.append(time.perf_counter() - start)
        assert np.median(seconds) < 0.060, (control.description, seconds)


def test_fcn16s_has_no_pool3_control(data):
    explorer = FusionExplorer(_model(FCN16s), data, image_index=3, class_index=2)
    assert explorer.pool3_gain.disabled and not explorer.pool4_gain.disabled
    explorer.pool4_gain.value = 0.0
    image, _ = data[3]
    assert torch.equal(explorer.result.prediction, _expected(explorer.model, image, 0.0, 1.0).argmax(0))


def test_default_class_is_an_object_in_the_first_image(data):
    explorer = FusionExplorer(_model(FCN8s), data)
    assert explorer.class_index.value != 0
    assert explorer.class_index.value in data[0][1].unique().tolist()


def test_rejects_what_it_cannot_explore(data):
    with pytest.raises(ValueError, match="FCN-32s has no skip"):
        FusionExplorer(_model(FCN32s), data)
    with pytest.raises(ValueError, match="empty"):
        FusionExplorer(_model(FCN8s), ShapesDataset(0, 64))
    with pytest.raises(ValueError, match="outside the dataset of 4 images"):
        FusionExplorer(_model(FCN8s), data, image_index=4)
    with pytest.raises(ValueError, match="class names"):
        FusionExplorer(_model(FCN8s), data, classes=CLASSES[:3])


def test_widget_layout_holds_the_controls(explorer):
    box = explorer.widget()
    flat, stack = [], [box]
    while stack:
        w = stack.pop()
        flat.append(w)
        stack.extend(getattr(w, "children", ()))
    for control in (explorer.image_index, explorer.class_index, explorer.pool4_gain,
                    explorer.pool3_gain, explorer.view):
        assert control in flat
    assert set(pngs_in(explorer.view.value)) == {"image", "ground truth", "prediction", "class score"}
    assert all(f"</span>{name}</span>" in explorer.view.value for name in CLASSES)  # the legend


def test_static_png_shows_the_current_view_for_readers_without_a_kernel(explorer):
    import base64

    explorer.pool3_gain.value = 0.0
    png = explorer.static_png()
    picture = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    assert picture.shape[1] > 4 * 90 and picture.std() > 10
    bundle = explorer._repr_mimebundle_()
    assert base64.b64decode(bundle["image/png"]) == png
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert "fusion explorer" in bundle["text/plain"]


def test_panels_are_shown_at_their_own_pixel_size(explorer):
    for name, png in pngs_in(explorer.view.value).items():
        width, height = png_size(png)
        assert f"<img alt='{name}' width='{width}' height='{height}'" in explorer.view.value
