"""Fusion figures, per-image mean IoU and the skip ablation (fcn_lesson.lessons.fusion)."""

import numpy as np
import pytest
import torch

from fcn_lesson import FCN8s, FCN16s, FCN32s
from fcn_lesson.core.models import pad_to_multiple
from fcn_lesson.datasets.shapes import CLASSES, ShapesDataset
from fcn_lesson.engine.loop import evaluate
from fcn_lesson.lessons.fusion import (
    fusion_panels,
    image_mean_iou,
    per_image_mean_iou,
    plot_fusion,
    skip_ablation,
)
from fcn_lesson.lessons.viz import colorize

K = len(CLASSES)


def _random_skips(model, seed=0):
    """Score layers start at zero; give them weights so every map carries a signal."""
    torch.manual_seed(seed)
    for name in ("score_fr", "score_pool4", "score_pool3"):
        if hasattr(model, name):
            torch.nn.init.normal_(getattr(model, name).weight, std=0.5)
    return model.eval()


def _known_maps(cls, height=128, width=128, batch=2, seed=0):
    """Score maps with known values: random score_fr / skip scores, fused by the model."""
    model = _random_skips(cls(num_classes=K, width=1 / 16), seed)
    g = torch.Generator().manual_seed(seed)
    ph, pw = -(-height // 32), -(-width // 32)
    maps = {"score_fr": torch.randn(batch, K, ph, pw, generator=g),
            "score_pool4": torch.randn(batch, K, 2 * ph, 2 * pw, generator=g)}
    if cls is FCN8s:
        maps["score_pool3"] = torch.randn(batch, K, 4 * ph, 4 * pw, generator=g)
    with torch.no_grad():
        return model.fuse(maps, None, height, width)


def test_panels_are_the_class_channel_of_each_map_in_fusion_order():
    maps = _known_maps(FCN8s)
    rows = fusion_panels(maps, class_index=2, index=1)
    names = [[name for name, *_ in row] for row in rows]
    assert names == [["score_fr", "upscore2", "score_pool4", "fuse_pool4"],
                     ["fuse_pool4", "upscore_pool4", "score_pool3", "fuse_pool3"], ["out"]]
    strides = [[stride for *_, stride in row] for row in rows]
    assert strides == [[32, 16, 16, 16], [16, 8, 8, 8], [1]]
    for row in rows:
        for name, title, data, _ in row:
            assert torch.equal(data, maps[name][1, 2]), name
            assert name in title
    assert "4×4, stride 32" in rows[0][0][1] and "128×128, stride 1" in rows[2][0][1]
    # the sum panel is the sum of the two panels before it
    _, _, up, _ = rows[0][1]
    _, _, skip, _ = rows[0][2]
    assert torch.allclose(rows[0][3][2], up + skip)


def test_fcn16s_maps_give_one_skip_row():
    rows = fusion_panels(_known_maps(FCN16s, batch=1), class_index=0)
    assert [[name for name, *_ in row] for row in rows] == [
        ["score_fr", "upscore2", "score_pool4", "fuse_pool4"], ["out"]]
    assert "fuse_pool4 ↑16" in rows[1][0][1]


def test_panels_reject_bad_input():
    maps = _known_maps(FCN8s, batch=1)
    with pytest.raises(ValueError, match="class_index"):
        fusion_panels(maps, class_index=K)
    with pytest.raises(ValueError, match="index 1 is outside the batch"):
        fusion_panels(maps, class_index=0, index=1)
    with torch.no_grad():
        maps32 = FCN32s(num_classes=K, width=1 / 16).forward_maps(torch.rand(1, 3, 64, 64))
    with pytest.raises(ValueError, match="FCN-32s"):
        fusion_panels(maps32, class_index=0)
    with pytest.raises(ValueError, match="forward_maps"):
        fusion_panels({"out": torch.zeros(1, K, 4, 4)}, class_index=0)


def test_plot_fusion_draws_each_map_over_its_pixels_on_one_scale():
    height, width = 100, 70  # padded to 128 x 96: maps overhang the image
    maps = _known_maps(FCN8s, height, width)
    image = torch.rand(3, height, width)
    target = torch.randint(0, K, (height, width))
    fig = plot_fusion(maps, 3, image=image, target=target, index=1, clip_percentile=None)
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.images]
    titles = [ax.get_title().split("\n")[0] for ax in panels]
    assert titles == ["score_fr", "upscore2 = score_fr ↑2", "+ score_pool4", "= fuse_pool4",
                      "fuse_pool4", "upscore_pool4 = fuse_pool4 ↑2", "+ score_pool3", "= fuse_pool3",
                      "image", "ground truth", "out = fuse_pool3 ↑8", "prediction = argmax(out)"]
    by_title = dict(zip(titles, panels, strict=True))
    score_names = {"score_fr": "score_fr", "upscore2 = score_fr ↑2": "upscore2",
                   "+ score_pool4": "score_pool4", "= fuse_pool4": "fuse_pool4",
                   "upscore_pool4 = fuse_pool4 ↑2": "upscore_pool4", "+ score_pool3": "score_pool3",
                   "= fuse_pool3": "fuse_pool3", "out = fuse_pool3 ↑8": "out"}
    limit = max(float(maps[n][1, 3].abs().max()) for n in score_names.values())
    for title, name in score_names.items():
        im = by_title[title].images[0]
        assert np.array_equal(im.get_array(), maps[name][1, 3].numpy()), name
        assert im.get_clim() == pytest.approx((-limit, limit)), name
        # every map spans the padded image (the final score: the image itself) ...
        assert im.get_extent() == ([0, width, height, 0] if name == "out" else [0, 96, 128, 0]), name
    for ax in panels:  # ... and every panel shows exactly the image's pixels
        assert ax.get_xlim() == (0, width) and ax.get_ylim() == (height, 0)
        assert ax.get_xlabel() == "x (px)" and ax.get_ylabel() == "y (px)"
    prediction = maps["out"][1].argmax(0)
    assert np.array_equal(by_title["prediction = argmax(out)"].images[0].get_array(), colorize(prediction))
    assert np.array_equal(by_title["ground truth"].images[0].get_array(), colorize(target))
    colourbar = [ax for ax in fig.axes if ax.get_ylabel() == f"score for '{CLASSES[3]}'"]
    assert len(colourbar) == 1
    assert [t.get_text() for t in fig.legends[0].get_texts()] == list(CLASSES)
    assert "FCN-8s" in fig.get_suptitle() and CLASSES[3] in fig.get_suptitle()


