"""The comparison helpers: counts checked by hand, metrics against their definitions."""

import time

import numpy as np
import pytest
import torch
from torch import nn

from fcn_lesson.classroom import make_classroom_model
from fcn_lesson.core.models import FCN32s
from fcn_lesson.core.upsample import BilinearUpsample, bilinear_upsample
from fcn_lesson.datasets.shapes import ShapesDataset
from fcn_lesson.engine.loop import evaluate, predict
from fcn_lesson.engine.metrics import accuracy_by_boundary_distance, confusion_matrix, segmentation_scores
from fcn_lesson.lessons.compare import (
    PAPER_TABLE2,
    _upsampling_matrix,
    accuracy_vs_distance,
    best_at_stride,
    count_flops,
    count_parameters,
    errors_near_edges,
    full_width_model,
    measure_latency,
    metrics_table,
    model_costs,
    paper_comparison,
    plot_accuracy_vs_distance,
    predict_all,
    qualitative_grid,
)


@pytest.fixture(scope="module")
def data():
    return ShapesDataset(6, 64, seed=3)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    out = {}
    for variant in ("fcn32s", "fcn16s", "fcn8s"):
        model = make_classroom_model(variant).eval()
        with torch.no_grad():  # non-zero scores, so the three variants predict differently
            nn.init.normal_(model.score_fr.weight, std=0.3)
            if variant != "fcn32s":
                nn.init.normal_(model.score_pool4.weight, std=0.3)
        out[variant] = model
    return out


def test_paper_table2_numbers():
    assert PAPER_TABLE2 == {
        "fcn32s": {"pixel_acc": 89.1, "mean_acc": 73.3, "mean_iou": 59.4, "fw_iou": 81.4},
        "fcn16s": {"pixel_acc": 90.0, "mean_acc": 75.7, "mean_iou": 62.4, "fw_iou": 83.0},
        "fcn8s": {"pixel_acc": 90.3, "mean_acc": 75.9, "mean_iou": 62.7, "fw_iou": 83.2},
    }


def test_full_width_parameters_are_vgg16_minus_fc8_plus_the_score_layers():
    from torchvision.models import vgg16

    with torch.device("meta"):
        vgg = vgg16()
    fc8 = 4096 * 1000 + 1000
    vgg_without_fc8 = sum(p.numel() for p in vgg.parameters()) - fc8
    assert vgg_without_fc8 == 134_260_544
    score = lambda c_in: c_in * 21 + 21  # noqa: E731 (a 1x1 conv to 21 classes)
    upscore2 = 21 * 21 * 4 * 4  # learnable 2x upsampler, no bias
    assert count_parameters(full_width_model("fcn32s")) == vgg_without_fc8 + score(4096)
    assert count_parameters(full_width_model("fcn16s")) == (vgg_without_fc8 + score(4096)
                                                            + score(512) + upscore2)
    assert count_parameters(full_width_model("fcn8s")) == (vgg_without_fc8 + score(4096) + score(512)
                                                           + score(256) + 2 * upscore2)
    model = make_classroom_model("fcn8s")
    assert count_parameters(model) == sum(p.numel() for p in model.parameters())
    assert full_width_model("fcn8s").score_fr.weight.is_meta


def test_flops_of_a_convolution_by_hand():
    conv = nn.Conv2d(3, 8, 3, padding=1)
    # one multiply-add (2 FLOPs) per weight per output position; bias not counted
    assert count_flops(conv, (16, 20)) == 2 * (8 * 3 * 3 * 3) * (16 * 20)
    strided = nn.Conv2d(3, 4, 5, stride=2)
    assert count_flops(strided, 31) == 2 * (4 * 3 * 5 * 5) * (14 * 14)


def test_flops_of_the_full_width_backbone_by_hand():
    # Every 3x3 conv at its stage's resolution, fc6 (7x7) and fc7 (1x1) at stride 32.
    model = full_width_model("fcn32s")
    size = 224
    expected, c_in = 0, 3
    for stage, (c_out, convs) in enumerate(((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))):
        side = size >> stage
        for _ in range(convs):
            expected += 2 * c_in * c_out * 9 * side * side
            c_in = c_out
    side = size // 32
    expected += 2 * 512 * 4096 * 49 * side * side + 2 * 4096 * 4096 * side * side
    assert count_flops(model.backbone, size) == expected
    # the score layer and the fixed depthwise x32 upsampling on top
    upsample = 2 * 21 * 64 * 64 * side * side
    assert count_flops(model, size) == expected + 2 * 4096 * 21 * side * side + upsample


