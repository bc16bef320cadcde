"""Notebook 8's computations: patchwise = FCN in the interior, dilation = shift-and-stitch, the
alignment of denser score maps, and the sum-vs-concat fusion experiment."""

import json

import pytest
import torch
from support import scored_classroom_model

from fcn_lesson import classroom
from fcn_lesson.datasets.shapes import ShapesDataset
from fcn_lesson.lessons import history


@pytest.fixture(scope="module")
def fcn32s():
    return scored_classroom_model("fcn32s")


def test_receptive_field_and_interior_cells(fcn32s):
    assert history.receptive_field(fcn32s) == 404
    # Cell i is centred on 15.5 + 32 i and sees 404 px: inside a 640-px side for i = 6 ... 13.
    assert history.interior_cells(640, 404) == range(6, 14)
    for i in (5, 14):
        centre = 15.5 + 32 * i
        assert centre - 201.5 < 0 or centre + 201.5 > 639


def test_patchwise_classification_equals_one_fcn_pass_in_the_interior(fcn32s):
    image = ShapesDataset(1, 480, seed=3)[0][0]
    result = history.patchwise_vs_fcn(fcn32s, image, cells=2)
    assert result["cells"] == 2 and result["patch"] == 416
    assert result["max_abs_diff"] < 1e-4 * result["score_range"]
    assert result["grid_cells"] == 15 * 15 and result["cost_ratio"] > 0


def test_patchwise_refuses_an_image_too_small_for_an_interior(fcn32s):
    with pytest.raises(ValueError, match="no cell whose 404-pixel receptive field fits"):
        history.patchwise_vs_fcn(fcn32s, torch.rand(3, 256, 256))


@pytest.mark.parametrize("stride", [32, 16, 8])
def test_dilated_net_keeps_the_original_cells(fcn32s, stride):
    x = ShapesDataset(1, (96, 160), seed=4).tensors()[0]
    original = history.score_fr(fcn32s, x)
    dense = history.dilated_scores(fcn32s, x, stride)
    step = 32 // stride
    assert dense.shape[-2:] == (original.shape[-2] * step, original.shape[-1] * step)
    assert torch.allclose(dense[..., ::step, ::step], original, atol=1e-4)
    if stride < 32:  # the cells in between are new
        assert not torch.allclose(dense[..., 1::step, ::step], original, atol=1e-2)


def test_dilation_equals_shift_and_stitch_in_the_interior(fcn32s):
    x = ShapesDataset(1, 512, seed=5).tensors()[0]
    stitched = history.shift_and_stitch(fcn32s, x, 8)
    dilated = history.dilated_scores(fcn32s, x, 8)
    assert stitched.shape == dilated.shape == (1, 6, 64, 64)
    # Cells whose 404-px field stays inside the image for every shift (up to 24 px): 27 ... 33.
    inner = (..., slice(27, 34), slice(27, 34))
    assert torch.allclose(stitched[inner], dilated[inner], atol=1e-4)
    assert not torch.allclose(stitched, dilated, atol=1e-4)  # the borders differ


def test_dilated_scores_needs_eval_mode_and_a_known_stride(fcn32s):
    with pytest.raises(ValueError, match="output_stride must be 8, 16 or 32"):
        history.dilated_scores(fcn32s, torch.rand(1, 3, 64, 64), 4)
    fcn32s.train()
    try:
        with pytest.raises(ValueError, match="eval mode"):
            history.dilated_scores(fcn32s, torch.rand(1, 3, 64, 64), 8)
    finally:
        fcn32s.eval()


def test_upsample_scores_at_stride_32_is_the_models_output(fcn32s):
    x = ShapesDataset(1, (100, 150), seed=6).tensors()[0]
    with torch.no_grad():
        expected = fcn32s(x)
    got = history.upsample_scores(history.score_fr(fcn32s, x), 32, 100, 150)
    assert torch.allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("stride", [8, 16])
def test_upsample_scores_puts_each_cell_on_its_centre(stride):
    # Cell j of a stride-s grid is centred on pixel 15.5 + s j: the peak lands between 15 + s j
    # and 16 + s j.
    scores = torch.zeros(1, 1, 8, 8)
    scores[..., 2, 3] = 1.0
    up = history.upsample_scores(scores, stride, 8 * stride, 8 * stride)[0, 0]
    row, col = 15 + 2 * stride, 15 + 3 * stride
    assert up[row, col] == up[row + 1, col + 1] == up.max()


