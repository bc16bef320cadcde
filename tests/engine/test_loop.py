import math

import numpy as np
import pytest
import torch
from PIL import Image

from fcn_lesson import FCN8s, FCN16s, FCN32s
from fcn_lesson.cli import main
from fcn_lesson.datasets.shapes import PALETTE, ShapesDataset
from fcn_lesson.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, training_seconds
from fcn_lesson.engine.loop import (
    CPU_PIXELS_PER_PASS,
    epoch_summary,
    evaluate,
    fit,
    predict,
    train_or_load,
)

TINY = dict(num_classes=6, width=1 / 16, batch_norm=True, dropout=0.0)


@pytest.fixture(scope="module")
def tiny_data():
    return ShapesDataset(48, 64, seed=11), ShapesDataset(16, 64, seed=12)


def test_short_training_lowers_loss_and_raises_mean_iou():
    """A real run, small enough for CI: fit 16 images; loss and their mean IoU must improve
    (held-out quality is what the shipped-checkpoint tests check)."""
    train = ShapesDataset(16, 64, seed=11)
    torch.manual_seed(0)
    model = FCN8s(**TINY)
    before = evaluate(model, train)["mean_iou"]
    history = fit(model, train, train, epochs=40, batch_size=8, lr=1e-2, progress=False)
    assert len(history) == 40
    assert history[-1]["train_loss"] < 0.5 * history[0]["train_loss"]
    assert history[-1]["val_mean_iou"] > before + 0.15
    assert not model.training


def test_training_is_reproducible(tiny_data):
    train, _ = tiny_data
    runs = []
    for _ in range(2):
        torch.manual_seed(123)
        model = FCN32s(**TINY)
        fit(model, train, epochs=1, batch_size=8, seed=5, max_steps=3, progress=False)
        runs.append(model.score_fr.weight.detach().clone())
    torch.testing.assert_close(runs[0], runs[1])


def _train_tiny(path, train, val, variant=FCN32s, **kwargs):
    return train_or_load(path, lambda: variant(**TINY), train, val, epochs=1, batch_size=8,
                         max_steps=2, progress=False, **kwargs)


def test_train_or_load_round_trip(tmp_path, tiny_data, monkeypatch):
    train, val = tiny_data
    path = tmp_path / "ckpt" / "fcn32s.pt"
    model, meta = _train_tiny(path, train, val, checkpoint_meta={"classes": list(train.classes)})
    assert path.is_file() and not list(path.parent.glob("*.tmp"))
    assert meta["variant"] == "fcn32s" and meta["num_classes"] == 6 and meta["width"] == 1 / 16
    assert meta["classes"] == list(train.classes)
    assert set(meta["metrics"]) >= {"pixel_acc", "mean_acc", "mean_iou", "fw_iou", "boundary_acc"}
    assert {"torch", "torchvision", "fcn_lesson"} <= set(meta["versions"])

    import fcn_lesson.engine.loop as train_module

    def no_training(*args, **kwargs):
        raise AssertionError("train_or_load trained although the checkpoint exists")

    monkeypatch.setattr(train_module, "fit", no_training)
    loaded, meta2 = _train_tiny(path, train, val)
    assert not loaded.training
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    x = torch.rand(1, 3, 50, 70)
    torch.testing.assert_close(model(x), loaded(x))


def test_half_checkpoint_is_smaller_and_loads_as_float(tmp_path):
    model = FCN8s(**TINY).eval()
    full = save_checkpoint(tmp_path / "full.pt", model)
    half = save_checkpoint(tmp_path / "half.pt", model, half=True)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    loaded, meta = load_checkpoint(half)
    assert loaded.backbone.head.fc6.weight.dtype == torch.float32
    torch.testing.assert_close(loaded.backbone.head.fc6.weight, model.backbone.head.fc6.weight,
                               atol=1e-3, rtol=1e-3)
    # the metadata says how it was stored, so a re-save (tune-shift) can store it the same way
    assert meta["half"] is True and load_checkpoint(full)[1]["half"] is False
    # files written before "half" was recorded: told by the stored floats
    payload = torch.load(half, weights_only=True)
    del payload["half"]
    torch.save(payload, tmp_path / "old.pt")
    assert load_checkpoint(tmp_path / "old.pt")[1]["half"] is True


