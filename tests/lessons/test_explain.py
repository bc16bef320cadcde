"""explain_pixel: the streams' contributions are the model's logits, taken apart exactly."""

import pytest
import torch
from support import scored_classroom_model

from fcn_lesson import explain_pixel
from fcn_lesson.core.upsample import BilinearUpsample
from fcn_lesson.lessons.explain import (
    STREAMS,
    deciding_stream,
    explain_from_maps,
    explain_sentence,
    plot_pixel_explanation,
    score_maps,
    top_classes,
)

HEIGHT, WIDTH = 75, 101  # not multiples of 32: the maps cover a padded 96 x 128 image
PIXELS = [(0, 0), (HEIGHT - 1, WIDTH - 1), (37, 50), (HEIGHT - 1, 3), (4, WIDTH - 2), (40, 97)]


def _model(variant: str, seed: int = 0, learn_final_upsampling: bool = False):
    """Random score layers, and learned upsamplers that mix classes (off the diagonal), as
    trained ones do: every path of the linear part is exercised. With learn_final_upsampling,
    the final upsampler too (as the shipped FCN-8s's)."""
    model = scored_classroom_model(variant, seed)
    names = ["upscore2", "upscore_pool4"]
    if learn_final_upsampling:
        model.upscore_final = BilinearUpsample(model.num_classes, model.output_stride, learnable=True)
        names.append("upscore_final")
    with torch.no_grad():
        for name in names:
            if hasattr(model, name):
                getattr(model, name).weight.add_(0.1 * torch.randn_like(getattr(model, name).weight))
    return model


