"""Checkpoints: model weights with their metadata, written atomically, read safely.

Every file carries its variant, size, classes, metrics and training history, is written to a
temporary file and renamed (an interrupted write never leaves half a checkpoint), and is read
with `torch.load(weights_only=True)`, which loads tensors and plain data but runs no code.
"""

import os
import platform
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

from fcn_lesson.core.models import FCN, VARIANTS, build_model
from fcn_lesson.engine.device import pick_device

CHECKPOINT_FORMAT = 1


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used (corrupt, or for another model)."""


def package_version() -> str:
    try:
        return version("fcn-lesson")
    except PackageNotFoundError:  # a source tree that was never installed
        return "0+unknown"


def _versions() -> dict:
    import torchvision

    # str(): torch.__version__ is a TorchVersion, which weights_only loading refuses.
    return {"fcn_lesson": package_version(), "torch": str(torch.__version__),
            "torchvision": str(torchvision.__version__), "python": platform.python_version()}


def save_checkpoint(path: str | os.PathLike, model: FCN, *, classes=None, dataset: dict | None = None,
                    metrics: dict | None = None, history: list | None = None,
                    training: dict | None = None, half: bool = False, **extra) -> Path:
    """Write model weights + metadata atomically (temp file in the same folder, then rename),
    so an interrupted write never leaves a half-written checkpoint behind.

    half=True stores float tensors as float16 (half the size; they load back as float32);
    `load_checkpoint`'s metadata says so ("half").
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: (v.half() if half and v.is_floating_point() else v).detach().cpu().clone()
             for k, v in model.state_dict().items()}
    payload = {
        "format": CHECKPOINT_FORMAT,
        "variant": model.variant, "num_classes": model.num_classes, "width": float(model.width),
        "batch_norm": bool(model.batch_norm), "dropout": float(model.backbone.head.drop6.p),
        "learn_final_upsampling": model.learn_final_upsampling,
        "classes": list(classes) if classes is not None else None,
        "dataset": dataset or {}, "metrics": _plain(metrics or {}), "history": _plain(history or []),
        "training": training or {}, "versions": _versions(), "state_dict": state, "half": half,
        **extra,
    }
    return _atomic_save(payload, path)


def _atomic_save(payload: dict, path: Path) -> Path:
    """torch.save to a temporary file in the same folder, fsync, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda f: torch.save(payload, f))


def atomic_write(path: Path, write) -> Path:
    """`write(binary file)` to a temporary file in `path`'s folder, fsync, then rename over `path`:
    an interrupted or failed write leaves no half-written file (and an old `path` intact)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp makes the file private (0600); give it the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
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


def _dropout(payload: dict) -> float:
    """The dropout the checkpoint's net was trained with, so that training it further goes on as it
    was trained (at inference dropout does nothing). Files written before it was recorded were
    trained by `python -m fcn_lesson train` with its dataset's default: none on shapes (the
    classroom nets), 0.5 on VOC (the paper's)."""
    if "dropout" in payload:
        return payload["dropout"]
    return 0.0 if payload.get("dataset", {}).get("name") == "shapes" else 0.5


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
    model = build_model(payload["variant"], num_classes=payload["num_classes"], width=payload["width"],
                        batch_norm=payload.get("batch_norm", False), dropout=_dropout(payload),
                        # recorded since 2026-12-06; every net before learned none
                        learn_final_upsampling=payload.get("learn_final_upsampling", False))
    state = {k: v.float() if v.is_floating_point() else v for k, v in payload["state_dict"].items()}
    try:
        model.load_state_dict(state)  # strict: every tensor, right shapes, or nothing
    except RuntimeError as err:
        raise CheckpointError(f"{path} does not match a {payload['variant']} of its stated "
                              f"size: {str(err)[:300]}") from None
    meta = {k: v for k, v in payload.items() if k != "state_dict"}
    # Files written before "half" was recorded: stored as float16 if their floats are.
    meta.setdefault("half", any(v.dtype == torch.float16 for v in payload["state_dict"].values()))
    return model.to(pick_device(device)).eval(), meta


def read_meta(path: str | os.PathLike) -> dict:
    return {k: v for k, v in read_checkpoint(path).items() if k != "state_dict"}


# --- the classroom classifier ------------------------------------------------------------

CLASSIFIER_VARIANT = "vgg16_classifier"


def training_seconds(meta: dict) -> float:
    """Seconds of training that made a checkpoint (its `read_meta`): its own run's, plus those of
    the run it was trained further from (`training["continued_from"]`, recorded by `train --init`
    with a net of the same variant) and of a learned final upsampling (`learn-upsampling`)."""
    total = meta.get("training", {}).get("seconds", float("nan"))
    if "final_upsampling" in meta:
        total += meta["final_upsampling"]["seconds"]
    if "continued_from" in meta.get("training", {}):
        total += training_seconds(meta["training"]["continued_from"])
    return total


def save_classifier(path: str | os.PathLike, model, *, classes=None, dataset: dict | None = None,
                    metrics: dict | None = None, history: list | None = None,
                    training: dict | None = None, half: bool = False) -> Path:
    """Write a classroom classifier (`fcn_lesson.core.classifier.classroom_vgg16`) atomically,
    as `save_checkpoint` writes an FCN; half=True stores float tensors as float16."""
    state = {k: (v.half() if half and v.is_floating_point() else v).detach().cpu().clone()
             for k, v in model.state_dict().items()}
    dropout = next((m.p for m in model.classifier if isinstance(m, torch.nn.Dropout)), 0.0)
    payload = {
        "format": CHECKPOINT_FORMAT, "variant": CLASSIFIER_VARIANT,
        "num_classes": int(model.num_classes), "width": float(model.width),
        "batch_norm": bool(model.batch_norm), "dropout": float(dropout),
        "classes": list(classes) if classes is not None else None, "dataset": dataset or {},
        "metrics": _plain(metrics or {}), "history": _plain(history or []),
        "training": training or {}, "versions": _versions(), "state_dict": state, "half": half,
    }
    return _atomic_save(payload, Path(path))


def is_classifier_checkpoint(path: str | os.PathLike) -> bool:
    return read_checkpoint(path)["variant"] == CLASSIFIER_VARIANT


def load_classifier(path: str | os.PathLike, device: str | torch.device | None = "cpu"):
    """(classifier in eval mode, metadata) from a `save_classifier` file (weights_only load)."""
    from fcn_lesson.core.classifier import classroom_vgg16

    payload = read_checkpoint(path)
    if payload["variant"] != CLASSIFIER_VARIANT:
        raise CheckpointError(f"{path} holds a {payload['variant']}, not a classroom classifier")
    model = classroom_vgg16(payload["num_classes"], width=payload["width"],
                            batch_norm=payload["batch_norm"], dropout=payload.get("dropout", 0.5))
    state = {k: v.float() if v.is_floating_point() else v for k, v in payload["state_dict"].items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(f"{path} does not match a classroom classifier of its stated "
                              f"size: {str(err)[:300]}") from None
    meta = {k: v for k, v in payload.items() if k != "state_dict"}
    return model.to(pick_device(device)).eval(), meta