def test_dilation_costs_more_flops_the_denser_it_is(fcn32s):
    x = torch.rand(1, 3, 128, 128)
    flops = [history.count_gflops(history.dilated_scores, fcn32s, x, s) for s in (32, 16, 8)]
    assert flops[0] < flops[1] < flops[2]


CHANNELS = {"pool3": 32, "pool4": 64, "fc7": 512}


def _features(n=2):
    return {"pool3": torch.randn(n, 32, 16, 16), "pool4": torch.randn(n, 64, 8, 8),
            "fc7": torch.randn(n, 512, 4, 4)}


@pytest.mark.parametrize("head", history.FUSION_HEADS.values())
def test_fusion_heads_give_stride_1_scores(head):
    assert head(CHANNELS, 6)(_features()).shape == (2, 6, 128, 128)


def test_sum_fusion_has_fcn8s_layers_and_fewer_parameters_and_activations():
    sum_head, concat_head = (h(CHANNELS, 6) for h in history.FUSION_HEADS.values())
    n_sum = sum(p.numel() for p in sum_head.parameters())
    # FCN-8s's score layers and its two learnable 2x upsamplers (6 x 6 x 4 x 4 each)
    assert n_sum == (512 + 64 + 32) * 6 + 3 * 6 + 2 * 6 * 6 * 4 * 4
    assert sum(p.numel() for p in concat_head.parameters()) > 20 * n_sum
    feats = _features(1)
    sum_bytes = history.saved_activation_bytes(sum_head, feats)
    concat_bytes = history.saved_activation_bytes(concat_head, feats)
    # At least the three feature maps (read by the 1 x 1 convs), float32
    assert sum_bytes >= 4 * (32 * 16 * 16 + 64 * 8 * 8 + 512 * 4 * 4)
    assert concat_bytes > sum_bytes


def test_train_head_lowers_the_loss():
    torch.manual_seed(0)
    feats = _features(8)
    masks = torch.randint(0, 6, (8, 128, 128))
    masks[:, :64] = 0  # something learnable: the top half is background
    head = history.SumFusionHead(CHANNELS, 6)
    losses = history.train_head(head, feats, masks, steps=30, batch_size=4, lr=1e-2)
    assert len(losses) == 30 and sum(losses[-5:]) < sum(losses[:5])
    assert not head.training


def test_the_experiment_command_writes_its_json(tmp_path):
    out = tmp_path / "fusion.json"
    history.main(["--checkpoint", str(classroom.checkpoint_path("fcn32s")), "--out", str(out),
                  "--train-images", "8", "--val-images", "4", "--steps", "3"])
    result = json.loads(out.read_text())
    assert set(result["heads"]) == set(history.FUSION_HEADS)
    for head in result["heads"].values():
        assert head["params"] > 0 and head["activation_bytes_per_image"] > 0
        assert 0 <= head["mean_iou"] <= 1
    assert "--steps 3" in result["command"] and result["settings"]["steps"] == 3
    assert result["settings"]["checkpoint_sha256"] == history.file_sha256(classroom.checkpoint_path("fcn32s"))


def test_the_experiments_default_seeds_are_the_classrooms():
    args = history.experiment_parser().parse_args([])
    assert (args.train_seed, args.val_seed) == (classroom.TRAIN_SEED, classroom.EVAL_SEED)


def test_mixed_objects_counts_objects_labelled_with_two_object_classes():
    truth = torch.zeros(1, 10, 10, dtype=torch.long)
    truth[0, 0:4, 0:5] = 1  # object A, 20 px
    truth[0, 6:10, 6:10] = 2  # object B, 16 px
    pred = truth.clone()
    pred[0, 0, 0] = 2  # 1 px of A (5 %): counts as a second label
    pred[0, 6, 6] = 0  # background inside B does not make it mixed
    assert history.mixed_objects(pred, truth, 3) == (1, 2)
    assert history.mixed_objects(pred, truth, 3, min_share=0.1) == (0, 2)