def test_checkpoint_loads_with_the_dropout_its_net_was_trained_with(tmp_path):
    # At inference dropout does nothing; a loaded net trained further must not gain dropout
    # it never had (the classroom nets were trained without).
    for p in (0.0, 0.3):
        path = save_checkpoint(tmp_path / f"d{p}.pt", FCN8s(**{**TINY, "dropout": p}))
        loaded, meta = load_checkpoint(path)
        assert meta["dropout"] == p == loaded.backbone.head.drop6.p == loaded.backbone.head.drop7.p
    # files written before dropout was recorded: their dataset's training default
    payload = torch.load(tmp_path / "d0.3.pt", weights_only=True)
    del payload["dropout"]
    for dataset, p in (("shapes", 0.0), ("voc", 0.5)):
        torch.save({**payload, "dataset": {"name": dataset}}, tmp_path / "old.pt")
        assert load_checkpoint(tmp_path / "old.pt")[0].backbone.head.drop6.p == p
    from fcn_lesson.classroom import load_classroom_model

    assert load_classroom_model("fcn8s").backbone.head.drop6.p == 0.0


def test_checkpoint_loads_a_learned_final_upsampling_as_it_was_trained(tmp_path):
    torch.manual_seed(0)
    model = FCN8s(**TINY, learn_final_upsampling=True).eval()
    with torch.no_grad():
        model.upscore_final.weight.add_(0.1 * torch.randn_like(model.upscore_final.weight))
    loaded, meta = load_checkpoint(save_checkpoint(tmp_path / "learned.pt", model))
    assert meta["learn_final_upsampling"] and loaded.upscore_final.learnable
    x = torch.rand(1, 3, 40, 56)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    # files written before it was recorded learned none
    payload = torch.load(save_checkpoint(tmp_path / "fixed.pt", FCN8s(**TINY)), weights_only=True)
    del payload["learn_final_upsampling"]
    torch.save(payload, tmp_path / "old.pt")
    assert not load_checkpoint(tmp_path / "old.pt")[0].upscore_final.learnable


def test_training_seconds_add_up_a_chain_of_runs():
    first = {"training": {"seconds": 100.0}}
    learned = {"training": first["training"], "final_upsampling": {"seconds": 5.0}}
    further = {"training": {"seconds": 20.0, "continued_from": learned}}
    assert training_seconds(first) == 100.0 and training_seconds(further) == 125.0
    assert math.isnan(training_seconds({}))


@pytest.mark.parametrize("kwargs, match", [
    ({"variant": "fcn8s"}, "holds a fcn16s"),
    ({"num_classes": 21}, "num_classes=21"),
    ({"width": 0.125}, "width=0.125"),
])
def test_checkpoint_for_another_model_is_refused(tmp_path, kwargs, match):
    path = save_checkpoint(tmp_path / "m.pt", FCN16s(**TINY))
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(path, **kwargs)


def test_truncated_or_foreign_checkpoint_gives_a_clear_error(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", FCN32s(**TINY))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(path)
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not an fcn_lesson checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


def test_tampered_state_dict_is_refused_whole(tmp_path):
    model = FCN16s(**TINY)
    path = save_checkpoint(tmp_path / "m.pt", model)
    payload = torch.load(path, weights_only=True)
    del payload["state_dict"]["score_pool4.weight"]
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="does not match"):
        load_checkpoint(path)


def test_pickled_code_is_not_executed(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"variant": "fcn8s", "state_dict": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "evil.pt")


def test_interrupted_write_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "m.pt", FCN32s(**TINY))
    before = path.read_bytes()

    def crash(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, FCN32s(**TINY))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


@pytest.mark.parametrize("command", ["train", "evaluate", "predict"])
def test_cli_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "--variant" in out and "usage" in out


