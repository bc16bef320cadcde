"""The paper's segmentation metrics (Sec. 5), from a confusion matrix accumulated over a
whole dataset (never averaged per image), and accuracy near object boundaries.

With n_ij the number of pixels of class i predicted as j and t_i = sum_j n_ij:
  pixel accuracy  sum_i n_ii / sum_i t_i
  mean accuracy   mean_i n_ii / t_i
  mean IoU        mean_i n_ii / (t_i + sum_j n_ji - n_ii)
  fw IoU          sum_i t_i * IoU_i / sum_i t_i
A class absent from both ground truth and prediction has no IoU (NaN) and is left out of
the means; a class never in the ground truth has no accuracy.
"""

import math

import torch
import torch.nn.functional as F

from fcn_lesson.datasets.common import IGNORE_INDEX


def _as_tensor(value, name: str, device: torch.device | None = None) -> torch.Tensor:
    """`value` as a tensor: tensors as they are, array-likes (a numpy array such as sklearn's
    confusion matrix, nested lists) through torch.as_tensor, which shares a numpy array's memory."""
    if isinstance(value, torch.Tensor):
        return value
    try:
        return torch.as_tensor(value, device=device)
    except (TypeError, ValueError, RuntimeError) as e:
        kind = type(value).__qualname__
        kind = kind if type(value).__module__ == "builtins" else f"{type(value).__module__}.{kind}"
        raise TypeError(f"{name} must be a torch tensor or an array-like of numbers (numpy array, nested "
                        f"lists), got {kind}: {e}") from None


def _check_labels(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                  ignore_index: int) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"pred and target shapes differ: {tuple(pred.shape)} vs "
                         f"{tuple(target.shape)}; pass argmax predictions (N, H, W), not logits")
    for name, t in (("pred", pred), ("target", target)):
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise TypeError(f"{name} must hold integer class indices, got {t.dtype}")
    if target.numel() == 0:
        raise ValueError("empty pred/target: nothing to score")
    valid = target != ignore_index
    bad = target[valid & ((target < 0) | (target >= num_classes))]
    if bad.numel():
        raise ValueError(f"target has labels {sorted(set(bad.unique().tolist()))[:10]} outside "
                         f"[0, {num_classes}) that are not the ignore label {ignore_index}")
    bad = pred[(pred < 0) | (pred >= num_classes)]
    if bad.numel():
        raise ValueError(f"pred has labels {sorted(set(bad.unique().tolist()))[:10]} outside "
                         f"[0, {num_classes})")


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """(num_classes, num_classes) int64 counts; rows = ground truth, columns = prediction.
    Pixels labelled `ignore_index` are not counted. Sum the matrices of many batches.
    pred and target may be tensors or array-likes (numpy arrays); an array-like goes to the
    other argument's device."""
    target = _as_tensor(target, "target", pred.device if isinstance(pred, torch.Tensor) else None)
    pred = _as_tensor(pred, "pred", target.device)
    _check_labels(pred, target, num_classes, ignore_index)
    valid = target != ignore_index
    index = target[valid].long() * num_classes + pred[valid].long()
    counts = torch.bincount(index.flatten().cpu(), minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def segmentation_scores(cm: torch.Tensor) -> dict:
    """pixel_acc, mean_acc, mean_iou, fw_iou (floats) and iou, acc (per-class tensors, NaN
    where undefined) from a confusion matrix (a tensor or an array-like such as a numpy array)."""
    cm = _as_tensor(cm, "the confusion matrix")
    if cm.dim() != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"expected a square confusion matrix, got shape {tuple(cm.shape)}")
    cm = cm.double()
    total = cm.sum()
    if total == 0:
        raise ValueError("the confusion matrix is empty (every pixel ignored?)")
    tp = cm.diagonal()
    truth, predicted = cm.sum(1), cm.sum(0)
    acc = tp / truth  # NaN where the class never occurs in the ground truth
    iou = tp / (truth + predicted - tp)  # NaN where absent from both
    present = ~iou.isnan()
    return {
        "pixel_acc": (tp.sum() / total).item(),
        "mean_acc": acc.nanmean().item(),
        "mean_iou": iou.nanmean().item(),
        "fw_iou": ((truth[present] * iou[present]).sum() / total).item(),
        "iou": iou,
        "acc": acc,
    }


