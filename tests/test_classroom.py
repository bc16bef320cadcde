"""The shipped classroom checkpoints: offline, and as good as data/README.md says.

Evaluated here on fresh images (a seed never used in training), not copied from a file.
"""

import pytest
import torch

from fcn_lesson import classroom
from fcn_lesson.classroom import load_classroom_model, validation_set
from fcn_lesson.engine.checkpoint import CheckpointError, load_checkpoint, read_meta
from fcn_lesson.engine.loop import evaluate

# Issue 12's targets (fresh images, 128 px; measured 0.574 / 0.756 / 0.882, data/README.md). And
# the share of the 128-px mean IoU each model must keep on 150-px images (not a multiple of 32:
# padded to 160, then cropped back).
MIN_MEAN_IOU = {"fcn32s": 0.55, "fcn16s": 0.75, "fcn8s": 0.88}
MIN_KEPT_AT_150 = 0.90


@pytest.fixture(scope="module")
def scores():
    torch.manual_seed(0)
    out = {}
    for size in (128, 150):
        data = validation_set(100, size)
        for variant in classroom.STAGES:
            out[variant, size] = evaluate(load_classroom_model(variant, device="cpu"), data)
    return out


@pytest.mark.parametrize("variant", classroom.STAGES)
def test_checkpoint_loads_offline_in_eval_mode(variant):
    model = load_classroom_model(variant, device="cpu")
    assert model.variant == variant and not model.training
    assert model.num_classes == 6 and model.width == classroom.WIDTH
    x = torch.rand(1, 3, 97, 131)
    assert model(x).shape == (1, 6, 97, 131)


@pytest.mark.parametrize("variant", classroom.STAGES)
def test_mean_iou_at_128(scores, variant):
    assert scores[variant, 128]["mean_iou"] >= MIN_MEAN_IOU[variant]


def test_the_papers_trend(scores):
    for size in (128, 150):
        miou = [scores[v, size]["mean_iou"] for v in classroom.STAGES]
        assert miou[0] < miou[1] < miou[2], (size, miou)
        boundary = [scores[v, size]["boundary_acc"] for v in classroom.STAGES]
        assert boundary[0] < boundary[2], (size, boundary)


@pytest.mark.parametrize("variant", classroom.STAGES)
def test_sizes_off_the_32_grid_keep_quality(scores, variant):
    kept = scores[variant, 150]["mean_iou"] / scores[variant, 128]["mean_iou"]
    assert kept >= MIN_KEPT_AT_150


def test_shipped_metadata_describes_the_training():
    # Stage-wise from the classroom classifier, as the paper from ImageNet VGG16 (Sec. 4.1, 4.2).
    # FCN-8s: trained from data/fcn16s.pt, then its final upsampling learned and the net trained
    # further (data/README.md); its file records that last step, started from the net before it.
    expected_init = {"fcn32s": "data/classifier.pt", "fcn16s": "data/fcn32s.pt",
                     "fcn8s": "checkpoints/fcn8s_up.pt"}
    for variant in classroom.STAGES:
        _, meta = load_checkpoint(classroom.checkpoint_path(variant))
        assert meta["classes"] == list(validation_set(1).classes)
        assert meta["dataset"]["train_seed"] != classroom.EVAL_SEED
        assert meta["dataset"]["val_seed"] != classroom.EVAL_SEED
        assert meta["training"]["init"] == expected_init[variant]
    assert sum(p.stat().st_size for p in classroom.data_dir().iterdir()) < 30e6


def test_the_shipped_fcn8s_learned_its_final_upsampling(scores):
    """The paper keeps FCN's final upsampling fixed to bilinear; the classroom FCN-8s learned its
    own. Put the bilinear kernel back into the trained net and it scores far less."""
    from fcn_lesson.core.upsample import BilinearUpsample

    model = load_classroom_model("fcn8s", device="cpu")
    assert model.learn_final_upsampling
    assert read_meta(classroom.checkpoint_path("fcn8s"))["learn_final_upsampling"]
    model.upscore_final = BilinearUpsample(model.num_classes, 8)
    bilinear = evaluate(model, validation_set(100, 128))["mean_iou"]
    assert bilinear < scores["fcn8s", 128]["mean_iou"] - 0.01


def test_the_tuned_score_offsets_help_on_images_they_were_not_tuned_on(scores):
    """Each shipped net's per-class offsets (`tune-shift`) were tuned on validation images; on
    the fresh evaluation images, undoing them must lower mean IoU."""
    data = validation_set(100, 128)
    for variant in classroom.STAGES:
        record = read_meta(classroom.checkpoint_path(variant))["class_shift"]
        assert f"seed={classroom.VAL_SEED})" in record["data"]
        model = load_classroom_model(variant, device="cpu")
        model.shift_class_scores(-classroom.class_shift(variant))
        untuned = evaluate(model, data)["mean_iou"]
        assert untuned < scores[variant, 128]["mean_iou"], (variant, untuned)


def test_missing_checkpoint_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("FCN_LESSON_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="git checkout -- data/"):
        load_classroom_model("fcn8s")
    with pytest.raises(ValueError, match="unknown variant"):
        load_classroom_model("fcn4s")


def test_checkpoint_of_another_variant_is_refused(tmp_path, monkeypatch):
    (tmp_path / "fcn8s.pt").write_bytes(classroom.checkpoint_path("fcn16s").read_bytes())
    monkeypatch.setenv("FCN_LESSON_DATA", str(tmp_path))
    with pytest.raises(CheckpointError, match="holds a fcn16s"):
        load_classroom_model("fcn8s")


def test_coins_reference_and_what_the_shipped_fcn8s_makes_of_them():
    """scikit-image's coins photograph (greyscale over 3 channels, [0, 1]) against the classical
    reference segmentation (Sobel + watershed): it finds the 24 coins. The shipped FCN-8s
    (transplanted from the classroom classifier, fine-tuned with photo-style images) calls
    them all disks (measured: 24 of 24, foreground IoU 0.861; the from-scratch one shipped before
    it: 10 and 0.709), issue 12's goal."""
    from fcn_lesson.lessons.photos import NUM_COINS, coins_reference_mask, label_coins, segment_coins

    reference = coins_reference_mask()
    assert label_coins(reference)[1] == NUM_COINS
    assert 0.25 < reference.mean() < 0.45
    result = segment_coins(load_classroom_model("fcn8s", device="cpu"))
    assert result["coins"] == NUM_COINS
    assert result["as_class"] == NUM_COINS and result["iou"] >= 0.85