@pytest.fixture(scope="module")
def image():
    return torch.rand(3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("variant, streams, learned", [("fcn32s", 1, False), ("fcn16s", 2, False),
                                                      ("fcn8s", 3, False), ("fcn8s", 3, True)])
def test_contributions_sum_to_the_logits_at_an_odd_size(variant, streams, learned, image):
    model = _model(variant, learn_final_upsampling=learned)
    with torch.no_grad():
        out = model(image[None])[0]
    maps = score_maps(model, image)
    for row, col in PIXELS:
        e = explain_from_maps(model, maps, HEIGHT, WIDTH, row, col)
        assert e.streams == STREAMS[:streams]
        total = sum(e.contributions.values()).float()
        torch.testing.assert_close(total, out[:, row, col], rtol=1e-4,
                                   atol=1e-4 * float(out[:, row, col].abs().max()))
    # explain_pixel is the same thing with the backbone run for you
    e = explain_pixel(model, image, 37, 50)
    torch.testing.assert_close(sum(e.contributions.values()).float(), out[:, 37, 50], rtol=1e-4,
                               atol=1e-5)


@pytest.mark.parametrize("variant", ["fcn16s", "fcn8s"])
def test_each_stream_is_the_fusion_of_that_stream_alone(variant, image):
    # An independent route: the model's own fuse, with every other score map zero.
    model = _model(variant)
    maps = score_maps(model, image)
    for row, col in PIXELS:
        e = explain_from_maps(model, maps, HEIGHT, WIDTH, row, col)
        for s in e.streams:
            alone = {t: maps[t] if t == s else torch.zeros_like(maps[t]) for t in e.streams}
            with torch.no_grad():
                expected = model.fuse(alone, None, HEIGHT, WIDTH)["out"][0, :, row, col]
            torch.testing.assert_close(e.contributions[s].float(), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("variant", ["fcn32s", "fcn16s", "fcn8s"])
def test_feeding_cells_and_their_weights_are_what_moves_the_pixel(variant, image):
    model = _model(variant)
    maps = score_maps(model, image)
    row, col = HEIGHT - 1, 50  # bottom row: some feeding cells lie in the padding
    e = explain_from_maps(model, maps, HEIGHT, WIDTH, row, col)

    def pixel(changed):
        with torch.no_grad():
            return model.fuse(changed, None, HEIGHT, WIDTH)["out"][0, :, row, col].double()

    base = pixel(maps)
    g = torch.Generator().manual_seed(2)
    for s, cells in e.feeding.items():
        # the weights reproduce the contribution
        torch.testing.assert_close(cells.contributions.sum(0), e.contributions[s])
        assert len(cells.cells) == len(cells.weights) == len(cells.values) == len(cells.boxes)
        h, w = maps[s].shape[-2:]
        feeding = {tuple(c) for c in cells.cells.tolist()}
        for r, c in [(r, c) for r in range(h) for c in range(w)]:
            delta = torch.randn(model.num_classes, generator=g)
            changed = dict(maps)
            changed[s] = maps[s].clone()
            changed[s][0, :, r, c] += delta
            moved = pixel(changed) - base
            if (r, c) in feeding:  # moves the pixel by exactly weight @ delta
                k = cells.cells.tolist().index([r, c])
                torch.testing.assert_close(moved, cells.weights[k] @ delta.double(), rtol=1e-3,
                                           atol=1e-4)
            else:
                assert moved.abs().max() < 1e-5, f"{s} cell {(r, c)} is not feeding but moves it"


def test_receptive_field_bounds_what_can_change_the_pixel():
    # A wide image, so the pixel's receptive field (fc7's: 404 px) leaves part of it outside.
    model = _model("fcn8s")
    image = torch.rand(1, 3, 40, 520, generator=torch.Generator().manual_seed(3))
    row, col = 20, 30
    e = explain_pixel(model, image, row, col)
    top, left, bottom, right = e.receptive_fields["pixel"]
    assert left < 0 and 0 < right < 520  # it reaches into the left padding, not the right edge
    assert right - left == e.receptive_fields["score_fr"][3] - e.receptive_fields["score_fr"][1]
    for s in e.streams:  # every stream's field contains the pixel, finer ones are smaller
        t, l_, b, r = e.receptive_fields[s]
        assert t <= row < b and l_ <= col < r
    assert e.receptive_fields["score_pool3"][3] < e.receptive_fields["score_pool4"][3]
    with torch.no_grad():
        base = model(image)[0, :, row, col]
        outside = image.clone()
        outside[..., int(right):] = torch.rand_like(outside[..., int(right):])
        inside = image.clone()
        inside[..., row, col] += 1.0
        assert (model(outside)[0, :, row, col] - base).abs().max() < 1e-5
        assert (model(inside)[0, :, row, col] - base).abs().max() > 1e-4


def test_the_stream_made_to_dominate_decides_the_pixel(image):
    # Crafted: pool3 scores a large constant for class 3 everywhere. Bilinear interpolation
    # keeps a constant, so at an inner pixel pool3 adds exactly that, and it decides the pixel.
    model = _model("fcn8s")
    with torch.no_grad():
        model.score_pool3.weight.zero_()
        model.score_pool3.bias.zero_()
        model.score_pool3.bias[3] = 100.0
    e = explain_pixel(model, image, 37, 50)
    expected = torch.zeros(model.num_classes, dtype=torch.float64)
    expected[3] = 100.0
    torch.testing.assert_close(e.contributions["score_pool3"], expected, atol=1e-3, rtol=0)
    assert e.prediction == 3
    assert deciding_stream(e)[0] == "score_pool3"
    sentence = explain_sentence(e, [f"c{k}" for k in range(model.num_classes)])
    assert sentence.startswith("c3: pool3 adds +100.0 to c3")

    # And switched off: a zero pool3 score layer contributes exactly nothing.
    with torch.no_grad():
        model.score_pool3.bias.zero_()
    e = explain_pixel(model, image, 37, 50)
    assert e.contributions["score_pool3"].abs().max() == 0
    assert deciding_stream(e) is None or deciding_stream(e)[0] != "score_pool3"


def test_sentence_when_no_skip_decides(image):
    model = _model("fcn16s")
    with torch.no_grad():
        model.score_pool4.weight.zero_()
        model.score_pool4.bias.zero_()
    e = explain_pixel(model, image, 37, 50)
    names = [f"c{k}" for k in range(model.num_classes)]
    assert deciding_stream(e) is None
    first, second = top_classes(e, 2)
    assert first == e.prediction and e.logits[first] >= e.logits[second]
    assert explain_sentence(e, names).startswith(f"c{first}, ahead of c{second} by ")
    assert "fc7 alone already picks" in explain_sentence(e, names)
    e32 = explain_pixel(_model("fcn32s"), image, 37, 50)
    assert "one stream" in explain_sentence(e32, names)


def test_bad_input_is_refused_clearly(image):
    model = _model("fcn16s")
    with pytest.raises(ValueError, match="outside the 75x101 image"):
        explain_pixel(model, image, HEIGHT, 0)
    with pytest.raises(TypeError, match="row must be an int"):
        explain_pixel(model, image, 1.5, 0)
    with pytest.raises(TypeError, match="expected an FCN"):
        explain_pixel(torch.nn.Identity(), image, 0, 0)
    with pytest.raises(ValueError, match="one image"):
        explain_pixel(model, image.expand(2, -1, -1, -1), 0, 0)


def test_plot_pixel_explanation_draws_the_streams(image):
    model = _model("fcn8s")
    e = explain_pixel(model, image, 37, 50)
    names = [f"c{k}" for k in range(model.num_classes)]
    fig = plot_pixel_explanation(e, image, names, prediction=torch.zeros(HEIGHT, WIDTH, dtype=torch.long))
    titles = [ax.get_title() for ax in fig.axes]
    assert any("pool3 cells (stride 8)" in t for t in titles)
    assert any("fc7 cells (stride 32)" in t for t in titles)
    assert fig._suptitle.get_text() == explain_sentence(e, names)
    # one shaded square per feeding cell, labelled with what it adds to the predicted class
    pool3_ax = next(ax for ax in fig.axes if "pool3 cells" in ax.get_title())
    labels = [t.get_text() for t in pool3_ax.texts]
    assert len(labels) == len(e.feeding["score_pool3"].cells)
    with pytest.raises(ValueError, match="75x101"):
        plot_pixel_explanation(e, image[:, :50], names)
