"""The paper's recipe on VOC (offline, on a fake VOC tree) and resuming interrupted runs."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import fcn_lesson.engine.loop as train_module
from fcn_lesson.cli import main
from fcn_lesson.core.models import FCN8s, FCN16s
from fcn_lesson.datasets.shapes import ShapesDataset, mixed_size_shapes
from fcn_lesson.datasets.voc import (
    VOC_CLASSES,
    VOC_PALETTE,
    VOCSegmentation,
    fake_voc_tree,
    pad_collate,
    train_transforms,
)
from fcn_lesson.engine.checkpoint import load_checkpoint, save_checkpoint
from fcn_lesson.engine.loop import PAPER_RECIPE, fit, mean_loss_lr

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory):
    return fake_voc_tree(tmp_path_factory.mktemp("voc"), num_images=10, size=(40, 56))  # 5 train, 5 val


# ---------------------------------------------------------------------------- learning rate


def test_summed_loss_gradient_is_pixels_times_the_mean():
    """Why 1e-10 then and 1e-4 now: the same step needs a learning rate P times larger when
    the loss is averaged over P pixels instead of summed."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 21, 3, padding=1).double()  # float64: ~2000 terms summed
    x, target = torch.randn(1, 3, 50, 40, dtype=torch.float64), torch.randint(0, 21, (1, 50, 40))
    target[0, :5] = 255
    pixels = int((target != 255).sum())
    grads = []
    for reduction in ("sum", "mean"):
        conv.zero_grad()
        F.cross_entropy(conv(x), target, ignore_index=255, reduction=reduction).backward()
        grads.append(conv.weight.grad.clone())
    torch.testing.assert_close(grads[0], pixels * grads[1], rtol=1e-10, atol=1e-12)
    assert mean_loss_lr(1e-10, pixels, summed_momentum=0.9, momentum=0.9) == pytest.approx(1e-10 * pixels)


def test_momentum_stride_is_lr_over_one_minus_momentum():
    """A steady gradient g moves SGD by lr * g / (1 - m) per step once the velocity has built up."""
    strides = []
    for lr, m in ((1e-3, 0.99), (1e-2, 0.9)):
        w = torch.zeros(1, requires_grad=True)
        opt = torch.optim.SGD([w], lr=lr, momentum=m)
        for _ in range(3000):
            opt.zero_grad()
            w.sum().backward()  # gradient 1
            opt.step()
        before = w.item()
        opt.zero_grad()
        w.sum().backward()
        opt.step()
        strides.append(before - w.item())
    assert strides[0] == pytest.approx(0.1, rel=1e-3) and strides[1] == pytest.approx(0.1, rel=1e-3)
    # hence the factor 10 between the reference's momentum 0.99 and the usual 0.9
    assert mean_loss_lr(1e-10, 500 * 375) == pytest.approx(1e-10 * 500 * 375 * 10)
    assert mean_loss_lr(1e-10, 500 * 375) == pytest.approx(1.875e-4)
    assert PAPER_RECIPE["lr"] / mean_loss_lr(1e-10, 500 * 375) == pytest.approx(0.53, abs=0.01)


@pytest.mark.parametrize("args", [(0, 100), (1e-10, -5), (1e-10, 100, 1.0), (1e-10, 100, 0.99, -0.1)])
def test_mean_loss_lr_refuses_nonsense(args):
    with pytest.raises(ValueError):
        mean_loss_lr(*args)


# ---------------------------------------------------------------------------- resume


class Interrupted(torch.utils.data.ConcatDataset):
    """Serves `data` and raises KeyboardInterrupt (as Ctrl-C or a kill would stop the run)
    when asked for item number `after` + 1. Data made of parts keeps them (batch_by_size batches
    from the parts); any other data is one part."""

    def __init__(self, data, after: int):
        super().__init__(data.datasets if isinstance(data, torch.utils.data.ConcatDataset) else [data])
        self.left = after

    def set_epoch(self, epoch):
        for part in self.datasets:
            if hasattr(part, "set_epoch"):
                part.set_epoch(epoch)

    def __getitem__(self, i):
        if self.left == 0:
            raise KeyboardInterrupt
        self.left -= 1
        return super().__getitem__(i)


def _shapes_run(tmp_path):
    data = ShapesDataset(12, 40, seed=3)
    data = torch.utils.data.TensorDataset(*data.tensors())
    kwargs = dict(epochs=3, batch_size=4, lr=3e-3, optimizer="adam", schedule="cosine", seed=7)
    return data, lambda: FCN16s(num_classes=6, width=1 / 16, batch_norm=True, dropout=0.3), kwargs


def _mixed_sizes_run(tmp_path):
    data = mixed_size_shapes(12, (32, 48), seed=3)  # 6 + 6 images: batches of 4 and 2, 4 steps/epoch
    kwargs = dict(epochs=3, batch_size=4, lr=3e-3, optimizer="adam", schedule="cosine", seed=7,
                  batch_by_size=True)
    return data, lambda: FCN16s(num_classes=6, width=1 / 16, batch_norm=True, dropout=0.3), kwargs


