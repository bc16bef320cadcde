"""Training and scoring the classroom classifier on image-level labels (no masks).

`fit_classifier` trains any image classifier (the classroom VGG16 of
`fcn_lesson.core.classifier`) on (image, label) pairs with Adam and cosine decay, tqdm bars,
and random flips and quarter turns; `classifier_accuracy` scores it. The command line is
`python -m fcn_lesson train-classifier` (recipe and accuracy in data/README.md).
"""

import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset
from tqdm.auto import tqdm

from fcn_lesson.engine.device import pick_device


def render_all(data: Dataset, progress: bool = False, desc: str = "render") -> TensorDataset:
    """The whole dataset once, images stored as uint8 (150 KB per 224-px image), labels int64:
    rendered once, re-used every epoch."""
    n = len(data)
    first, _ = data[0] if n else (torch.zeros(3, 1, 1), 0)
    images = torch.empty((n, *first.shape), dtype=torch.uint8)
    labels = torch.empty(n, dtype=torch.long)
    for i in tqdm(range(n), desc=desc, disable=not progress, leave=False):
        x, y = data[i]
        images[i] = (x * 255).round_().to(torch.uint8)
        labels[i] = int(y)
    return TensorDataset(images, labels)


def _as_float(images: torch.Tensor) -> torch.Tensor:
    return images.float().div_(255) if images.dtype == torch.uint8 else images.float()


@torch.no_grad()
def classifier_accuracy(model: nn.Module, data: Dataset, batch_size: int = 64,
                        device: str | torch.device | None = None, progress: bool = False) -> float:
    """Top-1 accuracy of `model` on (image, label) pairs."""
    device = pick_device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.to(device).eval()
    correct = total = 0
    loader = DataLoader(data, batch_size=batch_size, shuffle=False)
    for images, labels in tqdm(loader, desc="accuracy", disable=not progress, leave=False):
        pred = model(_as_float(images).to(device)).argmax(1).cpu()
        correct += int((pred == labels).sum())
        total += len(labels)
    model.train(was_training)
    return correct / max(total, 1)


def fit_classifier(model: nn.Module, train_data: Dataset, val_data: Dataset | None = None, *,
                   epochs: int = 3, batch_size: int = 32, lr: float = 1e-3,
                   weight_decay: float = 0.0, seed: int = 0, flip: bool = True,
                   device: str | torch.device | None = None, progress: bool = True,
                   max_steps: int | None = None) -> list[dict]:
    """Train `model` in place with cross-entropy on image-level labels; returns the history.

    Adam with cosine decay to zero over the run; a random horizontal flip per image and a random
    quarter turn per batch (every class is symmetric under both). Validation accuracy after
    every epoch if `val_data` is given.
    """
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs}, {batch_size}")
    device = pick_device(device)
    torch.manual_seed(seed)
    model.to(device).train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr,
                           weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(train_data, batch_size=batch_size, shuffle=True, generator=generator)
    total = epochs * len(loader) if max_steps is None else min(max_steps, epochs * len(loader))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(total, 1))
    history, step = [], 0
    for epoch in range(1, epochs + 1):
        start, loss_sum, correct, seen = time.perf_counter(), 0.0, 0, 0
        bar = tqdm(total=len(loader), desc=f"classifier epoch {epoch}/{epochs}",
                   disable=not progress, leave=epoch == epochs)
        for images, labels in loader:
            images = _as_float(images)
            if flip:  # the dihedral group: every class is symmetric under flips and quarter turns
                flipped = torch.rand(len(images), generator=generator) < 0.5
                images[flipped] = images[flipped].flip(-1)
                if images.shape[-1] == images.shape[-2]:
                    images = images.rot90(int(torch.randint(4, (), generator=generator)), (-2, -1))
                    images = images.contiguous()
            images, labels = images.to(device), labels.to(device)
            logits = model(images)
            loss = F.cross_entropy(logits, labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            loss_sum += loss.item() * len(labels)
            correct += int((logits.argmax(1) == labels).sum())
            seen += len(labels)
            bar.update()
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
            if step >= total:
                break
        bar.close()
        record = {"epoch": epoch, "step": step, "train_loss": loss_sum / max(seen, 1),
                  "train_acc": correct / max(seen, 1), "seconds": time.perf_counter() - start}
        if val_data is not None:
            record["val_acc"] = classifier_accuracy(model, val_data, device=device)
            model.train()
        history.append(record)
        if progress:
            tqdm.write(", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                 for k, v in record.items()))
        if step >= total:
            break
    model.eval()
    return history


def confusion(model: nn.Module, data: Dataset, num_classes: int, batch_size: int = 64) -> np.ndarray:
    """(num_classes, num_classes) counts, rows = true label."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    device = next(model.parameters()).device
    model.eval()
    with torch.no_grad():
        for images, labels in DataLoader(data, batch_size=batch_size):
            pred = model(_as_float(images).to(device)).argmax(1).cpu()
            np.add.at(cm, (labels.numpy(), pred.numpy()), 1)
    return cm


__all__ = ["classifier_accuracy", "confusion", "fit_classifier", "render_all"]
