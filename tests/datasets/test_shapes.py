"""The synthetic classroom dataset: determinism, labels, shape cues, fine structure, speed."""

import math
import time

import numpy as np
import pytest
import torch

from fcn_lesson.datasets.shapes import CLASSES, IGNORE_INDEX, PALETTE, ShapesDataset

K = len(CLASSES)
DISK, RING, SQUARE, TRIANGLE, BAR = range(1, 6)


@pytest.fixture(scope="module")
def ds200():
    return ShapesDataset(200, seed=3)


@pytest.fixture(scope="module")
def tensors200(ds200):
    return ds200.tensors()


@pytest.fixture(scope="module")
def samples200(ds200):
    return [ds200.sample(i) for i in range(len(ds200))]


# --- constants and attributes -------------------------------------------------------------


def test_constants():
    assert CLASSES[0] == "background" and len(CLASSES) == 6 and len(set(CLASSES)) == 6
    assert IGNORE_INDEX == 255
    assert PALETTE.dtype == torch.uint8 and PALETTE.shape == (K, 3)
    colours = PALETTE.int()
    # clearly distinguishable: every pair differs by a lot somewhere
    for a in range(K):
        for b in range(a + 1, K):
            assert (colours[a] - colours[b]).abs().sum() >= 100, (a, b)
    assert colours[0].max() <= 64, "background should be dark"


def test_attributes():
    ds = ShapesDataset(3, image_size=(40, 56), seed=1)
    assert len(ds) == 3
    assert ds.classes == CLASSES and ds.num_classes == K
    assert ds.image_size == (40, 56)
    assert torch.equal(ds.palette, PALETTE)
    assert ShapesDataset(1, 64).image_size == (64, 64)
    assert isinstance(ds, torch.utils.data.Dataset)
    assert "ShapesDataset" in repr(ds)


# --- determinism --------------------------------------------------------------------------


def test_same_seed_same_items():
    a, b = ShapesDataset(5, seed=7), ShapesDataset(5, seed=7)
    for i in range(5):
        xa, ya = a[i]
        xb, yb = b[i]
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_different_seeds_differ():
    a, b = ShapesDataset(5, seed=0), ShapesDataset(5, seed=1)
    for i in range(5):
        assert not torch.equal(a[i][0], b[i][0])
        assert not torch.equal(a[i][1], b[i][1])
    # and items differ from each other within a dataset
    assert not torch.equal(a[0][1], a[1][1])


def test_item_independent_of_length_and_cache():
    short, long = ShapesDataset(3, seed=5), ShapesDataset(50, seed=5)
    for i in range(3):
        assert torch.equal(short[i][0], long[i][0]) and torch.equal(short[i][1], long[i][1])
    images, masks = long.tensors()
    assert long.tensors()[0] is images, "tensors() must be cached"
    lazy = ShapesDataset(50, seed=5)
    for i in (0, 17, 49):
        assert torch.equal(images[i], lazy[i][0]) and torch.equal(masks[i], lazy[i][1])
        assert torch.equal(long[i][0], lazy[i][0])
    assert torch.equal(long[-1][1], long[49][1])


def test_dataloader_batches():
    loader = torch.utils.data.DataLoader(ShapesDataset(6, 32), batch_size=4)
    x, y = next(iter(loader))
    assert x.shape == (4, 3, 32, 32) and y.shape == (4, 32, 32)


# --- label sanity ---------------------------------------------------------------------------


def test_tensor_types_and_ranges(tensors200):
    images, masks = tensors200
    assert images.shape == (200, 3, 128, 128) and images.dtype == torch.float32
    assert masks.shape == (200, 128, 128) and masks.dtype == torch.int64
    assert images.min() >= 0 and images.max() <= 1
    assert masks.min() >= 0 and masks.max() < K
    x, y = ShapesDataset(1)[0]
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.is_contiguous()


def test_every_image_has_objects_and_all_classes_appear(tensors200, samples200):
    _, masks = tensors200
    assert all((m > 0).any() for m in masks)
    counts = torch.bincount(masks.flatten(), minlength=K)
    assert (counts > 0).all(), counts
    freq = counts.double() / counts.sum()
    assert 0.75 <= freq[0] <= 0.95, f"background fraction {freq[0]:.3f}"
    assert (freq[1:] >= 0.003).all(), freq
    n_objects = [len(s.objects) for s in samples200]
    assert min(n_objects) >= 1 and max(n_objects) <= 3
    # each class is an object in many images
    present = torch.stack([torch.bincount(m.flatten(), minlength=K) > 0 for m in masks])
    assert (present[:, 1:].sum(0) >= 40).all(), present.sum(0)


def test_mask_matches_recorded_objects(samples200):
    for s in samples200[:50]:
        for k, obj in enumerate(s.objects, start=1):
            visible = s.instances == k
            assert visible.sum() == obj.visible
            assert (s.mask[visible] == obj.label).all()
            assert obj.visible >= 0.7 * obj.area, "occlusion keeps objects recognisable"
        assert ((s.instances > 0) == (s.mask > 0)).all()