def _voc_run(tmp_path):
    root = fake_voc_tree(tmp_path / "voc", num_images=12, size=(40, 56))
    data = VOCSegmentation(root, transforms=train_transforms(crop_size=32), seed=5)
    kwargs = dict(epochs=3, batch_size=2, lr=0.05, **{k: v for k, v in PAPER_RECIPE.items()
                                                      if k not in ("lr", "batch_size")},
                  collate_fn=pad_collate, seed=7)
    return data, lambda: FCN8s(num_classes=21, width=1 / 16, dropout=0.3), kwargs


@pytest.mark.parametrize("run, interrupt_after, save_every, resumes_at", [
    (_shapes_run, 4 * 4 + 2, 2, (2, 1)),  # classroom recipe, mid-epoch: 3 steps/epoch, save at 4
    (_voc_run, 2 * 4 + 1, None, (2, 0)),  # paper recipe + random crops, at the end of epoch 1
    (_voc_run, 2 * 5 + 1, 1, (2, 2)),  # paper recipe + random crops, mid-epoch
    (_mixed_sizes_run, 12 + 6 + 1, 1, (2, None)),  # batched by size, mid-epoch 2
])
def test_interrupted_run_resumes_to_the_same_weights(tmp_path, run, interrupt_after, save_every, resumes_at):
    """Momentum / Adam state, schedule, step, data order, dropout and augmentation draws all
    continue exactly: the final weights equal those of a run that was never interrupted."""
    data, make, kwargs = run(tmp_path)
    torch.manual_seed(0)
    reference = make()
    expected = fit(reference, data, progress=False, **kwargs)

    state = tmp_path / "run.resume.pt"
    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        fit(make(), Interrupted(data, interrupt_after), progress=False, state_path=state,
            save_every=save_every, **kwargs)
    saved = torch.load(state, weights_only=True)["training_state"]
    epoch, batches_done = resumes_at  # batches by size vary in length: there, only mid-epoch
    assert saved["epoch"] == epoch and (batches_done is None and saved["batches_done"] > 0
                                        or saved["batches_done"] == batches_done)
    assert not list(tmp_path.glob("*.tmp"))

    torch.manual_seed(123)  # a fresh process: other seed, other init; the state replaces both
    resumed = make()
    history = fit(resumed, data, progress=False, state_path=state, save_every=save_every, **kwargs)
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    for h1, h2 in zip(expected, history, strict=True):
        h1.pop("seconds"), h2.pop("seconds")
        assert h1 == h2

    # Running it once more finds the run finished and leaves the weights alone.
    again = make()
    assert len(fit(again, data, progress=False, state_path=state, **kwargs)) == len(expected)
    assert all(torch.equal(a, b) for a, b in
               zip(resumed.state_dict().values(), again.state_dict().values(), strict=True))


def test_data_loading_processes_do_not_change_the_run(tmp_path):
    """Same order, same crops, same dropout draws with 0 or 2 loader processes."""
    data, make, kwargs = _voc_run(tmp_path)
    kwargs["epochs"] = 2
    runs = []
    for workers in (0, 2):
        torch.manual_seed(0)
        model = make()
        runs.append((model, fit(model, data, progress=False, num_workers=workers, **kwargs)))
    (a, history_a), (b, history_b) = runs
    for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y)
    assert [h["train_loss"] for h in history_a] == [h["train_loss"] for h in history_b]


def test_state_of_another_run_is_refused_and_no_resume_starts_over(tmp_path):
    data, make, kwargs = _shapes_run(tmp_path)
    kwargs["epochs"] = 1
    state = tmp_path / "s.pt"
    fit(make(), data, progress=False, state_path=state, **kwargs)
    with pytest.raises(ValueError, match=r"different run \(lr=0.003 there, 0.01 now\).*--no-resume"):
        fit(make(), data, progress=False, state_path=state, **{**kwargs, "lr": 1e-2})
    torch.manual_seed(0)
    fresh = make()
    fit(fresh, data, progress=False, **kwargs)
    torch.manual_seed(0)
    again = make()
    fit(again, data, progress=False, state_path=state, resume=False, **kwargs)
    assert all(torch.equal(a, b) for a, b in
               zip(fresh.state_dict().values(), again.state_dict().values(), strict=True))
    _, meta = load_checkpoint(state)  # the state file is a checkpoint too
    assert meta["variant"] == "fcn16s" and meta["training_state"]["step"] == 3


# ---------------------------------------------------------------------------- the command


def _voc_train(root, out, *extra):
    return ["train", "--dataset", "voc", "--data-root", str(root), "--variant", "fcn32s", "--width", "0.0625",
            "--epochs", "3", "--batch-size", "2", "--crop-size", "32", "--num-workers", "0",
            "--device", "cpu", "--out", str(out), *extra]