class _Sleeper(nn.Module):
    """Sleeps a scripted time per call, to check what measure_latency reports."""

    def __init__(self, delays):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.delays, self.calls = list(delays), 0

    def forward(self, x):
        time.sleep(self.delays[self.calls])
        self.calls += 1
        return x


def test_latency_is_the_median_after_warmup():
    sleeper = _Sleeper([0.3, 0.01, 0.05, 0.01])  # a slow first call, then one outlier
    latency = measure_latency(sleeper, 8, repeats=3, warmup=1)
    assert sleeper.calls == 4
    assert 0.01 <= latency < 0.03
    with pytest.raises(ValueError, match="repeats"):
        measure_latency(sleeper, 8, repeats=0)


def test_model_costs_time_a_meta_model_on_a_zeroed_cpu_copy():
    with torch.device("meta"):
        meta = FCN32s(num_classes=3, width=0.0625)
    row = model_costs(meta, 64, repeats=2)
    assert row["params"] == count_parameters(meta)
    assert row["gflops"] == count_flops(meta, 64) / 1e9 > 0
    assert row["latency_ms"] > 0 and row["device"] == "cpu"
    assert meta.score_fr.weight.is_meta  # the caller's model is left as it was
    assert "latency_ms" not in model_costs(meta, 64, time_it=False)


def test_predict_all_is_the_argmax_of_each_model(data, models):
    images, _ = data.tensors()
    models["fcn16s"].train()
    preds = predict_all(models, images, batch_size=4)
    assert list(preds) == ["fcn32s", "fcn16s", "fcn8s"]
    assert models["fcn16s"].training  # mode restored
    models["fcn16s"].eval()
    with torch.no_grad():
        for name, model in models.items():
            assert torch.equal(preds[name], model(images).argmax(1))
    assert not torch.equal(preds["fcn32s"], preds["fcn16s"])


def test_metrics_table_matches_the_definitions_and_evaluate(data, models):
    images, masks = data.tensors()
    preds = predict_all(models, images)
    rows = metrics_table(preds, masks, num_classes=6)
    assert [r["variant"] for r in rows] == ["FCN-32s", "FCN-16s", "FCN-8s"]
    assert list(rows[0]) == ["variant", "pixel_acc", "mean_acc", "mean_iou", "fw_iou", "boundary_acc"]
    for row, model in zip(rows, models.values(), strict=True):
        scores = evaluate(model, data)
        for key in ("pixel_acc", "mean_acc", "mean_iou", "fw_iou", "boundary_acc"):
            assert row[key] == pytest.approx(100 * scores[key])
    perfect = metrics_table({"truth": masks}, masks, num_classes=6)[0]
    assert perfect["variant"] == "truth"
    assert all(perfect[k] == 100 for k in ("pixel_acc", "mean_acc", "mean_iou", "fw_iou", "boundary_acc"))
    # a prediction of all background: accuracy = background's share, mean IU over 6 classes
    background = torch.zeros_like(masks)
    row = metrics_table({"bg": background}, masks, num_classes=6)[0]
    share = (masks == 0).double().mean().item()
    assert row["pixel_acc"] == pytest.approx(100 * share)
    assert row["mean_iou"] == pytest.approx(100 * share / 6)
    cm = torch.zeros(6, 6, dtype=torch.long)
    cm[:, 0] = torch.bincount(masks.flatten(), minlength=6)
    assert row["mean_acc"] == pytest.approx(100 * segmentation_scores(cm)["mean_acc"])