def test_objects_scale_with_small_images_and_stay_inside():
    """Below 128 px shapes shrink with the image; above, they keep their 128-px size."""
    for size in (64, 128, 256):
        ds = ShapesDataset(40, size, seed=2)
        reference = min(size, 128)
        extents = [o.extent / reference for i in range(len(ds)) for o in ds.sample(i).objects]
        assert 0.3 <= min(extents) and max(extents) <= 0.9, size
        assert 0.4 <= np.median(extents) <= 0.65, size
        # no object is cut by the image border: the outer rows/columns are background
        _, masks = ds.tensors()
        assert (masks[:, 0, :] == 0).all() and (masks[:, -1, :] == 0).all()
        assert (masks[:, :, 0] == 0).all() and (masks[:, :, -1] == 0).all()


# --- shape, not colour ----------------------------------------------------------------------


def test_colour_is_not_a_class_cue(samples200):
    per_class = {k: [] for k in range(1, K)}
    for s in samples200:
        for k, obj in enumerate(s.objects, start=1):
            per_class[obj.label].append(s.image[s.instances == k].mean(axis=0))
    means = {k: np.mean(v, axis=0) for k, v in per_class.items()}
    stds = {k: np.std(v, axis=0) for k, v in per_class.items()}
    for k in range(1, K):
        assert len(per_class[k]) >= 50, (CLASSES[k], len(per_class[k]))
        # object colours cover the colour cube: a broad spread in every channel ...
        assert (stds[k] > 0.2).all(), (CLASSES[k], stds[k])
        # ... centred alike for every class
        for j in range(k + 1, K):
            # (~60 objects a class: sampling noise of a difference of means is ~0.05)
            assert np.abs(means[k] - means[j]).max() < 0.15, (CLASSES[k], CLASSES[j])
    # a nearest-class-mean colour classifier is no better than chance
    X = np.concatenate([np.array(v) for v in per_class.values()])
    y = np.concatenate([np.full(len(v), k) for k, v in per_class.items()])
    centres = np.stack([means[k] for k in range(1, K)])
    guess = 1 + np.argmin(((X[:, None, :] - centres[None]) ** 2).sum(-1), axis=1)
    assert (guess == y).mean() < 0.35  # chance is 0.2


def test_objects_contrast_with_background(samples200):
    for s in samples200[:80]:
        bg = s.mask == 0
        bg_mean = s.image[bg].mean(axis=0)
        for k, obj in enumerate(s.objects, start=1):
            # the local background around the object, excluding other objects
            cy, cx = (int(round(c)) for c in obj.center)
            r = int(obj.extent) // 2 + 4
            y0, x0 = max(cy - r, 0), max(cx - r, 0)
            win_bg = bg[y0 : cy + r + 1, x0 : cx + r + 1]
            win_img = s.image[y0 : cy + r + 1, x0 : cx + r + 1]
            ref = win_img[win_bg].mean(axis=0) if win_bg.sum() > 20 else bg_mean
            colour = s.image[s.instances == k].mean(axis=0)
            assert np.linalg.norm(colour - ref) > 0.2, (obj, colour, ref)


def test_background_is_textured(tensors200):
    images, masks = tensors200
    for x, m in zip(images[:20], masks[:20], strict=True):
        bg = x[:, m == 0]
        assert bg.std(dim=1).max() > 0.03, "background is not a flat colour"


# --- fine structure -------------------------------------------------------------------------


def _bar_widths(samples):
    """Width of each (mostly visible) bar from its mask pixels: area / length, where the
    length is the spread of the pixels along their principal axis."""
    widths = []
    for s in samples:
        for k, obj in enumerate(s.objects, start=1):
            if obj.label != BAR or obj.visible < 0.95 * obj.area:
                continue
            ys, xs = np.nonzero(s.instances == k)
            pts = np.stack([ys, xs], 1).astype(float)
            pts -= pts.mean(0)
            _, _, vt = np.linalg.svd(pts, full_matrices=False)
            along = pts @ vt[0]
            length = along.max() - along.min() + 1
            widths.append(len(ys) / length)
    return np.array(widths)


def test_bars_are_thin(samples200):
    widths = _bar_widths(samples200)
    assert len(widths) >= 30
    assert 4.5 <= np.median(widths) <= 6.5, np.median(widths)
    assert widths.min() >= 3.5 and widths.max() <= 7.5, (widths.min(), widths.max())
    # thin compared with the stride of the coarsest FCN (32 px), and with their length
    lengths = [o.extent for s in samples200 for o in s.objects if o.label == BAR]
    assert min(lengths) >= 10 * widths.max()