def boundary_distance(target: torch.Tensor, max_distance: int = 16) -> torch.Tensor:
    """Chessboard distance of every pixel to the nearest label edge, capped at max_distance.

    A pixel is on an edge (distance 0) when a 4-neighbour has another label; ignored pixels
    count as a label of their own, so the edge of an ignore band is an edge too.
    """
    if target.dim() == 2:
        target = target[None]
    if target.dim() != 3:
        raise ValueError(f"expected target (N, H, W) or (H, W), got {tuple(target.shape)}")
    t = target.long()
    edge = torch.zeros_like(t, dtype=torch.bool)
    dv = t[:, 1:, :] != t[:, :-1, :]
    dh = t[:, :, 1:] != t[:, :, :-1]
    edge[:, 1:, :] |= dv
    edge[:, :-1, :] |= dv
    edge[:, :, 1:] |= dh
    edge[:, :, :-1] |= dh
    distance = torch.full(t.shape, max_distance, dtype=torch.long, device=t.device)
    reached = edge[:, None].float()
    for d in range(max_distance):
        distance[(reached[:, 0] > 0) & (distance == max_distance)] = d
        reached = F.max_pool2d(reached, 3, stride=1, padding=1)
    return distance


def boundary_band(target: torch.Tensor, width: int = 3,
                  ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """The labelled pixels within `width` of a label edge (the trimap band), shaped as target."""
    band = (boundary_distance(target, width + 1) <= width).reshape(target.shape)
    return band & (target != ignore_index)


def boundary_accuracy(pred: torch.Tensor, target: torch.Tensor, width: int = 3,
                      ignore_index: int = IGNORE_INDEX) -> float:
    """Pixel accuracy over the trimap band of pixels within `width` of a label edge: how well a
    net keeps boundaries. The measure is DeepLab's (Chen et al., ICLR 2015), after Kohli et al.
    (2009); the FCN paper reports no boundary metric."""
    if pred.shape != target.shape:
        raise ValueError(f"pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
    band = boundary_band(target, width, ignore_index)
    if not band.any():
        return math.nan
    return (pred[band] == target[band]).double().mean().item()


def accuracy_by_boundary_distance(pred: torch.Tensor, target: torch.Tensor,
                                  max_distance: int = 16,
                                  ignore_index: int = IGNORE_INDEX) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel accuracy as a function of distance to the nearest edge: (accuracy[d], count[d])
    for d = 0 .. max_distance (the last bin holds everything further away)."""
    if pred.shape != target.shape:
        raise ValueError(f"pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
    distance = boundary_distance(target, max_distance).reshape(target.shape)
    valid = target != ignore_index
    d = distance[valid]
    correct = (pred[valid] == target[valid]).double()
    count = torch.bincount(d, minlength=max_distance + 1).double()
    hits = torch.bincount(d, weights=correct, minlength=max_distance + 1)
    return hits / count, count.long()


def score_predictions(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                      boundary_width: int = 3, ignore_index: int = IGNORE_INDEX) -> dict:
    """Everything the lesson reports for a set of predictions, from one confusion matrix over
    all pixels: `segmentation_scores`, plus "boundary_acc" (`boundary_accuracy`) and "confusion"."""
    cm = confusion_matrix(pred, target, num_classes, ignore_index)
    scores = segmentation_scores(cm)
    scores["boundary_acc"] = boundary_accuracy(pred, target, boundary_width, ignore_index)
    scores["confusion"] = cm
    return scores
