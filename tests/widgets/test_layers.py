"""The layer-output explorer: what it shows is the layer's real output, drawn where it belongs."""

import base64
import io
import re
import statistics
import time

import numpy as np
import pytest
import torch
from matplotlib import colormaps
from PIL import Image
from support import scored_classroom_model as _model
from torch import nn

from fcn_lesson.core.models import FCN8s
from fcn_lesson.datasets.shapes import ShapesDataset
from fcn_lesson.lessons.layers import (
    capture_activations,
    layer_modules,
    plot_layer_strip,
    plot_layer_view,
)
from fcn_lesson.widgets.layers import LayerExplorer
from fcn_lesson.widgets.view import png_size, pngs_in

CONVS = [f"conv{i}_{j}" for i, n in enumerate((2, 2, 3, 3, 3), 1) for j in range(1, n + 1)]


def _pixels(explorer, name: str, zoom: int) -> np.ndarray:
    """A picture of the explorer's view ("image" or "activation") as (H, W, 3) uint8, one entry
    per image pixel."""
    png = pngs_in(explorer.view.value)[name]
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))[::zoom, ::zoom]


def _caption(explorer) -> str:
    """The text under the activation map: its cell size, then its colour scale."""
    return re.findall(r"<img alt='activation' [^>]*><div>(.*?)</div></div>", explorer.view.value)[0]


def _hooked(model, module: nn.Module, image: torch.Tensor) -> torch.Tensor:
    """The module's output for one image, recorded by a hook of the test's own."""
    seen = []
    handle = module.register_forward_hook(lambda _m, _i, out: seen.append(out[0].clone()))
    with torch.no_grad():
        model(image[None])
    handle.remove()
    return seen[0]


@pytest.fixture(scope="module")
def data():
    return ShapesDataset(3, 96, seed=5)


@pytest.fixture(scope="module")
def models():
    return {"fcn32s": _model("fcn32s"), "fcn8s": _model("fcn8s")}


def test_layer_modules_are_the_activations_in_network_order():
    model = _model("fcn32s")
    layers = layer_modules(model)
    pools = {f"pool{i}": i for i in range(1, 6)}
    expected = []
    for name in CONVS:
        expected.append(name)
        if name in ("conv1_2", "conv2_2", "conv3_3", "conv4_3", "conv5_3"):
            expected.append(f"pool{name[4]}")
    assert list(layers) == [*expected, "fc6", "fc7"]
    assert all(isinstance(layers[n], nn.ReLU) for n in [*CONVS, "fc6", "fc7"])
    assert all(isinstance(layers[n], nn.MaxPool2d) for n in pools)
    assert layers["conv3_2"] is model.backbone.to_pool3[2].relu3_2
    assert layers["fc7"] is model.backbone.head.relu7


