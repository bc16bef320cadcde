import math

import numpy as np
import pytest
import torch

from fcn_lesson import (
    accuracy_by_boundary_distance,
    boundary_accuracy,
    confusion_matrix,
    segmentation_scores,
)
from fcn_lesson.engine.metrics import boundary_distance


def test_confusion_matrix_by_hand():
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 0]])
    cm = confusion_matrix(pred, target, num_classes=3)
    # rows = truth: class 0 -> (0, 1); class 1 -> (1, 1, 0); class 2 -> (2, 0); 255 skipped
    expected = torch.tensor([[1, 1, 0],
                             [1, 2, 0],
                             [1, 0, 1]])
    assert torch.equal(cm, expected)


def test_scores_by_hand():
    cm = torch.tensor([[1, 1, 0], [1, 2, 0], [1, 0, 1]])
    s = segmentation_scores(cm)
    assert s["pixel_acc"] == pytest.approx(4 / 7)
    assert s["mean_acc"] == pytest.approx((1 / 2 + 2 / 3 + 1 / 2) / 3)
    iou = [1 / (2 + 3 - 1), 2 / (3 + 3 - 2), 1 / (2 + 1 - 1)]
    assert s["iou"].tolist() == pytest.approx(iou)
    assert s["mean_iou"] == pytest.approx(sum(iou) / 3)
    assert s["fw_iou"] == pytest.approx((2 * iou[0] + 3 * iou[1] + 2 * iou[2]) / 7)


def test_absent_classes_are_nan_and_left_out():
    # class 2 absent from truth and prediction; class 3 only predicted
    cm = torch.tensor([[3, 0, 0, 1], [0, 2, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    s = segmentation_scores(cm)
    assert math.isnan(s["iou"][2]) and s["iou"][3] == 0
    assert math.isnan(s["acc"][2]) and math.isnan(s["acc"][3])
    assert s["mean_iou"] == pytest.approx((3 / 4 + 1 + 0) / 3)
    assert s["mean_acc"] == pytest.approx((3 / 4 + 1) / 2)


def test_accumulated_over_dataset_not_averaged_per_image():
    t1, p1 = torch.zeros(1, 10, dtype=torch.long), torch.zeros(1, 10, dtype=torch.long)
    t2 = torch.tensor([[1, 1, 0, 0, 0, 0, 0, 0, 0, 0]])
    p2 = torch.zeros(1, 10, dtype=torch.long)
    cm = confusion_matrix(p1, t1, 2) + confusion_matrix(p2, t2, 2)
    s = segmentation_scores(cm)
    # per-image mean IoU would be (1 + 0.4) / 2 = 0.7; the dataset's is (18/20 + 0) / 2 = 0.45
    assert s["mean_iou"] == pytest.approx(0.45)
    assert s["pixel_acc"] == pytest.approx(18 / 20)


def test_perfect_prediction_scores_one():
    target = torch.randint(0, 5, (2, 16, 16))
    s = segmentation_scores(confusion_matrix(target.clone(), target, 5))
    assert s["pixel_acc"] == s["mean_acc"] == s["mean_iou"] == s["fw_iou"] == pytest.approx(1.0)


@pytest.mark.parametrize("pred, target, error, match", [
    (torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long), ValueError, "shapes differ"),
    (torch.zeros(2, 2, dtype=torch.long), torch.tensor([[0, 1], [7, 255]]), ValueError, r"labels \[7\]"),
    (torch.zeros(2, 2, dtype=torch.long), torch.tensor([[0, -1], [1, 1]]), ValueError, r"labels \[-1\]"),
    (torch.tensor([[0, 3]]), torch.tensor([[0, 1]]), ValueError, "pred has labels"),
    (torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.long), TypeError, "integer class indices"),
    (torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), ValueError, "empty"),
])
def test_bad_labels_are_explained(pred, target, error, match):
    with pytest.raises(error, match=match):
        confusion_matrix(pred, target, num_classes=3)


def test_empty_or_non_square_matrix():
    with pytest.raises(ValueError, match="empty"):
        segmentation_scores(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="square"):
        segmentation_scores(torch.zeros(3, 2))


def test_boundary_distance_of_a_square():
    target = torch.zeros(12, 12, dtype=torch.long)
    target[4:8, 4:8] = 1
    d = boundary_distance(target, max_distance=5)[0]
    assert d[4, 4] == 0 and d[3, 4] == 0  # both sides of the edge
    assert d[5, 5] == 1 and d[2, 4] == 1 and d[0, 0] == 4  # chessboard to (3, 4)
    assert d[6, 6] == 1  # the 4x4 square's inner 2x2 is one step from its edges


def test_boundary_accuracy_and_distance_profile():
    target = torch.zeros(1, 8, 32, dtype=torch.long)
    target[..., 16:] = 1  # a vertical edge between columns 15 and 16
    coarse = torch.zeros_like(target)
    coarse[..., 18:] = 1  # the edge predicted 2 columns late: columns 16, 17 wrong
    assert boundary_accuracy(target, target) == 1.0
    assert boundary_accuracy(coarse, target, width=1) == pytest.approx(0.5)  # cols 14..17
    assert boundary_accuracy(coarse, target, width=3) == pytest.approx(0.75)  # cols 12..19
    acc, count = accuracy_by_boundary_distance(coarse, target, max_distance=4)
    assert acc.tolist() == pytest.approx([0.5, 0.5, 1.0, 1.0, 1.0])
    assert count.tolist() == [16, 16, 16, 16, 8 * 32 - 64]


def test_numpy_and_list_inputs_score_like_tensors():
    # sklearn's confusion_matrix and np.asarray of ours are numpy arrays (rows = truth here too).
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 0]])
    cm = confusion_matrix(pred, target, num_classes=3)
    assert torch.equal(confusion_matrix(pred.numpy(), target.numpy(), 3), cm)
    assert torch.equal(confusion_matrix(pred.tolist(), target, 3), cm)
    expected = segmentation_scores(cm)
    for given in (np.asarray(cm), cm.numpy().astype(np.uint32), cm.tolist()):
        scores = segmentation_scores(given)
        for key in ("pixel_acc", "mean_acc", "mean_iou", "fw_iou"):
            assert scores[key] == pytest.approx(expected[key]), (type(given), key)
        torch.testing.assert_close(scores["iou"], expected["iou"], equal_nan=True)


@pytest.mark.parametrize("given, named", [
    ("confusion", "str"), (None, "NoneType"), ({"tp": 3}, "dict"), ([[1, 2], [3]], "list"),
    (np.array([object()]), "numpy.ndarray"),
])
def test_what_is_not_an_array_gets_a_type_error_naming_it(given, named):
    with pytest.raises(TypeError, match=rf"matrix must be a torch tensor or an array-like.*got {named}"):
        segmentation_scores(given)
    with pytest.raises(TypeError, match=rf"^pred must be .*got {named}"):
        confusion_matrix(given, torch.zeros(2, 2, dtype=torch.long), 3)