def test_rings_have_holes(samples200):
    n = 0
    for s in samples200:
        for k, obj in enumerate(s.objects, start=1):
            if obj.label != RING:
                continue
            n += 1
            cy, cx = obj.center
            hole_r = obj.extent / 2 - obj.thickness
            assert hole_r >= 0.35 * obj.extent / 2
            # the disc inside the ring's wall is never labelled ring
            yy, xx = np.mgrid[: s.mask.shape[0], : s.mask.shape[1]]
            inner = (yy - cy) ** 2 + (xx - cx) ** 2 <= (hole_r - 1) ** 2
            assert inner.sum() > 0
            assert not (s.instances[inner] == k).any()
            assert (s.mask[inner] != RING).mean() > 0.5
    assert n >= 40


def test_ring_hole_larger_than_wall_and_wall_thin(samples200):
    rings = [o for s in samples200 for o in s.objects if o.label == RING]
    walls = np.array([o.thickness for o in rings])
    assert 6.0 <= walls.min() and walls.max() <= 9.0
    holes = np.array([o.extent - 2 * o.thickness for o in rings])
    assert holes.min() >= 15  # a stride-32 prediction cannot draw such a hole


def test_squares_and_triangles_have_sharp_corners(samples200):
    # A polygon's mask fills its convex hull; a disk of the same area is rounder.
    # Compare the farthest pixel from the centre with the radius of the equal-area disk.
    for s in samples200[:60]:
        for k, obj in enumerate(s.objects, start=1):
            if obj.label not in (SQUARE, TRIANGLE, DISK) or obj.visible < obj.area:
                continue
            ys, xs = np.nonzero(s.instances == k)
            rmax = np.sqrt((ys - obj.center[0]) ** 2 + (xs - obj.center[1]) ** 2).max()
            ratio = rmax / math.sqrt(obj.area / math.pi)
            if obj.label == SQUARE:
                assert ratio > 1.12, ratio  # sqrt(pi/2) = 1.25 for a perfect square
            elif obj.label == TRIANGLE:
                assert ratio > 1.3, ratio  # 1.56 for an equilateral triangle
            else:
                assert ratio < 1.12, ratio


# --- sizes and arguments ----------------------------------------------------------------------


@pytest.mark.parametrize("size", [16, 33, 150, (97, 131), (128, 64), (16, 300)])
def test_any_image_size(size):
    ds = ShapesDataset(12, size, seed=4)
    h, w = (size, size) if isinstance(size, int) else size
    images, masks = ds.tensors()
    assert images.shape == (12, 3, h, w) and masks.shape == (12, h, w)
    assert all((m > 0).any() for m in masks)
    assert images.min() >= 0 and images.max() <= 1 and masks.max() < K


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(num_images=-1),
        dict(num_images=2.5),
        dict(num_images=3, image_size=15),
        dict(num_images=3, image_size=(16, 8)),
        dict(num_images=3, image_size=(32, 32, 3)),
        dict(num_images=3, image_size="128"),
        dict(num_images=3, image_size=64.0),
        dict(num_images=3, image_size=True),
        dict(num_images=3, seed=-1),
        dict(num_images=3, seed=1.5),
    ],
)
def test_bad_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        ShapesDataset(**kwargs)


def test_bad_index_raises():
    ds = ShapesDataset(3)
    with pytest.raises(IndexError):
        ds[3]
    with pytest.raises(IndexError):
        ds[-4]
    assert len(ShapesDataset(0)) == 0
    images, masks = ShapesDataset(0, 32).tensors()
    assert images.shape == (0, 3, 32, 32) and masks.shape == (0, 32, 32)


def test_thousand_images_are_fast():
    # CPU time of this process, not wall time: on a shared machine (a training job beside the
    # tests) wall time measures the neighbours. About 4 s here on an idle machine; the bound
    # leaves room for the spin time of numpy's BLAS threads (the textures' matrix products),
    # which CPU time counts and which grows when the machine is busy (5.1 s seen in a full run).
    t = time.process_time()
    images, masks = ShapesDataset(1000, 128, seed=11).tensors()
    elapsed = time.process_time() - t
    assert images.shape[0] == 1000
    assert elapsed < 8.0, f"1,000 images took {elapsed:.1f} s of CPU time"


def test_mixed_sizes_batch_with_replicate_padding():
    from torch.utils.data import DataLoader

    from fcn_lesson.datasets.common import replicate_pad_collate
    from fcn_lesson.datasets.shapes import mixed_size_shapes

    data = mixed_size_shapes(7, (40, 56), seed=3)
    assert len(data) == 7 and data[0][0].shape == (3, 40, 40) and data[6][0].shape == (3, 56, 56)
    images, masks = next(iter(DataLoader(data, batch_size=7, collate_fn=replicate_pad_collate)))
    assert images.shape == (7, 3, 56, 56) and masks.shape == (7, 56, 56)
    small_img, small_mask = data[0]
    assert torch.equal(images[0, :, :40, :40], small_img) and torch.equal(masks[0, :40, :40], small_mask)
    assert (masks[0, 40:] == 255).all() and (masks[0, :, 40:] == 255).all()
    assert torch.equal(images[0, :, 50, :40], small_img[:, 39, :])  # border row replicated
