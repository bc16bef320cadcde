"""Per-class score offsets tuned for mean IoU (fcn_lesson.engine.calibrate) and the
`tune-shift` command that writes them into a checkpoint."""

import copy

import pytest
import torch

from fcn_lesson import FCN8s, FCN16s, FCN32s, classroom
from fcn_lesson.classroom import load_classroom_model
from fcn_lesson.cli import main
from fcn_lesson.datasets.shapes import ShapesDataset
from fcn_lesson.engine.calibrate import best_class_shift, learn_final_upsampling, tune_class_shift
from fcn_lesson.engine.checkpoint import read_checkpoint, read_meta, save_checkpoint
from fcn_lesson.engine.loop import evaluate

TINY = dict(num_classes=6, width=1 / 16, batch_norm=True, dropout=0.0)
BAR = ShapesDataset.classes.index("bar")


@pytest.mark.parametrize("make", [FCN32s, FCN16s, FCN8s])
def test_a_shift_moves_every_score_inside_the_image_by_exactly_its_value(make):
    torch.manual_seed(0)
    model = make(**TINY).eval()
    for p in model.parameters():  # every layer non-zero, score layers included
        p.data.normal_(0, 0.1)
    x = torch.rand(2, 3, 96, 128)
    shift = torch.tensor([0.5, 1.0, -2.0, 3.0, 0.5, -1.0])
    with torch.no_grad():
        before = model(x)
        after = model.shift_class_scores(shift)(x)
    moved = after - before
    half = model.output_stride // 2
    inside = moved[..., half:-half, half:-half]
    assert torch.allclose(inside, shift.view(1, -1, 1, 1).expand_as(inside), atol=1e-4)
    # At the border the zero-padded bilinear upsampling passes on less of it, never more.
    share = moved / shift.view(1, -1, 1, 1)
    assert share.min() > 0.2 and share.max() < 1 + 1e-4


def test_a_shift_needs_one_value_per_class():
    with pytest.raises(ValueError, match=r"one value per class, shape \(6,\)"):
        FCN32s(**TINY).shift_class_scores(torch.zeros(5))


@pytest.fixture(scope="module")
def held_out():
    return ShapesDataset(24, 128, seed=classroom.VAL_SEED)


def test_tuning_undoes_a_known_handicap_and_the_folded_net_scores_what_the_search_said(held_out):
    """Lower the shipped FCN-16s's bar score by 3: bars vanish. The search must give most of it
    back, and the net with the offsets folded in must score exactly what the search measured."""
    model = load_classroom_model("fcn16s", device="cpu")
    handicap = torch.zeros(6)
    handicap[BAR] = -3.0
    model.shift_class_scores(handicap)
    result = tune_class_shift(model, held_out)
    assert result["shift"][BAR] >= 2.0 and result["shift"][0] == 0
    assert result["mean_iou_after"] > result["mean_iou_before"] + 0.05
    assert evaluate(model, held_out)["mean_iou"] == pytest.approx(result["mean_iou_before"], abs=1e-9)
    model.shift_class_scores(result["shift"])
    assert evaluate(model, held_out)["mean_iou"] == pytest.approx(result["mean_iou_after"], abs=1e-9)


def test_with_a_learned_final_upsampling_the_folded_net_scores_what_the_search_said(held_out):
    """A learned final upsampling may mix classes, so one class's offset reaches the other
    classes' scores too; the search must count that, or the folded net scores something else."""
    torch.manual_seed(0)
    model = FCN8s(**TINY, learn_final_upsampling=True).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        model.last_score_layer.bias[BAR] -= 3.0
    x = held_out[0][0][None]
    with torch.no_grad():
        moved = copy.deepcopy(model).shift_class_scores(torch.eye(6)[BAR])(x) - model(x)
    assert moved[0, 1].abs().max() > 0.05  # the bar's offset moves the disk's scores too
    result = tune_class_shift(model, held_out)
    assert result["mean_iou_after"] > result["mean_iou_before"]
    model.shift_class_scores(result["shift"])
    assert evaluate(model, held_out)["mean_iou"] == pytest.approx(result["mean_iou_after"], abs=1e-9)


def test_learning_the_final_upsampling_draws_what_bilinear_cannot():
    """Masks that are the net's own prediction with its two most frequent classes' names swapped:
    no per-class bilinear kernel draws them, a learned (classes x classes) one can (it may send
    one class's scores to another). Nothing else moves, and the net given is left as it was."""
    torch.manual_seed(0)
    model = FCN8s(**TINY).eval()
    for layer in (model.score_fr, model.score_pool4, model.score_pool3):
        torch.nn.init.normal_(layer.weight, std=0.3)
    images = torch.rand(48, 3, 64, 64)
    with torch.no_grad():
        pred = model(images).argmax(1)
        a, b = torch.bincount(pred.flatten(), minlength=6).argsort(descending=True)[:2].tolist()
        swap = torch.arange(6)
        swap[a], swap[b] = b, a
        masks = swap[pred]
        before = (pred == masks).double().mean().item()
    data = torch.utils.data.TensorDataset(images, masks)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    learned = learn_final_upsampling(model, data, steps=150, batch_size=8, lr=1e-2)
    with torch.no_grad():
        after = (learned(images).argmax(1) == masks).double().mean().item()
    assert before < 0.9 and after > 0.95, (before, after)
    assert learned.learn_final_upsampling and not model.learn_final_upsampling and not learned.training
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # model unchanged
    moved = {k for k, v in learned.state_dict().items()
             if k in state and k != "upscore_final.weight" and not torch.equal(v, state[k])}
    assert moved == set()  # every other tensor as it was: only the final upsampling learned
    with pytest.raises(ValueError, match="images of one size"):
        learn_final_upsampling(model, torch.utils.data.ConcatDataset(
            [ShapesDataset(2, 64, seed=3), ShapesDataset(2, 96, seed=3)]))