def test_paper_comparison_puts_ours_beside_the_paper():
    rows = [{"variant": "FCN-16s", "pixel_acc": 95.04, "mean_acc": 80.0, "mean_iou": 70.25,
             "fw_iou": 91.0, "boundary_acc": 60.0}]
    assert paper_comparison(rows) == [{"variant": "FCN-16s", "pixel_acc": "95.0 / 90.0",
                                       "mean_acc": "80.0 / 75.7", "mean_iou": "70.2 / 62.4",
                                       "fw_iou": "91.0 / 83.0"}]
    with pytest.raises(ValueError, match="no 'FCN-4s'"):
        paper_comparison([{**rows[0], "variant": "FCN-4s"}])


def test_accuracy_vs_distance_and_its_plot(data, models):
    images, masks = data.tensors()
    preds = predict_all(models, images)
    curves = accuracy_vs_distance(preds, masks, max_distance=8)
    acc, count = accuracy_by_boundary_distance(preds["fcn8s"], masks, 8)
    assert torch.equal(curves["fcn8s"][0], acc) and torch.equal(curves["fcn8s"][1], count)
    assert int(count.sum()) == masks.numel()
    fig = plot_accuracy_vs_distance(curves)
    ax = fig.axes[0]
    assert [line.get_label() for line in ax.get_lines()] == ["FCN-32s", "FCN-16s", "FCN-8s"]
    assert list(ax.get_lines()[2].get_ydata()) == pytest.approx((100 * acc).tolist())
    assert "distance" in ax.get_xlabel() and "accuracy" in ax.get_ylabel()


def test_qualitative_grid_shows_image_truth_and_each_variant(data, models):
    images, _ = data.tensors()
    preds = predict_all(models, images)
    fig = qualitative_grid(data, [4, 1], preds)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["image #4", "ground truth", "FCN-32s", "FCN-16s", "FCN-8s",
                      "image #1", "ground truth", "FCN-32s", "FCN-16s", "FCN-8s"]
    assert len(fig.legends) == 1
    with pytest.raises(ValueError, match="one per image"):
        qualitative_grid(data, [0], {"fcn8s": preds["fcn8s"][:2]})


def test_transfer_curves_plot_one_line_per_method():
    from fcn_lesson.lessons.compare import plot_transfer_curves

    rows = [{"method": m, "masks": n, "steps": 300, "mean_iou": v}
            for m, base in (("scratch", 0.1), ("finetune", 0.3), ("frozen", 0.2))
            for n, v in ((25, base), (100, base + 0.1))]
    fig = plot_transfer_curves(rows)
    lines = fig.axes[0].get_lines()
    assert len(lines) == 3
    np.testing.assert_allclose([line.get_ydata() for line in lines], [[10, 20], [30, 40], [20, 30]])
    assert "300 training steps" in fig.axes[0].get_title()
    with pytest.raises(ValueError, match="no rows"):
        plot_transfer_curves([{"method": "other", "masks": 1, "steps": 1, "mean_iou": 0.0}])


def test_the_upsampling_matrices_are_the_nets_final_upsampling():
    torch.manual_seed(0)
    for stride in (2, 8, 16, 32):
        for cells in (1, 4, 5):
            grid = torch.randn(2, 3, cells, cells + 1)
            separable = torch.einsum("yi,ncij,xj->ncyx", _upsampling_matrix(cells, stride), grid,
                                     _upsampling_matrix(cells + 1, stride))
            torch.testing.assert_close(separable, bilinear_upsample(grid, stride))


def test_best_at_stride_recovers_a_mask_that_its_upsampling_can_draw():
    # A mask drawn by the final upsampling itself, from a random 4 x 4 grid at stride 16: the
    # optimised stride-16 grid finds it again but for pixels near ties between two classes
    # (98 % when written); a stride-32 grid (2 x 2 cells on 64 px) cannot draw it.
    torch.manual_seed(0)
    grid = 4 * torch.randn(3, 5, 4, 4)
    masks = bilinear_upsample(grid, 16)[..., :64, :64].argmax(1)
    pred = best_at_stride(masks, 5, 16)
    assert pred.shape == masks.shape
    assert (pred == masks).double().mean() > 0.97
    assert (best_at_stride(masks, 5, 32) == masks).double().mean() < 0.6