def test_voc_command_uses_the_recipe_and_resumes_after_a_kill(voc_root, tmp_path, monkeypatch, capsys):
    assert main(_voc_train(voc_root, tmp_path / "straight.pt")) == 0
    model, meta = load_checkpoint(tmp_path / "straight.pt")
    assert meta["classes"] == list(VOC_CLASSES) and model.num_classes == 21
    assert meta["dataset"]["name"] == "voc" and meta["dataset"]["train_images"] == 5
    recipe = {k: meta["training"][k] for k in ("optimizer", "lr", "momentum", "weight_decay", "schedule")}
    assert recipe == {"optimizer": "sgd", "lr": 1e-4, "momentum": 0.9, "weight_decay": 5e-4,
                      "schedule": "constant"}
    assert meta["training"]["val_batch_size"] == 1 and len(meta["history"]) == 3
    assert set(meta["metrics"]) >= {"pixel_acc", "mean_acc", "mean_iou", "fw_iou", "boundary_acc"}

    # The same command, killed during the second epoch's validation...
    out = tmp_path / "killed.pt"
    calls = {"n": 0}
    real_evaluate = train_module.evaluate

    def evaluate_then_die(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(train_module, "evaluate", evaluate_then_die)
    with pytest.raises(KeyboardInterrupt):
        main(_voc_train(voc_root, out))
    monkeypatch.setattr(train_module, "evaluate", real_evaluate)
    assert not out.exists() and (tmp_path / "killed.resume.pt").is_file()
    capsys.readouterr()
    # ... and run again: it continues after epoch 1 and ends where the straight run ended.
    assert main(_voc_train(voc_root, out)) == 0
    assert "resuming from" in capsys.readouterr().out
    assert not (tmp_path / "killed.resume.pt").exists()
    resumed, meta2 = load_checkpoint(out)
    for (name, a), b in zip(model.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert [h["train_loss"] for h in meta2["history"]] == [h["train_loss"] for h in meta["history"]]


def test_voc_command_stage_wise_evaluate_and_predict(voc_root, tmp_path, capsys):
    ck32, ck16 = tmp_path / "fcn32s.pt", tmp_path / "fcn16s.pt"
    assert main(_voc_train(voc_root, ck32, "--epochs", "1")) == 0
    args = _voc_train(voc_root, ck16, "--epochs", "1", "--init", str(ck32))
    args[args.index("fcn32s")] = "fcn16s"
    assert main(args) == 0
    _, meta = load_checkpoint(ck16)
    assert meta["training"]["init"] == str(ck32)
    assert meta["training"]["lr"] == pytest.approx(1e-6)  # stage-wise: 100x below fcn32s' 1e-4
    capsys.readouterr()
    assert main(["evaluate", "--dataset", "voc", "--data-root", str(voc_root), "--checkpoint", str(ck16),
                 "--images", "3"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["images"] == 3 and scores["dataset"] == "voc" and list(scores["iou"]) == list(VOC_CLASSES)

    image, _ = VOCSegmentation(voc_root, transforms=lambda img, m: (img, m)).load(0)
    png = tmp_path / "photo.png"
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(png)
    out = tmp_path / "mask.png"
    assert main(["predict", str(png), "--checkpoint", str(ck16), "--out", str(out)]) == 0
    mask = np.asarray(Image.open(out).convert("RGB"))
    assert mask.shape == (40, 56, 3)
    assert {tuple(c) for c in mask.reshape(-1, 3)} <= {tuple(c) for c in VOC_PALETTE[:21].tolist()}


def test_voc_command_without_data_explains_and_fails(tmp_path):
    """A real process, as a user runs it: the message, no traceback, a non-zero exit."""
    args = _voc_train(tmp_path / "nowhere", tmp_path / "x.pt", "--init", "imagenet")
    args[args.index("--width") + 1] = "1"
    run = subprocess.run([sys.executable, "-m", "fcn_lesson", *args], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 2
    assert "Traceback" not in run.stderr
    for needle in ("PASCAL VOC 2012", "not found", "Expected layout", "JPEGImages", "--download",
                   "VOCtrainval_11-May-2012.tar", str(tmp_path / "nowhere")):
        assert needle in run.stderr, needle
    assert not (tmp_path / "x.pt").exists()


def test_imagenet_init_needs_full_width_and_says_what_to_download(voc_root, tmp_path, monkeypatch, capsys):
    assert main(_voc_train(voc_root, tmp_path / "x.pt", "--init", "imagenet")) == 2
    assert "--init imagenet needs the full VGG16" in capsys.readouterr().err

    from urllib.error import URLError

    import torch.hub

    def offline(*args, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    args = _voc_train(voc_root, tmp_path / "x.pt", "--init", "imagenet")
    args[args.index("--width") + 1] = "1"
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "vgg16-397923af.pth" in err and str(tmp_path / "torch" / "hub" / "checkpoints") in err
    assert "Traceback" not in err and not (tmp_path / "x.pt").exists()


def test_evaluate_refuses_a_model_for_other_classes(voc_root, tmp_path, capsys):
    shapes_model = save_checkpoint(tmp_path / "shapes.pt", FCN8s(num_classes=6, width=1 / 16))
    assert main(["evaluate", "--dataset", "voc", "--data-root", str(voc_root),
                 "--checkpoint", str(shapes_model)]) == 2
    assert "predicts 6 classes, the voc data has 21" in capsys.readouterr().err
