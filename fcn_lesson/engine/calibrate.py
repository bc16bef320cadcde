"""Two steps after training, each on the trained net frozen: tune each class's score offset for
mean IoU, and learn the final upsampling.

Cross-entropy counts pixels; mean IoU counts classes. A class with few pixels (the classroom's
thin bars and ring outlines) weighs little in the training loss but a sixth of the mean IoU, so
a net trained on cross-entropy calls too few pixels by that class's name. Adding a constant to
one class's score everywhere moves that trade-off without touching what the net has learned.
`tune_class_shift` picks one constant per class that maximises mean IoU on held-out images (the
validation seed, never the evaluation one), and `FCN.shift_class_scores` folds it into the bias
of the last score layer, so the shipped net makes the shifted scores itself.

This is post-hoc logit adjustment (Menon et al., "Long-tail learning via logit adjustment",
ICLR 2021, adjust scores by class after training); here the offsets are searched to maximise
the metric directly, a small coordinate search over num_classes - 1 numbers (class 0 is the
reference: only differences between scores change the argmax).

The paper upsamples the last score map to the image with a fixed bilinear kernel (Sec. 4.3, as its
reference code does), while noting that such a filter "need not be fixed (e.g., to bilinear
upsampling), but can be learned" (Sec. 3.3). `learn_final_upsampling` learns it for a trained net:
with everything before it frozen, the last score map of each image is the same whatever the
upsampling does, so it is computed once, and only the (C, C, 2s, 2s) kernel trains, in seconds on
a CPU. Then tune the offsets again: the old ones were chosen for the old upsampling.
"""

import copy

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from fcn_lesson.core.models import FCN, build_model
from fcn_lesson.datasets.common import IGNORE_INDEX
from fcn_lesson.engine.loop import adam_cosine_steps, data_loader
from fcn_lesson.engine.metrics import confusion_matrix, segmentation_scores

# Coordinate steps, largest first: a score offset of a few units moves whole objects, the
# smaller steps refine it.
STEPS = (2.0, 1.0, 0.5, 0.25, 0.125)


@torch.no_grad()
def _scores_and_response(model: FCN, data: Dataset, batch_size: int):
    """The net's output scores for every image, the masks, and what a unit offset in each
    class's bias of the last score layer does to each output score: (C offset, C out, H, W).
    Through the fixed bilinear upsampling it is diagonal: 1 inside the image, less within half a
    stride of the border, where its zero padding weighs it less. A learned final upsampling may
    also pass some of it on to other classes."""
    model.eval()
    device = next(model.parameters()).device
    logits, masks = [], []
    for images, target in data_loader(data, batch_size, shuffle=False, seed=0):
        logits.append(model(images.to(device)).float().cpu())
        masks.append(target)
    logits, masks = torch.cat(logits), torch.cat(masks)
    first = data[0][0][None].to(device)
    plain = model(first)[0]
    unit = torch.eye(model.num_classes)
    response = torch.stack([copy.deepcopy(model).shift_class_scores(unit[c])(first)[0] - plain
                            for c in range(model.num_classes)]).float().cpu()
    return logits, masks, response


def best_class_shift(logits: torch.Tensor, masks: torch.Tensor, response: torch.Tensor | float = 1.0,
                     steps: tuple[float, ...] = STEPS) -> tuple[torch.Tensor, float, float]:
    """(shift, mean IoU before, mean IoU after): the per-class offsets that maximise the mean IoU
    of the shifted scores' argmax against `masks`.

    logits (N, C, H, W). `response`: 1 (the scores are shifted by exactly the offsets), or
    (C, C, H, W), how much of a unit offset of class c reaches each class's score at each pixel
    (`response[c]`), so that the shifted scores are logits + sum over c of shift[c] * response[c].
    Coordinate search: for each step size (largest first), try each class's offset up and down
    by that step and keep any change that raises mean IoU, until none does. Deterministic. A
    local search: it stops where no single step helps, which need not be the best offsets.
    """
    if logits.dim() != 4 or masks.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(f"expected logits (N, C, H, W) and masks (N, H, W) of the same images, got "
                         f"{tuple(logits.shape)} and {tuple(masks.shape)}")
    classes = logits.shape[1]
    if isinstance(response, torch.Tensor) and response.shape != (classes, *logits.shape[1:]):
        raise ValueError(f"response must be (C, C, H, W) = {(classes, *logits.shape[1:])}, got "
                         f"{tuple(response.shape)}")
    shift = torch.zeros(classes)
    # Classes last: argmax over the last dimension is ~8x faster on a CPU than over dim 1, and
    # the search takes ~100 of them.
    logits = logits.permute(0, 2, 3, 1).contiguous()
    if isinstance(response, torch.Tensor):
        response = response.permute(0, 2, 3, 1)  # (C offset, H, W, C out)

    def score(s: torch.Tensor) -> float:
        moved = torch.tensordot(s, response, dims=1) if isinstance(response, torch.Tensor) else s * response
        pred = (logits + moved).argmax(-1)
        return segmentation_scores(confusion_matrix(pred, masks, classes))["mean_iou"]

    before = best = score(shift)
    for step in steps:
        improved = True
        while improved:
            improved = False
            for c in range(1, classes):
                for sign in (1, -1):
                    trial = shift.clone()
                    trial[c] += sign * step
                    value = score(trial)
                    if value > best:
                        best, shift, improved = value, trial, True
    return shift, before, best