def test_plot_fusion_clips_its_colour_scale_by_percentile_and_says_so():
    maps = _known_maps(FCN8s, 64, 64)
    maps = {k: v.clone() for k, v in maps.items()}
    maps["score_pool4"][0, 2, 0, 0] = -1e4  # one extreme cell would wash out every colour
    fig = plot_fusion(maps, 2, clip_percentile=95)
    magnitudes = torch.cat([maps[n][0, 2].abs().flatten() for n in (  # the panels, in order
        "score_fr", "upscore2", "score_pool4", "fuse_pool4", "fuse_pool4", "upscore_pool4",
        "score_pool3", "fuse_pool3", "out")])
    limit = float(torch.quantile(magnitudes.double(), 0.95))
    assert limit < 1e3
    for ax in fig.axes:
        if ax.images and ax.get_visible() and ax.get_title().startswith("+ score_pool4"):
            assert ax.images[0].get_clim() == pytest.approx((-limit, limit))
    bar = next(ax for ax in fig.axes if ax.get_ylabel().startswith(f"score for '{CLASSES[2]}'"))
    assert "95th percentile" in bar.get_ylabel() and f"{limit:.3g}" in bar.get_ylabel()
    with pytest.raises(ValueError, match="clip_percentile"):
        plot_fusion(maps, 2, clip_percentile=0)


def test_plot_fusion_without_image_leaves_the_rest_of_the_row_empty():
    fig = plot_fusion(_known_maps(FCN16s, batch=1), 1)
    shown = [ax.get_title().split("\n")[0] for ax in fig.axes if ax.get_visible() and ax.images]
    assert shown == ["score_fr", "upscore2 = score_fr ↑2", "+ score_pool4", "= fuse_pool4",
                     "out = fuse_pool4 ↑16", "prediction = argmax(out)"]
    assert "FCN-16s" in fig.get_suptitle()