def test_no_trained_net_beats_the_best_its_stride_can_draw():
    from fcn_lesson.classroom import load_classroom_model, validation_set

    images, masks = validation_set(16).tensors()
    best, trained = {}, {}
    for variant in ("fcn32s", "fcn16s", "fcn8s"):
        model = load_classroom_model(variant)
        best[variant] = segmentation_scores(confusion_matrix(
            best_at_stride(masks, model.num_classes, model.output_stride,
                           upsampling=model.upscore_final), masks, model.num_classes))
        trained[variant] = segmentation_scores(confusion_matrix(
            predict(model, images), masks, model.num_classes))
        for metric in ("pixel_acc", "mean_iou"):
            assert trained[variant][metric] < best[variant][metric], (variant, metric)
    assert best["fcn32s"]["mean_iou"] < best["fcn16s"]["mean_iou"] < best["fcn8s"]["mean_iou"] < 1


def test_best_at_stride_with_a_net_s_own_upsampling():
    # The fixed upsampler as a module draws what the fixed matrix path draws; a learned one
    # (here: the bilinear start plus noise, mixing classes) is used as given.
    torch.manual_seed(0)
    masks = bilinear_upsample(4 * torch.randn(2, 5, 8, 8), 8)[..., :60, :60].argmax(1)
    fixed = best_at_stride(masks, 5, 8)
    assert (best_at_stride(masks, 5, 8, upsampling=BilinearUpsample(5, 8)) == fixed).double().mean() > 0.99
    learned = BilinearUpsample(5, 8, learnable=True)
    with torch.no_grad():
        learned.weight.add_(0.2 * torch.randn_like(learned.weight))
    drawn = best_at_stride(masks, 5, 8, upsampling=learned)
    assert drawn.shape == masks.shape and not torch.equal(drawn, fixed)
    assert learned.weight.requires_grad  # the caller's layer is left as it was
    with pytest.raises(ValueError, match="factor 8, not the stride 16"):
        best_at_stride(masks, 5, 16, upsampling=learned)


def test_best_at_stride_wants_a_batch_of_masks():
    with pytest.raises(ValueError, match=r"expected masks \(N, H, W\)"):
        best_at_stride(torch.zeros(64, 64, dtype=torch.long), 6, 32)


def test_errors_near_edges_counts_each_error_by_its_distance_to_the_edge():
    # One 8 x 8 square (class 1) in a 16 x 16 background; distances to its edge are known.
    masks = torch.zeros(1, 16, 16, dtype=torch.long)
    masks[0, 4:12, 4:12] = 1
    pred = masks.clone()
    pred[0, 4, 6] = 0  # on the square's edge (distance 0)
    pred[0, 5, 7] = 0  # one pixel inside (distance 1)
    pred[0, 0, 15] = 1  # in a corner of the background, 4 pixels from the square
    rows = errors_near_edges(pred, masks, 2, distances=(1, 2, 5))
    assert [r["put right"] for r in rows] == ["nothing", "errors ≥ 1 px from an edge",
                                              "errors ≥ 2 px from an edge", "errors ≥ 5 px from an edge"]
    assert [r["errors left (%)"] for r in rows] == pytest.approx([100, 100 / 3, 200 / 3, 100])

    def miou(wrong_square: int, wrong_background: int) -> float:
        # IoU of the background and of the square, with so many pixels of each labelled wrong
        inter_bg, inter_sq = 192 - wrong_background, 64 - wrong_square
        return 50 * (inter_bg / (192 + wrong_square) + inter_sq / (64 + wrong_background))

    expected = [miou(2, 1), miou(1, 0), miou(2, 0), miou(2, 1)]
    assert [r["mean_iou"] for r in rows] == pytest.approx(expected)
    # every error corrected from distance 1: only the edge pixel is left; nothing wrong: 100
    assert errors_near_edges(masks, masks, 2)[-1]["mean_iou"] == 100


def test_errors_near_edges_refuses_bad_input():
    masks = torch.zeros(1, 8, 8, dtype=torch.long)
    with pytest.raises(ValueError, match="shapes differ"):
        errors_near_edges(masks[:, :4], masks, 2)
    with pytest.raises(ValueError, match=">= 1 pixel"):
        errors_near_edges(masks, masks, 2, distances=(0, 2))