def tune_class_shift(model: FCN, data: Dataset, batch_size: int = 16,
                     steps: tuple[float, ...] = STEPS) -> dict:
    """The per-class score offsets that maximise `model`'s mean IoU on `data` (images of one
    size), searched by `best_class_shift` on the net's scores computed once.

    Returns {"shift": (C,) tensor, "mean_iou_before", "mean_iou_after"}; apply the
    shift with `model.shift_class_scores(result["shift"])`. `model` is not changed.
    """
    _check_one_size(data, "tune_class_shift", "ShapesDataset(200, 128, seed=...)")
    logits, masks, response = _scores_and_response(model, data, batch_size)
    shift, before, after = best_class_shift(logits, masks, response, steps)
    return {"shift": shift, "mean_iou_before": before, "mean_iou_after": after}


def _check_one_size(data: Dataset, what: str, example: str) -> None:
    if len(data) == 0:
        raise ValueError(f"{what} got no images: pass a dataset with at least one image")
    sizes = {tuple(data[k][0].shape[-2:]) for k in range(min(len(data), 8))}
    if len(sizes) > 1:
        raise ValueError(f"{what} needs images of one size, got {sorted(sizes)}; use e.g. {example}")


def learn_final_upsampling(model: FCN, data: Dataset, steps: int = 1500, batch_size: int = 16,
                           lr: float = 3e-3, seed: int = 0, progress: bool = False) -> FCN:
    """A copy of `model` whose final upsampling is learned: a full (classes x classes) kernel,
    starting from the model's own (bilinear, for a net trained the paper's way), trained on `data`
    (images of one size) with everything else frozen: Adam with cosine decay from `lr`, `steps`
    batches of `batch_size` drawn at random (`seed`), per-pixel cross-entropy. The last score map
    of every image is computed once, so a step costs one transposed convolution. Returns the copy
    in eval mode; `model` is not changed."""
    _check_one_size(data, "learn_final_upsampling", "ShapesDataset(2000, 128, seed=0)")
    model.eval()
    device = next(model.parameters()).device
    last = ("score_fr", "fuse_pool4", "fuse_pool3")[model.skips]  # the map the upsampling reads
    maps, masks = [], []
    with torch.no_grad():
        for images, target in data_loader(data, batch_size, shuffle=False, seed=0):
            maps.append(model.forward_maps(images.to(device))[last])
            masks.append(target.to(device))
    maps, masks = torch.cat(maps), torch.cat(masks)
    height, width = masks.shape[-2:]
    learned = build_model(model.variant, num_classes=model.num_classes, width=model.width,
                          dropout=model.backbone.head.drop6.p, batch_norm=model.batch_norm,
                          learn_final_upsampling=True).init_from(model).to(device).eval()
    up = learned.upscore_final
    picks = torch.randint(len(maps), (steps, batch_size), generator=torch.Generator().manual_seed(seed))
    adam_cosine_steps(up.parameters(), picks, lr=lr, progress=progress, desc="upscore_final",
                      loss_of=lambda i: F.cross_entropy(up(maps[i])[..., :height, :width], masks[i],
                                                        ignore_index=IGNORE_INDEX))
    return learned
