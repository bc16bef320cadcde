"""Class heat maps of a convolutionalized classifier, and the mosaic whose answers are known."""

import numpy as np
import pytest
import torch
from torch import nn

from fcn_lesson.core.classifier import classroom_vgg16
from fcn_lesson.core.convert import convolutionalize
from fcn_lesson.datasets.shapes import ShapesClassification
from fcn_lesson.lessons.heatmaps import class_heatmaps, classifier_mosaic, heatmap_extent, tile_cells


def test_class_heatmaps_rank_classes_by_their_best_window():
    class Planted(nn.Module):
        """Scores as a convolutionalized VGG16 lays them out: class 2 wins at one window,
        class 0 is second best somewhere else, class 1 never stands out."""

        def forward(self, x):
            h, w = x.shape[-2] // 32 - 6, x.shape[-1] // 32 - 6
            scores = torch.zeros(1, 3, h, w)
            scores[0, 2, 1, 2] = 5.0
            scores[0, 0, 0, 0] = 2.0
            return scores

    probs, best = class_heatmaps(Planted(), torch.zeros(1, 3, 300, 352))
    assert probs.shape == (3, 3, 5)
    torch.testing.assert_close(probs.sum(0), torch.ones(3, 5))
    assert best == [2, 0, 1]
    assert probs[2, 1, 2] == probs[2].max() > 0.9
    with pytest.raises(ValueError, match="at least 224"):
        class_heatmaps(Planted(), torch.zeros(1, 3, 200, 400))


def test_heatmap_cells_sit_at_the_centre_of_their_windows():
    left, right, bottom, top = heatmap_extent(12, 10)  # a 600 x 512 image
    assert (left, top) == (95.5, 95.5)  # cell (0, 0): pixels 96 ... 127, centre of window 0 ... 223
    assert (right, bottom) == (95.5 + 320, 95.5 + 384)
    assert 512 - (right + 0.5) == 96  # the same margin on the far side when W = 32 (w + 6)


def test_mosaic_tiles_are_the_windows_of_their_cells():
    labels = [[0, 1, 2], [3, 4, 0]]
    image, grid = classifier_mosaic(labels, seed=5)
    assert image.shape == (3, 448, 672) and grid.tolist() == labels
    # Each tile is a ShapesClassification image of the asked class, in place.
    data = ShapesClassification(400, 224, seed=5)
    firsts = {}
    for i in range(len(data)):
        img, label = data[i]
        firsts.setdefault(label, img)
        if len(firsts) == 5:
            break
    torch.testing.assert_close(image[:, :224, 224:448], firsts[1], rtol=0, atol=0)
    # Every tile holds an object of its class at the centre of score cell (7 r, 7 c)'s window.
    for label, row, col in tile_cells(grid):
        tile = image[:, row * 32:row * 32 + 224, col * 32:col * 32 + 224]
        assert any(torch.equal(tile, data[i][0]) for i in range(60) if data[i][1] == label)
    # ... and that cell reads exactly the tile's pixels (its value differs from the classifier on
    # the tile alone only through zero padding at the tile's border: notebook 1 measures that).
    torch.manual_seed(0)
    clf = classroom_vgg16().eval()
    assert convolutionalize(clf)(image[None]).shape == (1, 5, 448 // 32 - 6, 672 // 32 - 6)
    with pytest.raises(ValueError, match="class indices"):
        classifier_mosaic([[0, 7]])
    with pytest.raises(ValueError, match="2-D grid"):
        classifier_mosaic(np.zeros(3, dtype=int))
