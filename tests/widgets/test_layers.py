"""The layer-output explorer: what it shows is the layer's real output, drawn where it belongs."""

import statistics
import time

import numpy as np
import pytest
import torch
from support import scored_classroom_model as _model
from torch import nn

from fcn_lesson.core.models import FCN8s
from fcn_lesson.datasets.shapes import ShapesDataset
from fcn_lesson.lessons.layers import capture_activations, layer_modules, plot_layer_strip
from fcn_lesson.widgets.layers import LayerExplorer

CONVS = [f"conv{i}_{j}" for i, n in enumerate((2, 2, 3, 3, 3), 1) for j in range(1, n + 1)]




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
        expected = _hooked(model, layer_modules(model)[layer], data[image][0])[channel]
        np.testing.assert_allclose(explorer.result, expected.numpy(), rtol=1e-5, atol=1e-6)
        # ... and the figure draws exactly that array
        np.testing.assert_array_equal(np.asarray(explorer._artists.map.get_array()), explorer.result)
        assert layer in explorer._artists.map_ax.get_title()
        assert f"channel {channel} of" in explorer._artists.map_ax.get_title()
    explorer.layer.value = "score_fr"
    explorer.channel.value = 2
    np.testing.assert_allclose(explorer.result, model.forward_maps(data[0][0][None])["score_fr"][0, 2]
                               .detach().numpy(), rtol=1e-5, atol=1e-6)
    assert "class 2 (ring)" in explorer._artists.map_ax.get_title()
    assert explorer.picture.value[:8] == b"\x89PNG\r\n\x1a\n"


def test_map_cells_cover_the_pixels_they_were_computed_from():
    # 100 x 150 is padded to 128 x 160: pool5 has 4 x 5 cells of 32 pixels, the view crops
    # to the image; `out` is the image's own size.
    data = ShapesDataset(1, (100, 150), seed=2)
    explorer = LayerExplorer(_model("fcn32s"), data, layer="pool5")
    artists = explorer._artists
    assert explorer.result.shape == (4, 5)
    assert artists.map.get_extent() == [-0.5, 159.5, 127.5, -0.5]
    assert artists.map_ax.get_xlim() == (-0.5, 149.5)
    assert artists.map_ax.get_ylim() == (99.5, -0.5)
    explorer.layer.value = "pool2"
    assert artists.map.get_extent() == [-0.5, 159.5, 127.5, -0.5]  # 32 x 40 cells of 4 pixels
    explorer.layer.value = "out"
    assert artists.map.get_extent() == [-0.5, 149.5, 99.5, -0.5]
    assert "stride 1 " in explorer.readout.value


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


def test_a_slider_move_redraws_in_under_100_ms(data):
    explorer = LayerExplorer({"a": _model("fcn32s"), "b": _model("fcn8s")}, data)
    timings = []
    moves = [(explorer.layer, "conv1_1"), (explorer.channel, 3), (explorer.image, 1),
             (explorer.layer, "pool3"), (explorer.model, "b"), (explorer.channel, 7),
             (explorer.image, 2), (explorer.layer, "fc7"), (explorer.model, "a"),
             (explorer.channel, 40), (explorer.image, 0), (explorer.layer, "out")]
    for control, value in moves:
        start = time.perf_counter()
        control.value = value
        timings.append(time.perf_counter() - start)
    assert explorer.last_update_seconds > 0
    assert statistics.median(timings) < 0.1, timings


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


def _inside_figure(figure, texts) -> list[str]:
    """The texts (non-empty) whose drawn extent leaves the figure."""
    renderer = figure.canvas.get_renderer()
    box = figure.bbox
    out = []
    for text in texts:
        if text.get_text() and text.get_visible():
            e = text.get_window_extent(renderer)
            if e.x0 < box.x0 - 1 or e.x1 > box.x1 + 1 or e.y0 < box.y0 - 1 or e.y1 > box.y1 + 1:
                out.append(text.get_text())
    return out


def test_title_and_colour_bar_labels_stay_on_the_figure_through_image_and_model_changes(data,
                                                                                        models):
    explorer = LayerExplorer(models, data, layer="conv1_1")
    artists = explorer._artists
    for control, value in (("image", 1), ("model", "fcn8s"), ("layer", "score_fr"),
                           ("image", 2), ("layer", "fc7"), ("channel", 5)):
        getattr(explorer, control).value = value
        title = artists.map_ax.title
        assert title.get_text().startswith(explorer.layer.value)
        assert _inside_figure(explorer.figure, [title]) == [], (control, value)
        # The picture shows it too: the title row above the map is not blank.
        picture = artists.draw()
        top = int(explorer.figure.bbox.height - title.get_window_extent().y1)
        assert picture[max(top, 0):top + 10, picture.shape[1] // 2:].min() < 128
    # The widest label the colour bar's formatter writes still fits.
    artists.map.set_clim(-8.88e-08, 8.88e-08)
    artists.colorbar.update_ticks()
    labels = artists.colorbar.ax.get_yticklabels()
    artists.draw()
    assert any("e-08" in t.get_text() for t in labels)
    assert _inside_figure(explorer.figure, labels) == []


def test_layer_strip_text_is_readable_in_a_notebook(data, models):
    from support import smallest_text_px

    image, _ = data[0]
    fig = plot_layer_strip(capture_activations(models["fcn8s"], image), image)  # all 7 stages
    assert sum(ax.get_visible() for ax in fig.axes) == 8
    assert smallest_text_px(fig) >= 8
