"""One training loop for every notebook and the command line, and checkpoints.

`fit` trains any FCN on any dataset of (image, mask) pairs with progress bars, validates
with the paper's four metrics (plus boundary accuracy) every epoch and returns a history
for plotting. `train_or_load` loads a checkpoint if it exists and otherwise trains and
writes it. Checkpoints carry their metadata, are written atomically and are read with
`torch.load(weights_only=True)`.
"""

import math
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset
from tqdm.auto import tqdm

from fcn_lesson.metrics import IGNORE_INDEX, boundary_accuracy, confusion_matrix, segmentation_scores
from fcn_lesson.models import FCN, VARIANTS, build_model

CHECKPOINT_FORMAT = 1


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used (corrupt, or for another model)."""


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """The given device, else CUDA when present, else CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _loader(data: Dataset, batch_size: int, shuffle: bool, seed: int, collate_fn=None) -> DataLoader:
    if hasattr(data, "tensors") and callable(data.tensors):  # ShapesDataset: generate once
        data = TensorDataset(*data.tensors())
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=generator,
                      collate_fn=collate_fn)


def _autocast(device: torch.device):
    # bf16 autocast on GPU (no loss scaling needed); plain fp32 on CPU.
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


@torch.no_grad()
def predict(model: FCN, images: torch.Tensor, device: str | torch.device | None = None,
            batch_size: int = 16) -> torch.Tensor:
    """Argmax class maps (N, H, W) for a batch of images (N, 3, H, W), on the model's device."""
    device = next(model.parameters()).device if device is None else torch.device(device)
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        with _autocast(device):
            out.append(model(images[start:start + batch_size].to(device)).argmax(1).cpu())
    model.train(was_training)
    return torch.cat(out)


@torch.no_grad()
def evaluate(model: FCN, data: Dataset, batch_size: int = 16,
             device: str | torch.device | None = None, boundary_width: int = 3,
             progress: bool = False, collate_fn=None) -> dict:
    """The four metrics, per-class IoU and boundary accuracy over a whole dataset (the
    confusion matrix is accumulated over every pixel, not averaged per image)."""
    device = pick_device(device) if device is not None else next(model.parameters()).device
    model.to(device)
    cm = torch.zeros(model.num_classes, model.num_classes, dtype=torch.long)
    band_hits = band_total = 0
    batches = _loader(data, batch_size, shuffle=False, seed=0, collate_fn=collate_fn)
    for images, masks in tqdm(batches, desc="evaluate", leave=False, disable=not progress):
        pred = predict(model, images, device)
        cm += confusion_matrix(pred, masks, model.num_classes)
        acc = boundary_accuracy(pred, masks, boundary_width)
        if not math.isnan(acc):
            band = _band_size(masks, boundary_width)
            band_hits += acc * band
            band_total += band
    scores = segmentation_scores(cm)
    scores["boundary_acc"] = band_hits / band_total if band_total else math.nan
    scores["confusion"] = cm
    return scores


def _band_size(masks: torch.Tensor, width: int) -> int:
    from fcn_lesson.metrics import boundary_distance

    band = boundary_distance(masks, width + 1).reshape(masks.shape) <= width
    return int((band & (masks != IGNORE_INDEX)).sum())


def fit(model: FCN, train_data: Dataset, val_data: Dataset | None = None, *, epochs: int = 10,
        batch_size: int = 16, lr: float = 1e-3, optimizer: str = "adam", momentum: float = 0.9,
        weight_decay: float = 0.0, schedule: str = "cosine", seed: int = 0,
        device: str | torch.device | None = None, progress: bool = True,
        collate_fn=None, max_steps: int | None = None) -> list[dict]:
    """Train `model` in place; returns the history, one dict per epoch.

    optimizer "adam" (classroom: fast from scratch) or "sgd" (the paper: momentum 0.9,
    weight decay 5e-4). schedule "cosine" decays the learning rate to zero over the run,
    "constant" keeps it (the paper). The loss is the per-pixel mean cross-entropy,
    ignoring label 255. `max_steps` stops early (for quick demonstrations and tests).
    """
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs}, {batch_size}")
    device = pick_device(device)
    torch.manual_seed(seed)
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    if optimizer == "adam":
        opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    elif optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    else:
        raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
    loader = _loader(train_data, batch_size, shuffle=True, seed=seed, collate_fn=collate_fn)
    total_steps = epochs * len(loader) if max_steps is None else min(max_steps, epochs * len(loader))
    if schedule == "cosine":
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps)))
    elif schedule == "constant":
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    else:
        raise ValueError(f"schedule must be 'cosine' or 'constant', got {schedule!r}")

    history, step = [], 0
    for epoch in range(1, epochs + 1):
        start, loss_sum, seen, correct, counted = time.perf_counter(), 0.0, 0, 0, 0
        bar = tqdm(loader, desc=f"{model.variant} epoch {epoch}/{epochs}", disable=not progress,
                   leave=epoch == epochs)
        for images, masks in bar:
            images, masks = images.to(device), masks.to(device)
            with _autocast(device):
                logits = model(images)
            loss = F.cross_entropy(logits.float(), masks, ignore_index=IGNORE_INDEX)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            loss_sum += loss.item() * len(images)
            seen += len(images)
            valid = masks != IGNORE_INDEX
            correct += int((logits.argmax(1)[valid] == masks[valid]).sum())
            counted += int(valid.sum())
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", pixel_acc=f"{correct / max(counted, 1):.3f}")
            if step >= total_steps:
                break
        record = {"epoch": epoch, "step": step, "train_loss": loss_sum / seen,
                  "train_pixel_acc": correct / max(counted, 1),
                  "lr": opt.param_groups[0]["lr"], "seconds": time.perf_counter() - start}
        if val_data is not None:
            scores = evaluate(model, val_data, batch_size, device, collate_fn=collate_fn)
            record.update({f"val_{k}": scores[k] for k in
                           ("pixel_acc", "mean_acc", "mean_iou", "fw_iou", "boundary_acc")})
            model.train()
        history.append(record)
        if progress:
            tqdm.write(", ".join(f"{k} {v:.4g}" for k, v in record.items()))
        if step >= total_steps:
            break
    model.eval()
    return history