def test_the_learn_upsampling_command_takes_the_offsets_off_and_records_what_it_did(tmp_path, capsys):
    torch.manual_seed(0)
    model = FCN8s(**TINY)
    model.shift_class_scores(torch.tensor([0.0, 1.0, 0.0, 0.0, 0.0, 2.0]))
    path = tmp_path / "fcn8s.pt"
    save_checkpoint(path, model, classes=ShapesDataset.classes, dataset={"name": "shapes"},
                    class_shift={"shift": [0.0, 1.0, 0.0, 0.0, 0.0, 2.0]})
    out = tmp_path / "learned.pt"
    assert main(["learn-upsampling", "--checkpoint", str(path), "--out", str(out), "--train-images", "8",
                 "--steps", "3", "--val-images", "4", "--image-size", "64"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    meta = read_meta(out)
    assert meta["learn_final_upsampling"] and "class_shift" not in meta
    assert meta["final_upsampling"]["steps"] == 3 and "seed=0" in meta["final_upsampling"]["data"]
    assert torch.all(read_checkpoint(out)["state_dict"]["score_pool3.bias"] == 0)  # offsets taken off
    assert main(["learn-upsampling", "--checkpoint", str(path), "--out", str(out),
                 "--val-seed", str(classroom.EVAL_SEED)]) == 2
    assert "evaluation seed" in capsys.readouterr().err


def test_tuning_refuses_images_of_several_sizes_and_no_images():
    model = FCN32s(**TINY)
    mixed = torch.utils.data.ConcatDataset([ShapesDataset(2, 64, seed=3), ShapesDataset(2, 96, seed=3)])
    with pytest.raises(ValueError, match="images of one size"):
        tune_class_shift(model, mixed)
    with pytest.raises(ValueError, match="at least one image"):
        tune_class_shift(model, ShapesDataset(0, 64, seed=3))


def test_the_command_writes_the_tuned_net_with_its_record(tmp_path, capsys):
    torch.manual_seed(0)
    model = FCN8s(**TINY)
    path = tmp_path / "fcn8s.pt"
    save_checkpoint(path, model, classes=ShapesDataset.classes, history=[{"epoch": 1}],
                    dataset={"name": "shapes"}, half=True)
    out = tmp_path / "tuned.pt"
    assert main(["tune-shift", "--checkpoint", str(path), "--out", str(out), "--images", "4",
                 "--image-size", "64"]) == 0
    printed = capsys.readouterr().out
    assert "score offsets per class: background +0.000" in printed and f"wrote {out}" in printed
    meta = read_meta(out)
    assert meta["history"] == [{"epoch": 1}] and meta["classes"] == list(ShapesDataset.classes)
    record = meta["class_shift"]
    assert len(record["shift"]) == 6 and record["mean_iou_after"] >= record["mean_iou_before"]
    assert f"seed={classroom.VAL_SEED}" in record["data"]
    state = read_checkpoint(out)["state_dict"]
    assert state["score_pool3.bias"].dtype == torch.float16  # stored as it came
    assert torch.allclose(state["score_pool3.bias"].float(), torch.tensor(record["shift"]).half().float())


def test_the_command_refuses_the_evaluation_seed(tmp_path, capsys):
    path = tmp_path / "fcn32s.pt"
    save_checkpoint(path, FCN32s(**TINY), dataset={"name": "shapes"})
    assert main(["tune-shift", "--checkpoint", str(path), "--out", str(path),
                 "--seed", str(classroom.EVAL_SEED)]) == 2
    assert "evaluation seed" in capsys.readouterr().err


def test_the_search_refuses_labels_it_cannot_score():
    logits = torch.zeros(2, 3, 8, 8)
    masks = torch.zeros(2, 8, 8, dtype=torch.long)
    masks[0, 0, 0] = 7
    with pytest.raises(ValueError, match=r"labels \[7\] outside \[0, 3\)"):
        best_class_shift(logits, masks)
    with pytest.raises(ValueError, match=r"logits \(N, C, H, W\) and masks \(N, H, W\)"):
        best_class_shift(logits, masks[:1])


def test_the_search_finds_the_offset_that_a_handicap_took_away():
    # Noisy scores that name every pixel right, then class 2 lowered by 3 everywhere: the search
    # must give class 2 about +3 back, and score 1.0 again.
    torch.manual_seed(0)
    masks = torch.randint(0, 3, (4, 16, 16))
    logits = 2.0 * torch.nn.functional.one_hot(masks, 3).permute(0, 3, 1, 2).float()
    logits += 0.3 * torch.randn_like(logits)
    logits[:, 2] -= 3.0
    shift, before, after = best_class_shift(logits, masks)
    assert before < 0.5 and after == 1.0
    assert 2.0 <= shift[2] <= 4.0 and shift[0] == 0
