"""Full-mode helpers of notebook 7: what is cached, what is missing, ImageNet class heatmaps."""

import pytest
import torch
from torch import nn

from fcn_lesson.datasets.voc import IMAGENET_MEAN, IMAGENET_STD, fake_voc_tree
from fcn_lesson.lessons.real_images import (
    class_heatmaps,
    heatmap_extent,
    imagenet_weights_cached,
    imagenet_weights_path,
    sample_photo,
    to_imagenet_tensor,
    voc_missing,
)


def test_weights_path_follows_torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path = imagenet_weights_path()
    assert path == tmp_path / "hub" / "checkpoints" / "vgg16-397923af.pth"
    assert not imagenet_weights_cached()
    path.parent.mkdir(parents=True)
    path.write_bytes(b"")
    assert imagenet_weights_cached()


def test_voc_missing_explains_or_says_nothing(tmp_path):
    assert "Expected layout" in voc_missing(tmp_path / "nowhere")
    root = fake_voc_tree(tmp_path / "voc", num_images=2, size=(20, 24))
    assert voc_missing(root) is None and voc_missing(root, image_set="train") is None


def test_sample_photo_is_a_real_rgb_image():
    photo = sample_photo()
    assert photo.size == (512, 600) and photo.mode == "RGB"
    x = to_imagenet_tensor(photo)
    assert x.shape == (1, 3, 600, 512)
    back = x[0, 0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]
    assert 0 <= back.min() and back.max() <= 1 and back.std() > 0.1


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