# --- checkpoints -----------------------------------------------------------------------

def _versions() -> dict:
    import torchvision

    from fcn_lesson import __version__

    # str(): torch.__version__ is a TorchVersion, which weights_only loading refuses.
    return {"fcn_lesson": __version__, "torch": str(torch.__version__),
            "torchvision": str(torchvision.__version__), "python": platform.python_version()}


def save_checkpoint(path: str | os.PathLike, model: FCN, *, classes=None, dataset: dict | None = None,
                    metrics: dict | None = None, history: list | None = None,
                    training: dict | None = None, half: bool = False, **extra) -> Path:
    """Write model weights + metadata atomically (temp file in the same folder, then rename),
    so an interrupted write never leaves a half-written checkpoint behind.

    half=True stores float tensors as float16 (half the size; they load back as float32).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: (v.half() if half and v.is_floating_point() else v).detach().cpu().clone()
             for k, v in model.state_dict().items()}
    payload = {
        "format": CHECKPOINT_FORMAT,
        "variant": model.variant, "num_classes": model.num_classes, "width": float(model.width),
        "batch_norm": bool(model.batch_norm),
        "classes": list(classes) if classes is not None else None,
        "dataset": dataset or {}, "metrics": _plain(metrics or {}), "history": _plain(history or []),
        "training": training or {}, "versions": _versions(), "state_dict": state, **extra,
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _plain(obj):
    """Metrics as plain Python numbers/lists, which `weights_only=True` can load."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    return obj


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The checkpoint's contents, via torch.load(weights_only=True); clear errors otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, bad pickle, foreign object: all unusable
        lines = str(err).splitlines()
        reason = next((ln.strip() for ln in lines if "Unsupported" in ln), lines[0] if lines else "")
        raise CheckpointError(
            f"{path} is not a readable checkpoint ({type(err).__name__}: {reason[:300]}); "
            "it may be truncated or corrupt. Delete it and train again "
            "(python -m fcn_lesson train ...).") from None
    if not isinstance(payload, dict) or "state_dict" not in payload or "variant" not in payload:
        raise CheckpointError(f"{path} is not an fcn_lesson checkpoint (no variant/state_dict)")
    return payload


def load_checkpoint(path: str | os.PathLike, variant: str | None = None,
                    num_classes: int | None = None, width: float | None = None,
                    device: str | torch.device | None = "cpu") -> tuple[FCN, dict]:
    """(model in eval mode, metadata). With variant/num_classes/width given, a checkpoint
    for another model is refused with a message saying what it holds."""
    payload = read_checkpoint(path)
    wanted = {"variant": variant, "num_classes": num_classes, "width": width}
    for key, value in wanted.items():
        if value is not None and payload[key] != value:
            raise CheckpointError(
                f"{path} holds a {payload['variant']} with num_classes={payload['num_classes']}, "
                f"width={payload['width']}, but {key}={value!r} was asked for; use a checkpoint "
                f"trained for that setting, or another path to train one")
    if payload["variant"] not in VARIANTS:
        raise CheckpointError(f"{path} is for unknown variant {payload['variant']!r}")
    model = build_model(payload["variant"], num_classes=payload["num_classes"],
                        width=payload["width"], batch_norm=payload.get("batch_norm", False))
    state = {k: v.float() if v.is_floating_point() else v for k, v in payload["state_dict"].items()}
    try:
        model.load_state_dict(state)  # strict: every tensor, right shapes, or nothing
    except RuntimeError as err:
        raise CheckpointError(f"{path} does not match a {payload['variant']} of its stated "
                              f"size: {str(err)[:300]}") from None
    meta = {k: v for k, v in payload.items() if k != "state_dict"}
    return model.to(pick_device(device)).eval(), meta


def train_or_load(path: str | os.PathLike, make_model, train_data: Dataset,
                  val_data: Dataset | None = None, *, retrain: bool = False,
                  checkpoint_meta: dict | None = None, **fit_kwargs) -> tuple[FCN, dict]:
    """Load the checkpoint at `path` if it exists (and retrain is False); otherwise build a
    model with `make_model()`, `fit` it, save it there and return it with its metadata."""
    path = Path(path)
    if path.exists() and not retrain:
        model = make_model()
        loaded, meta = load_checkpoint(path, model.variant, model.num_classes, model.width,
                                       device=fit_kwargs.get("device"))
        return loaded, meta
    model = make_model()
    started = time.perf_counter()
    history = fit(model, train_data, val_data, **fit_kwargs)
    seconds = time.perf_counter() - started
    metrics = {k.removeprefix("val_"): v for k, v in history[-1].items() if k.startswith("val_")}
    meta = dict(checkpoint_meta or {})
    meta.setdefault("training", {})
    meta["training"] = {**meta["training"], "seconds": round(seconds, 1),
                        **{k: v for k, v in fit_kwargs.items() if k not in ("device", "progress")}}
    save_checkpoint(path, model, metrics=metrics, history=history, **meta)
    return model.eval(), read_meta(path)


def read_meta(path: str | os.PathLike) -> dict:
    return {k: v for k, v in read_checkpoint(path).items() if k != "state_dict"}