def test_cli_train_evaluate_predict(tmp_path, capsys):
    ckpt = tmp_path / "fcn32s.pt"
    assert main(["train", "--variant", "fcn32s", "--width", "0.0625", "--epochs", "1",
                 "--train-images", "16", "--val-images", "4", "--image-size", "48",
                 "--batch-size", "8", "--out", str(ckpt), "--half"]) == 0
    _, meta = load_checkpoint(ckpt)
    assert meta["dataset"]["train_images"] == 16 and meta["training"]["init"] == "scratch"
    ck16 = tmp_path / "fcn16s.pt"
    assert main(["train", "--variant", "fcn16s", "--init", str(ckpt), "--width", "0.0625",
                 "--epochs", "1", "--train-images", "8", "--val-images", "4",
                 "--image-size", "48", "--out", str(ck16)]) == 0
    assert main(["evaluate", "--checkpoint", str(ck16), "--images", "4", "--image-size", "40"]) == 0
    assert '"mean_iou"' in capsys.readouterr().out

    image, _ = ShapesDataset(1, (45, 70), seed=3)[0]
    png = tmp_path / "shapes.png"
    Image.fromarray((image.permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(png)
    out = tmp_path / "mask.png"
    assert main(["predict", str(png), "--checkpoint", str(ck16), "--out", str(out)]) == 0
    mask = np.asarray(Image.open(out).convert("RGB"))
    assert mask.shape == (45, 70, 3)
    colours = {tuple(c) for c in mask.reshape(-1, 3)}
    assert colours <= {tuple(c) for c in PALETTE.tolist()}


def test_cli_errors_are_messages_not_tracebacks(tmp_path, capsys):
    assert main(["predict", str(tmp_path / "nope.png"), "--checkpoint", "x.pt"]) == 2
    assert "no image file" in capsys.readouterr().err
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    assert main(["predict", str(bad), "--checkpoint", "x.pt"]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(tmp_path / "missing.pt")]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_evaluate_ignores_255(tiny_data):
    _, val = tiny_data
    model = FCN32s(**TINY).eval()
    images, masks = val.tensors()
    masks = masks.clone()
    masks[:, :8] = 255
    data = torch.utils.data.TensorDataset(images, masks)
    scores = evaluate(model, data)
    assert int(scores["confusion"].sum()) == int((masks != 255).sum())
    assert not math.isnan(scores["boundary_acc"])


def test_checkpoint_gets_ordinary_file_permissions(tmp_path):
    import os

    umask = os.umask(0o022)
    try:
        path = save_checkpoint(tmp_path / "m.pt", FCN32s(**TINY))
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644


def test_predict_on_cpu_keeps_each_pass_under_the_pixel_budget():
    torch.manual_seed(0)
    model = FCN8s(num_classes=3, width=0.0625, dropout=0.0)
    torch.nn.init.normal_(model.score_fr.weight, std=1.0)
    passes = []
    model.register_forward_pre_hook(lambda _module, args: passes.append(len(args[0])))
    assert CPU_PIXELS_PER_PASS == 512 * 512
    for count, size, batch_size, expected in ((3, 512, 16, [1, 1, 1]), (20, 128, 16, [16, 4]),
                                              (5, 64, 2, [2, 2, 1]), (2, 600, 16, [1, 1])):
        passes.clear()
        images = torch.rand(count, 3, size, size)
        labels = predict(model, images, batch_size=batch_size)
        assert passes == expected, (size, passes)
        assert labels.shape == (count, size, size)
        with torch.no_grad():
            one_by_one = torch.cat([model(images[i:i + 1]).argmax(1) for i in range(count)])
        assert torch.equal(labels, one_by_one)


def test_fit_settings_are_a_config_and_misspellings_are_named():
    from fcn_lesson.engine.loop import FitConfig

    data = ShapesDataset(2, 32, seed=0)
    model = FCN32s(num_classes=len(data.classes), width=1 / 16)
    with pytest.raises(TypeError, match=r"unknown settings \['epoch'\]; FitConfig has epochs"):
        fit(model, data, epoch=1, progress=False)
    with pytest.raises(ValueError, match="optimizer must be 'adam' or 'sgd'"):
        FitConfig(optimizer="adamw")
    # A config and keyword settings combine: the keywords win.
    history = fit(model, data, config=FitConfig(epochs=3, batch_size=2), epochs=1, max_steps=1,
                  progress=False)
    assert [h["epoch"] for h in history] == [1] and history[0]["step"] == 1


def test_epoch_summary_is_short_lines_that_keep_every_number():
    record = {"epoch": 3, "step": 1500, "train_loss": 0.123456, "train_pixel_acc": 0.95432,
              "lr": 0.000123456, "seconds": 81.26, "val_pixel_acc": 0.9612, "val_mean_acc": 0.8,
              "val_mean_iou": 0.7212, "val_fw_iou": 0.9071, "val_boundary_acc": 0.7924}
    text = epoch_summary(record)
    lines = text.splitlines()
    assert lines == [
        "epoch 3 (step 1500, 81.3 s): train loss 0.1235, pixel acc 0.9543, lr 0.000123",
        "  val: pixel acc 0.9612, mean acc 0.8, mean IoU 0.7212, fw IoU 0.9071, boundary acc 0.7924"]
    # A notebook's output area is about 100 characters wide at the default font.
    assert max(map(len, lines)) <= 95
    assert epoch_summary({k: v for k, v in record.items() if not k.startswith("val_")}) == lines[0]


def test_the_in_class_retrain_chains_the_stages_from_the_classifier(tmp_path, capsys):
    from fcn_lesson import classroom
    from fcn_lesson.cli import IN_CLASS_CHAIN, _mixed_size_training_set, retrain_chain
    from fcn_lesson.engine.checkpoint import read_meta

    # scale: 16 images a stage, one step per epoch: that the chain runs, not what it reaches
    _mixed_size_training_set.cache_clear()
    result = retrain_chain(tmp_path, scale=1e-4, eval_images=4)
    # the three stages train on the same images, rendered once
    assert _mixed_size_training_set.cache_info().misses == 1
    assert _mixed_size_training_set.cache_info().hits == 2
    stages = result["stages"]
    variants = [s["variant"] for s in stages]
    assert variants == [v for v, _, _ in IN_CLASS_CHAIN] == ["fcn32s", "fcn16s", "fcn8s"]
    inits = [read_meta(s["checkpoint"])["training"]["init"] for s in stages]
    assert inits == [str(classroom.classifier_path()), stages[0]["checkpoint"], stages[1]["checkpoint"]]
    for stage, (_, epochs, _) in zip(stages, IN_CLASS_CHAIN, strict=True):
        assert len(read_meta(stage["checkpoint"])["history"]) == epochs
        assert 0 <= stage["mean_iou_128"] <= 1
    assert result["train_seconds"] == pytest.approx(sum(s["seconds"] for s in stages), abs=0.2)
    printed = capsys.readouterr().out
    assert printed.count("python -m fcn_lesson train --variant") == 3


def test_batches_by_size_hold_one_size_and_each_image_once_per_epoch():
    from fcn_lesson.datasets.shapes import mixed_size_shapes
    from fcn_lesson.engine.loop import SizeGroupedBatches

    data = mixed_size_shapes(11, (32, 48, 64), seed=5)  # parts of 4, 4 and 3 images
    batches = SizeGroupedBatches(data, 3, torch.Generator().manual_seed(0))
    epochs = [list(batches), list(batches)]
    for epoch in epochs:
        assert len(epoch) == len(batches) == 2 + 2 + 1
        assert sorted(i for batch in epoch for i in batch) == list(range(11))
        for batch in epoch:
            assert len({tuple(data[i][0].shape) for i in batch}) == 1, batch
    assert epochs[0] != epochs[1]  # a new order every epoch, drawn from the one generator
    again = SizeGroupedBatches(data, 3, torch.Generator().manual_seed(0))
    assert list(again) == epochs[0]


def test_cli_batches_by_size_without_padding(tmp_path, capsys):
    """--batch-by-size trains on mixed sizes with no collate_fn at all: stacking a mixed batch
    would fail, so every batch held one size. It is recorded, and refused without sizes."""
    ckpt = tmp_path / "fcn32s.pt"
    args = ["train", "--variant", "fcn32s", "--width", "0.0625", "--epochs", "1", "--train-images", "12",
            "--val-images", "4", "--image-size", "48", "--batch-size", "4", "--out", str(ckpt)]
    assert main([*args, "--train-sizes", "32,64", "--batch-by-size"]) == 0
    _, meta = load_checkpoint(ckpt)
    assert meta["training"]["batch_by_size"] is True and meta["dataset"]["train_sizes"] == [32, 64]
    assert main([*args, "--batch-by-size"]) == 2
    assert "--batch-by-size batches the sizes of --train-sizes" in capsys.readouterr().err
    with pytest.raises(ValueError, match="one-size parts"):
        fit(FCN32s(**TINY), ShapesDataset(8, 32, seed=1), epochs=1, batch_by_size=True, progress=False)