def test_image_mean_iou_by_hand():
    target = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1]])
    pred = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1]])
    # background: 3 hits / (4 + 3 - 3) = 3/4; class 1: 4 / (4 + 5 - 4) = 4/5; others absent
    assert image_mean_iou(pred, target, K) == pytest.approx((3 / 4 + 4 / 5) / 2)
    assert image_mean_iou(target, target, K) == 1.0
    with pytest.raises(ValueError, match="one prediction"):
        image_mean_iou(pred[None], target[None], K)


def test_per_image_mean_iou_scores_each_image_alone():
    target = torch.tensor([[[0, 0, 1, 1]], [[2, 2, 2, 0]]])
    pred = torch.tensor([[[0, 1, 1, 1]], [[2, 2, 2, 0]]])
    scores = per_image_mean_iou(pred, target, K)
    assert scores.shape == (2,) and scores.dtype == torch.float64
    assert scores.tolist() == pytest.approx([(1 / 2 + 2 / 3) / 2, 1.0])
    with pytest.raises(ValueError, match="equal shape"):
        per_image_mean_iou(pred, target[:1], K)


@pytest.fixture(scope="module")
def small_val():
    return ShapesDataset(6, 64, seed=5)


def test_skip_ablation_equals_forward_with_those_gains(small_val):
    model = _random_skips(FCN8s(num_classes=K, width=1 / 16, batch_norm=True))
    images, masks = small_val.tensors()
    settings = {"both": (1.0, 1.0), "no pool3": (1.0, 0.0), "half pool4": (0.5, 1.0), "off": (0.0, 0.0)}
    results = skip_ablation(model, images, masks, settings, batch_size=4)
    assert list(results) == list(settings)
    height, width = images.shape[-2:]
    with torch.no_grad():
        features = model.backbone(pad_to_multiple(images, 32))
    for name, (g4, g3) in settings.items():
        with torch.no_grad():  # the FCN-8s head written out, with the skips scaled by the gains
            score = model.upscore2(model.score_fr(features["fc7"]))
            score = score + g4 * model.score_pool4(features["pool4"])
            score = model.upscore_pool4(score) + g3 * model.score_pool3(features["pool3"])
            pred = model.upscore_final(score)[..., :height, :width].argmax(1)
        cm = torch.zeros(K, K, dtype=torch.long)
        for p, t in zip(pred, masks, strict=True):
            cm += torch.bincount((t * K + p).flatten(), minlength=K * K).reshape(K, K)
        assert torch.equal(results[name]["confusion"], cm), name
        assert results[name]["pixel_acc"] == pytest.approx(cm.diagonal().sum().item() / cm.sum().item())
    # the trained net's setting agrees with evaluate() to the last digit
    reference = evaluate(model, small_val, batch_size=4)
    for key in ("pixel_acc", "mean_iou", "boundary_acc"):
        assert results["both"][key] == pytest.approx(reference[key], abs=1e-12), key
    assert results["off"]["mean_iou"] != results["both"]["mean_iou"]  # the skips matter here
    assert not model.training


def test_skip_ablation_rejects_nets_without_those_skips(small_val):
    images, masks = small_val.tensors()
    with pytest.raises(ValueError, match="FCN-32s"):
        skip_ablation(FCN32s(num_classes=K, width=1 / 16), images, masks)
    with pytest.raises(ValueError, match="no pool3 skip"):
        skip_ablation(FCN16s(num_classes=K, width=1 / 16), images, masks)
    result = skip_ablation(FCN16s(num_classes=K, width=1 / 16), images, masks,
                           {"both": (1.0, 1.0), "off": (0.0, 1.0)})
    assert set(result) == {"both", "off"}
    with pytest.raises(ValueError, match="masks"):
        skip_ablation(FCN8s(num_classes=K, width=1 / 16), images, masks[:3])