def test_captured_activations_equal_the_modules_outputs_and_the_score_maps(data, models):
    model = models["fcn8s"]
    image, _ = data[0]
    acts = capture_activations(model, image)
    for name in ("conv1_1", "conv3_2", "pool4", "fc6"):
        torch.testing.assert_close(acts[name], _hooked(model, layer_modules(model)[name], image))
    maps = model.forward_maps(image[None])
    for name in ("score_fr", "upscore2", "score_pool4", "fuse_pool4", "upscore_pool4",
                 "score_pool3", "fuse_pool3", "out"):
        torch.testing.assert_close(acts[name], maps[name][0])
    assert acts["pool3"].shape == (32, 96 // 8, 96 // 8)
    assert acts["out"].shape == (6, 96, 96)
    assert list(acts)[-8:] == ["score_fr", "upscore2", "score_pool4", "fuse_pool4",
                               "upscore_pool4", "score_pool3", "fuse_pool3", "out"]


def test_capture_keeps_fc6_before_later_in_place_ops():
    # Without BatchNorm, relu6 rectifies fc6's output in place; the recorded fc6 (taken at
    # relu6) must be exactly relu(conv(pool5)), a copy that nothing overwrites afterwards.
    torch.manual_seed(0)
    model = FCN8s(num_classes=3, width=0.0625).eval()
    image = torch.rand(3, 64, 64)
    acts = capture_activations(model, image)
    with torch.no_grad():
        feats = model.backbone.to_pool5(model.backbone.to_pool4(model.backbone.to_pool3(image[None])))
        fc6 = torch.relu(model.backbone.head.fc6(feats))[0]
    torch.testing.assert_close(acts["fc6"], fc6)
    assert (acts["fc6"] >= 0).all() and (acts["fc6"] > 0).any()


def test_capture_rejects_a_batch(models):
    with pytest.raises(ValueError, match="one image"):
        capture_activations(models["fcn32s"], torch.rand(1, 3, 32, 32))


def test_setting_controls_shows_the_hooked_output_of_that_channel(data, models):
    explorer = LayerExplorer(models, data)
    model = models["fcn32s"]
    for image, layer, channel in ((1, "conv2_1", 5), (2, "pool3", 31), (0, "fc7", 100)):
        explorer.image.value = image
        explorer.layer.value = layer
        explorer.channel.value = channel
        output = _hooked(model, layer_modules(model)[layer], data[image][0])
        np.testing.assert_allclose(explorer.result, output[channel].numpy(), rtol=1e-5, atol=1e-6)
        # ... and the titles follow the controls
        assert f"<div><b>image #{image}</b></div><img alt='image'" in explorer.view.value
        assert (f"<div><b>{layer}: channel {channel} of {len(output)}</b></div><img alt='activation'"
                in explorer.view.value)
    explorer.layer.value = "score_fr"
    explorer.channel.value = 2
    np.testing.assert_allclose(explorer.result, model.forward_maps(data[0][0][None])["score_fr"][0, 2]
                               .detach().numpy(), rtol=1e-5, atol=1e-6)
    assert "<div><b>score_fr: class 2 (ring)</b></div>" in explorer.view.value
    for name, png in pngs_in(explorer.view.value).items():
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = png_size(png)
        assert f"<img alt='{name}' width='{width}' height='{height}'" in explorer.view.value


def _expected_map(values: np.ndarray, stride: int, size, cmap: str, low: float, high: float):
    """(H, W, 3): each pixel in the colour of the cell it lies in."""
    height, width = size
    rows, cols = np.arange(height) // stride, np.arange(width) // stride
    scaled = (values[rows[:, None], cols[None, :]] - low) / (high - low)
    return colormaps[cmap](np.clip(scaled, 0, 1), bytes=True)[..., :3]


@pytest.mark.parametrize("layer, stride, cells", [("pool5", 32, (2, 3)), ("pool2", 4, (16, 24)),
                                                   ("score_fr", 32, (2, 3)), ("out", 1, (60, 90))])
def test_map_pixels_have_the_colour_of_the_cell_that_covers_them(layer, stride, cells):
    # 60 x 90 is padded to 64 x 96: pool5 has 2 x 3 cells of 32 pixels, the view crops to the
    # image; `out` is the image's own size. Both pictures are enlarged 2 x 2 (256 // 90).
    data = ShapesDataset(1, (60, 90), seed=2)
    explorer = LayerExplorer(_model("fcn32s"), data, layer=layer, channel=1)
    values = explorer.result
    assert values.shape == cells
    assert f"stride {stride} " in explorer.view.value
    assert f"one cell = {stride} x {stride} pixels" in _caption(explorer)
    shown = _pixels(explorer, "activation", 2)
    assert shown.shape == (60, 90, 3)
    if layer in ("score_fr", "out"):  # class scores: symmetric about white zero, black outlines
        bound = np.abs(values).max()
        expected, outline = _expected_map(values, stride, (60, 90), "RdBu_r", -bound, bound), 0
        ends = (f"{-bound:.3g}", f"{bound:.3g}")
    else:  # after a ReLU: dark zero, white outlines
        expected, outline = _expected_map(values, stride, (60, 90), "viridis", 0, values.max()), 255
        ends = ("0", f"{values.max():.3g}")
    mask = data[0][1].numpy()
    edges = np.zeros(mask.shape, bool)
    edges[:, :-1] |= mask[:, 1:] != mask[:, :-1]
    edges[:-1, :] |= mask[1:, :] != mask[:-1, :]
    assert 0 < edges.sum() < edges.size / 4
    np.testing.assert_array_equal(shown[~edges], expected[~edges])
    assert (shown[edges] == outline).all()
    # the colour scale: the gradient with the numbers at both ends
    scale = _caption(explorer).split("<br>")[1]
    assert scale.startswith(ends[0] + "<span") and "gradient" in scale
    assert scale.split("</span>")[1].startswith(ends[1])
    np.testing.assert_array_equal(_pixels(explorer, "image", 2),
                                  (data[0][0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))


def test_the_lessons_images_are_shown_at_twice_their_size(models):
    explorer = LayerExplorer(models, ShapesDataset(2, 128, seed=1))
    assert [png_size(png) for png in pngs_in(explorer.view.value).values()] == [(256, 256)] * 2


def test_moving_away_and_back_shows_the_same_pictures_and_every_move_changes_one(data):
    # two nets with different backbones, as after training
    models = {"fcn32s": _model("fcn32s"), "fcn8s": _model("fcn8s", seed=1)}
    explorer = LayerExplorer(models, data, layer="pool3", channel=4, image=1)
    before = explorer.view.value
    for control, away in ((explorer.image, 2), (explorer.model, "fcn8s"), (explorer.layer, "conv2_1"),
                          (explorer.channel, 7)):
        back = control.value
        control.value = away
        assert pngs_in(explorer.view.value) != pngs_in(before), control.description
        control.value = back
        assert explorer.view.value == before, control.description


def test_channel_slider_follows_the_layer_and_model_menu_keeps_valid_layers(data, models):
    explorer = LayerExplorer(models, data, layer="fc7", channel=300)
    assert explorer.channel.max == 511
    explorer.layer.value = "score_fr"
    assert explorer.channel.max == 5 and explorer.channel.value == 5  # clamped
    assert "fuse_pool3" not in explorer.layer.options
    explorer.model.value = "fcn8s"
    assert "fuse_pool3" in explorer.layer.options and explorer.layer.value == "score_fr"
    explorer.layer.value = "fuse_pool3"
    np.testing.assert_allclose(
        explorer.result, models["fcn8s"].forward_maps(data[0][0][None])["fuse_pool3"][0, 5]
        .detach().numpy(), rtol=1e-5, atol=1e-6)
    explorer.model.value = "fcn32s"  # has no fuse_pool3: falls back to its score layer
    assert explorer.layer.value == "score_fr"
    assert "fuse_pool3" not in explorer.layer.options


def test_activations_are_computed_once_per_image_and_evicted_beyond_the_cache(data):
    model = _model("fcn32s")
    calls = []
    model.backbone.register_forward_hook(lambda *_: calls.append(1))
    explorer = LayerExplorer(model, data, cache_size=2)
    assert len(calls) == 1
    for layer in ("conv1_2", "pool2", "fc6", "score_fr", "out"):
        explorer.layer.value = layer
        explorer.channel.value = 1
    explorer.image.value = 1
    explorer.image.value = 0
    assert len(calls) == 2  # image 0 came from the cache
    explorer.image.value = 2  # evicts image 1 (least recently used)
    explorer.image.value = 1
    assert len(calls) == 4


def test_a_small_dataset_is_captured_up_front_and_never_again(data):
    models = {"a": _model("fcn32s"), "b": _model("fcn8s")}
    calls = []
    for model in models.values():
        model.backbone.register_forward_hook(lambda *_: calls.append(1))
    explorer = LayerExplorer(models, data)
    assert len(calls) == len(models) * len(data)
    for image in (2, 0, 1):
        explorer.image.value = image
        explorer.model.value = "b" if explorer.model.value == "a" else "a"
    assert len(calls) == len(models) * len(data)


def test_every_control_moves_in_well_under_100_ms(data):
    explorer = LayerExplorer({"a": _model("fcn32s"), "b": _model("fcn8s")}, data)
    moves = {"image": [1, 2, 0] * 4, "model": ["b", "a"] * 5, "channel": [3, 7, 1, 5, 0] * 2,
             "layer": ["conv1_1", "pool3", "fc7", "score_fr", "out", "conv2_2", "pool1", "fc6",
                       "score_fr", "conv1_2"]}
    for name, values in moves.items():
        control, timings = getattr(explorer, name), []
        for value in values:
            start = time.perf_counter()
            control.value = value
            timings.append(time.perf_counter() - start)
        # A move takes a few milliseconds on a laptop; 60 leaves room for a busy CI machine.
        assert statistics.median(timings) < 0.06, (name, timings)
    assert explorer.last_update_seconds > 0


def test_bad_arguments_are_explained(data, models):
    with pytest.raises(ValueError, match="unknown layer 'conv6_1'"):
        LayerExplorer(models, data, layer="conv6_1")
    with pytest.raises(ValueError, match="channels 0 to 7"):
        LayerExplorer(models, data, layer="conv1_1", channel=8)
    with pytest.raises(ValueError, match="image must be in"):
        LayerExplorer(models, data, image=3)
    with pytest.raises(TypeError, match="FCN"):
        LayerExplorer({}, data)
    with pytest.raises(ValueError, match="empty"):
        LayerExplorer(models, ShapesDataset(0, 32))


def test_layer_strip_draws_the_most_active_channel_at_each_stride(data, models):
    image, _ = data[0]
    acts = capture_activations(models["fcn32s"], image)
    fig = plot_layer_strip(acts, image, layers=("conv1_2", "pool3", "fc7"))
    axes = fig.axes
    assert len(axes) == 4
    strongest = int(acts["pool3"].mean(dim=(1, 2)).argmax())
    assert axes[2].get_title() == f"pool3 ch {strongest}\n12x12, stride 8"
    np.testing.assert_array_equal(np.asarray(axes[2].images[0].get_array()),
                                  acts["pool3"][strongest].numpy())
    with pytest.raises(ValueError, match="no activations for"):
        plot_layer_strip(acts, image, layers=("fuse_pool3",))


def _outside_figure(figure, texts) -> list[str]:
    """The texts (non-empty) whose drawn extent leaves the figure."""
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    box = figure.bbox
    out = []
    for text in texts:
        if text.get_text() and text.get_visible():
            e = text.get_window_extent(renderer)
            if e.x0 < box.x0 - 1 or e.x1 > box.x1 + 1 or e.y0 < box.y0 - 1 or e.y1 > box.y1 + 1:
                out.append(text.get_text())
    return out


def _colour_bar_labels(figure) -> list:
    """The tick labels the colour bar (the last axes) draws: those within its range."""
    bar = figure.axes[-1]
    low, high = sorted(bar.get_ylim())
    return [label for label in bar.get_yticklabels() if low <= label.get_position()[1] <= high]


def _figure_texts(figure) -> list:
    """The axes' titles and labels, and the colour bar's tick labels."""
    texts = [text for ax in figure.axes for text in (ax.title, ax.xaxis.label, ax.yaxis.label)]
    return texts + _colour_bar_labels(figure)


def test_static_figure_is_the_current_view_with_its_text_inside(data, models):
    explorer = LayerExplorer(models, data, layer="conv1_1")
    for control, value in (("image", 1), ("model", "fcn8s"), ("layer", "score_fr"),
                           ("image", 2), ("layer", "fc7"), ("channel", 5)):
        getattr(explorer, control).value = value
        figure = explorer.static_figure()
        image_ax, map_ax, bar_ax = figure.axes
        assert image_ax.get_title() == f"image #{explorer.image.value}"
        map_title = re.findall(r"<div><b>([^<]*)</b></div><img alt='activation'", explorer.view.value)[0]
        assert map_ax.get_title().startswith(map_title)
        np.testing.assert_array_equal(np.asarray(map_ax.images[0].get_array()), explorer.result)
        assert map_ax.get_xlabel() == "x (pixels)" and bar_ax.get_ylabel()
        assert _outside_figure(figure, _figure_texts(figure)) == [], (control, value)
    bundle = explorer._repr_mimebundle_()
    picture = np.asarray(Image.open(io.BytesIO(base64.b64decode(bundle["image/png"]))))
    assert picture.shape[1] > 2 * 96 and picture.std() > 10
    assert "layer explorer" in bundle["text/plain"]


def test_the_widest_colour_bar_labels_fit_in_the_static_figure(data, models):
    image, mask = data[0]
    tiny = capture_activations(models["fcn32s"], image)["score_fr"][2].numpy()
    tiny = tiny / np.abs(tiny).max() * 8.88e-08  # "-8.88e-08": the widest label "{:.3g}" writes
    figure = plot_layer_view(image, mask, "score_fr", tiny, 32, image_title="image", map_title="score")
    figure.canvas.draw()
    labels = _colour_bar_labels(figure)
    assert any(label.get_text().startswith("-") and "e-08" in label.get_text() for label in labels)
    assert _outside_figure(figure, labels) == []


def test_layer_strip_text_is_readable_in_a_notebook(data, models):
    from support import smallest_text_px

    image, _ = data[0]
    fig = plot_layer_strip(capture_activations(models["fcn8s"], image), image)  # all 7 stages
    assert sum(ax.get_visible() for ax in fig.axes) == 8
    assert smallest_text_px(fig) >= 8
