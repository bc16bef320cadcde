"""Why start from a classifier: scratch vs transplant + fine-tune vs transplant with frozen
features, at equal training steps, over several numbers of labelled masks (FCN-32s).

The paper's Table (Sec. 4.1 / 4.3): FCN-32s fine-tuned from VGG16 reaches 59.4 mean IU, the
same net with frozen features ("FCN-32s-fixed"), only the score layer trained, 45.4. Here the
classifier is the classroom one (`load_classroom_classifier`), the masks `ShapesDataset`'s.

`python -m fcn_lesson transfer-experiment --out data/transfer_experiment.json` writes the table.
"""

import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from fcn_lesson.core.models import FCN32s
from fcn_lesson.datasets.shapes import ShapesDataset
from fcn_lesson.engine.loop import adam_cosine_steps, evaluate

METHODS = ("scratch", "finetune", "frozen")


def make_fcn32s(method: str, classifier, width: float, batch_norm: bool, num_classes: int) -> FCN32s:
    """An FCN-32s for one of METHODS: random, or the classifier's weights transplanted
    (`init_from_classifier`); "frozen" also stops the backbone learning (and its BatchNorm
    statistics moving): only score_fr trains."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    model = FCN32s(num_classes=num_classes, width=width, dropout=0.0, batch_norm=batch_norm)
    if method != "scratch":
        model.init_from_classifier(classifier)
    if method == "frozen":
        for p in model.backbone.parameters():
            p.requires_grad_(False)
    return model


def train_steps(model: FCN32s, images: torch.Tensor, masks: torch.Tensor, steps: int,
                batch_size: int = 16, lr: float = 1e-3, seed: int = 0, progress: bool = False,
                desc: str = "train") -> list[float]:
    """`steps` Adam steps (cosine decay) on batches drawn at random from (images, masks);
    a frozen backbone (no trainable parameters) is kept in eval mode. Returns the losses."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    batches = [torch.randint(len(images), (min(batch_size, len(images)),), generator=generator)
               for _ in range(steps)]
    frozen = not any(p.requires_grad for p in model.backbone.parameters())
    model.train()
    if frozen:
        model.backbone.eval()
    losses = adam_cosine_steps([p for p in model.parameters() if p.requires_grad], batches,
                               lambda idx: F.cross_entropy(model(images[idx]), masks[idx]), lr,
                               progress=progress, desc=desc)
    model.eval()
    return losses


def run(classifier, mask_counts=(25, 100, 400, 1600), steps: int = 300, batch_size: int = 16,
        lr: float = 1e-3, image_size: int = 128, eval_images: int = 100, eval_seed: int = 3,
        train_seed: int = 0, width: float = 0.125, batch_norm: bool = True,
        methods=METHODS, progress: bool = True) -> list[dict]:
    """One row per (method, number of labelled masks): mean IoU on fresh images."""
    fresh = ShapesDataset(eval_images, image_size, seed=eval_seed)
    images, masks = ShapesDataset(max(mask_counts), image_size, seed=train_seed).tensors()
    rows = []
    for n in mask_counts:
        for method in methods:
            model = make_fcn32s(method, classifier, width, batch_norm, len(ShapesDataset.classes))
            start = time.perf_counter()
            losses = train_steps(model, images[:n], masks[:n], steps, batch_size, lr, seed=train_seed,
                                 progress=progress, desc=f"{method} {n} masks")
            scores = evaluate(model, fresh)
            rows.append({"method": method, "masks": n, "steps": steps,
                         "mean_iou": round(scores["mean_iou"], 4),
                         "pixel_acc": round(scores["pixel_acc"], 4),
                         "final_loss": round(sum(losses[-20:]) / len(losses[-20:]), 4),
                         "seconds": round(time.perf_counter() - start, 1)})
            if progress:
                tqdm.write(json.dumps(rows[-1]))
    return rows


def table(rows: list[dict]) -> str:
    """Mean IoU, masks down, methods across (markdown)."""
    counts = sorted({r["masks"] for r in rows})
    methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
    value = {(r["method"], r["masks"]): r["mean_iou"] for r in rows}
    lines = ["| labelled masks | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    for n in counts:
        cells = [f"{value.get((m, n), math.nan):.3f}" for m in methods]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def save(path, rows: list[dict], settings: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"settings": settings, "rows": rows}, indent=1) + "\n")
    return path
