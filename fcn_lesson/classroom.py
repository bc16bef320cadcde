"""The classroom setting: small FCNs trained on ShapesDataset, shipped in `data/`.

Everything a notebook needs to get a trained model offline in a second:
`load_classroom_model("fcn8s")`. The checkpoints are made by `python -m fcn_lesson train`
with these settings (the exact commands and the metrics reached are in data/README.md).
"""

import importlib.resources
import os
from pathlib import Path

from fcn_lesson.core.models import FCN, VARIANTS
from fcn_lesson.datasets.shapes import ShapesDataset

# One eighth of VGG16's channels (8 ... 64, fc 512) with BatchNorm: ~2.1M parameters, a stage
# fine-tunes in minutes on a laptop CPU; the architecture is otherwise the paper's.
WIDTH = 0.125
BATCH_NORM = True
IMAGE_SIZE = 128
TRAIN_SEED, VAL_SEED = 0, 1  # test/notebook evaluation uses seeds never seen in training
EVAL_SEED = 2026
STAGES = ("fcn32s", "fcn16s", "fcn8s")  # stage-wise: each initialised from the one before


def data_dir() -> Path:
    """The folder with the shipped checkpoints (override with FCN_LESSON_DATA).

    They install as the package `fcn_lesson.checkpoints` (the repository's data/, mapped in
    pyproject.toml), so a wheel or a `pip install` from git finds them as an editable clone does.
    """
    if "FCN_LESSON_DATA" in os.environ:
        return Path(os.environ["FCN_LESSON_DATA"])
    return Path(importlib.resources.files("fcn_lesson.checkpoints"))


def checkpoint_path(variant: str) -> Path:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    return data_dir() / f"{variant}.pt"


def num_classes() -> int:
    return len(ShapesDataset.classes)


def make_classroom_model(variant: str, dropout: float = 0.0) -> FCN:
    """An untrained model with the classroom settings."""
    return VARIANTS[variant](num_classes=num_classes(), width=WIDTH, dropout=dropout,
                             batch_norm=BATCH_NORM)


def load_classroom_model(variant: str, device=None) -> FCN:
    """The shipped, trained classroom checkpoint for `variant`, in eval mode, offline."""
    from fcn_lesson.engine.checkpoint import load_checkpoint
    from fcn_lesson.engine.device import pick_device

    path = checkpoint_path(variant)
    if not path.is_file():
        raise FileNotFoundError(
            f"no classroom checkpoint at {path}. It ships with the repository (data/); if you "
            f"deleted it, restore it with `git checkout -- data/` or train it again with the "
            f"commands in data/README.md (python -m fcn_lesson train --variant {variant} ...).")
    model, _ = load_checkpoint(path, variant=variant, num_classes=num_classes(), width=WIDTH,
                               device=pick_device(device))
    return model


def class_shift(variant: str):
    """The per-class score offsets tuned into the shipped `variant` after its training, for mean
    IoU on validation images (`python -m fcn_lesson tune-shift`, `fcn_lesson.engine.calibrate`);
    zeros for a checkpoint that has none. `model.shift_class_scores(-class_shift(v))` undoes
    them (up to the float16 rounding of the stored bias)."""
    import torch

    from fcn_lesson.engine.checkpoint import read_meta

    record = read_meta(checkpoint_path(variant)).get("class_shift")
    return torch.tensor(record["shift"]) if record else torch.zeros(num_classes())


def classifier_path() -> Path:
    return data_dir() / "classifier.pt"


def load_classroom_classifier(device=None):
    """The shipped classroom classifier (data/classifier.pt), in eval mode, offline.

    A `torchvision.models.VGG`: VGG16 at classroom width with BatchNorm, fc6/fc7/fc8 as
    Linears over a 7 x 7 pool5, for 224-px images as `ShapesDataset` makes them (floats in
    [0, 1]). Trained on image-level labels only (the shape at the centre of the image, see
    `fcn_lesson.datasets.shapes.ShapesClassification`); `convolutionalize` works on it, and
    the classroom FCNs start from it (`FCN.init_from_classifier`).
    """
    from fcn_lesson.engine.checkpoint import load_classifier
    from fcn_lesson.engine.device import pick_device

    path = classifier_path()
    if not path.is_file():
        raise FileNotFoundError(
            f"no classroom classifier at {path}. It ships with the repository (data/); if you "
            "deleted it, restore it with `git checkout -- data/` or train it again with the "
            "command in data/README.md (python -m fcn_lesson train-classifier ...).")
    model, meta = load_classifier(path, device=pick_device(device))
    model.classes = tuple(meta["classes"])
    return model


def validation_set(num_images: int = 100, image_size: int | tuple[int, int] = IMAGE_SIZE,
                   seed: int = EVAL_SEED) -> ShapesDataset:
    """Fresh images from a seed never used in training."""
    return ShapesDataset(num_images, image_size, seed=seed)
