"""The synthetic classroom dataset: shapes on a textured background.

Each image holds 2-5 objects; an object's class is its *shape* (disk, ring, square,
triangle, thin bar), never its colour: every object gets a random colour, the
background is a random colour gradient with blotches, faint stripes and pixel noise.
Objects may overlap (a later object occludes an earlier one, and the mask labels
what is visible). The fine structure is deliberate: bars only a few pixels wide,
rings with a hole, sharp corners. A stride-32 prediction cannot draw those, the
skip connections of FCN-16s/8s can, which is the point of the lesson.

Everything is generated procedurally with numpy, deterministically: item ``i`` of
``ShapesDataset(n, image_size, seed)`` depends only on ``(seed, i, image_size)``.
No download, no files; 1,000 images of 128x128 take about a second.

Shapes are drawn from signed distance functions (negative inside), so the image is
anti-aliased (coverage ``clip(0.5 - d, 0, 1)``) while the mask is exactly the set of
pixels whose centre is inside (``d <= 0``, i.e. coverage >= 1/2).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import ConcatDataset, Dataset, TensorDataset

__all__ = [
    "CLASSES",
    "IGNORE_INDEX",
    "PALETTE",
    "ShapeObject",
    "ShapeSample",
    "ShapesDataset",
    "render_shapes",
]

CLASSES: tuple[str, ...] = ("background", "disk", "ring", "square", "triangle", "bar")
"""Class names; the label of a pixel is its index in this tuple."""

IGNORE_INDEX: int = 255
"""Label value that losses and metrics skip (PASCAL VOC convention). ShapesDataset never uses it."""

PALETTE: torch.Tensor = torch.tensor(
    [
        [40, 40, 40],  # background: dark grey
        [230, 25, 75],  # disk: red
        [60, 180, 75],  # ring: green
        [0, 130, 200],  # square: blue
        [255, 225, 25],  # triangle: yellow
        [70, 240, 240],  # bar: cyan
    ],
    dtype=torch.uint8,
)
"""Colours (K, 3) uint8 for drawing masks; row k is the colour of class k."""

# ---------------------------------------------------------------------------------------
# Geometry, in pixels at the reference size of 128 (scaled by min(H, W) / 128 below it).
# Each entry is a uniform range. "extent" is the size of the shape:
#   disk: diameter; ring: outer diameter; square: side; triangle: side; bar: length.
_REFERENCE_SIDE = 128
_EXTENT = {
    1: (0.35, 0.55),  # disk
    2: (0.45, 0.65),  # ring
    3: (0.32, 0.50),  # square
    4: (0.40, 0.60),  # triangle
    5: (0.55, 0.85),  # bar
}
# Objects are large next to the 32-px cells of FCN-32s (whose blobs then roughly fit the
# disks and squares) while bars and ring walls stay a few pixels thin, which only the
# stride-8 skip resolves.
_RING_THICKNESS = (6.0, 9.0)  # px at 128
_BAR_WIDTH = (4.5, 6.5)  # px at 128
# Lower bounds in pixels so that tiny images (down to 16 px) still show the shapes.
_MIN_EXTENT = {1: 4.0, 2: 8.0, 3: 4.0, 4: 6.0, 5: 8.0}
_MIN_THIN = 1.5  # px: thinnest bar / ring wall

_OBJECTS_PER_IMAGE = (1, 3)  # inclusive
_MAX_TRIES = 25  # placement attempts per object before it is skipped
_MIN_VISIBLE = 0.7  # an earlier object must keep this fraction of its pixels visible
_MIN_CONTRAST = 0.4  # Euclidean RGB distance of an object colour from what lies beneath
_COLOUR_CANDIDATES = 24


class ShapeObject(NamedTuple):
    """One drawn object, as recorded by :func:`render_shapes`."""

    label: int  # class index into CLASSES
    name: str  # class name
    center: tuple[float, float]  # (y, x) in pixels
    angle: float  # rotation in radians
    extent: float  # diameter / outer diameter / side / length, in pixels
    thickness: float  # ring wall or bar width in pixels; NaN for other shapes
    colour: tuple[float, float, float]  # RGB in [0, 1] before shading and noise
    area: int  # pixels covered when drawn
    visible: int  # pixels still visible in the final mask


class ShapeSample(NamedTuple):
    """A rendered image with its labels (numpy, channel-last image)."""

    image: np.ndarray  # (H, W, 3) float32 in [0, 1]
    mask: np.ndarray  # (H, W) uint8 class labels
    instances: np.ndarray  # (H, W) int16: 0 background, k for objects[k - 1]
    objects: list[ShapeObject]


def _check_size(image_size) -> tuple[int, int]:
    if isinstance(image_size, bool):
        raise ValueError(f"image_size must be an int or an (H, W) pair, got {image_size!r}")
    if isinstance(image_size, (int, np.integer)):
        size = (int(image_size), int(image_size))
    elif isinstance(image_size, Sequence) and len(image_size) == 2:
        if not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in image_size
        ):
            raise ValueError(f"image_size must hold two ints, got {image_size!r}")
        size = (int(image_size[0]), int(image_size[1]))
    else:
        raise ValueError(f"image_size must be an int or an (H, W) pair, got {image_size!r}")
    if min(size) < 16:
        raise ValueError(f"image_size must be at least 16 pixels on each side, got {size}")
    return size


@functools.lru_cache(maxsize=64)
def _smooth_basis(n: int, knots: int) -> np.ndarray:
    """(n, knots) weights that interpolate ``knots`` random values smoothly over n pixels."""
    pos = (np.arange(n, dtype=np.float64) + 0.5) / n
    centres = np.linspace(0.0, 1.0, knots)
    sigma = 1.0 / max(knots - 1, 1) * 0.6
    w = np.exp(-0.5 * ((pos[:, None] - centres[None, :]) / sigma) ** 2)
    w /= w.sum(axis=1, keepdims=True)
    w.setflags(write=False)
    return w.astype(np.float32)


@functools.lru_cache(maxsize=64)
def _linear_basis(n: int) -> np.ndarray:
    t = (np.arange(n, dtype=np.float32) + 0.5) / n
    b = np.stack([1 - t, t], axis=1)
    b.setflags(write=False)
    return b


def _smooth_field(by: np.ndarray, bx: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Interpolate a (ky, kx, 3) grid of values to (H, W, 3) with bases (H, ky), (W, kx)."""
    ky, kx, c = values.shape
    rows = by @ values.reshape(ky, kx * c)  # (H, kx*c)
    return np.einsum("hkc,wk->hwc", rows.reshape(-1, kx, c), bx, optimize=True)


def _background(rng: np.random.Generator, h: int, w: int, scale: float) -> np.ndarray:
    """A random colour gradient + smooth blotches + faint stripes, (H, W, 3) float32."""
    base = rng.uniform(0.15, 0.85, size=3).astype(np.float32)
    corners = rng.uniform(-0.22, 0.22, size=(2, 2, 3)).astype(np.float32)
    img = base + _smooth_field(_linear_basis(h), _linear_basis(w), corners)

    knots = int(rng.integers(3, 7))
    blotches = rng.normal(0.0, 0.09, size=(knots, knots, 3)).astype(np.float32)
    img += _smooth_field(_smooth_basis(h, knots), _smooth_basis(w, knots), blotches)

    if rng.random() < 0.75:  # faint stripes, random direction / period / colour
        period = rng.uniform(5.0, 18.0) * scale
        phi = rng.uniform(0.0, math.pi)
        amp = rng.uniform(0.025, 0.07)
        tint = rng.uniform(-1.0, 1.0, size=3).astype(np.float32)
        tint /= max(float(np.abs(tint).max()), 1e-6)
        ys = np.arange(h, dtype=np.float32)[:, None] * math.sin(phi)
        xs = np.arange(w, dtype=np.float32)[None, :] * math.cos(phi)
        wave = np.sin((ys + xs) * (2 * math.pi / period) + rng.uniform(0, 2 * math.pi))
        img += (amp * wave.astype(np.float32))[:, :, None] * tint
    return img


def _sample_geometry(rng: np.random.Generator, label: int, h: int, w: int, scale: float):
    """Random extent, thickness, angle and centre for one object of class ``label``."""
    lo, hi = _EXTENT[label]
    extent = max(rng.uniform(lo, hi) * _REFERENCE_SIDE * scale, _MIN_EXTENT[label])
    thickness = float("nan")
    if label == 2:
        thickness = max(rng.uniform(*_RING_THICKNESS) * scale, _MIN_THIN)
        thickness = min(thickness, 0.3 * extent)  # always leave a hole
    elif label == 5:
        thickness = max(rng.uniform(*_BAR_WIDTH) * scale, _MIN_THIN)
    angle = rng.uniform(0.0, 2 * math.pi)

    # Half extents of the rotated shape, so that it lies inside the image (1 px margin).
    c, s = abs(math.cos(angle)), abs(math.sin(angle))
    if label in (1, 2):
        ey = ex = extent / 2
    elif label in (3, 5):
        a = extent / 2
        b = a if label == 3 else thickness / 2
        ex, ey = a * c + b * s, a * s + b * c
    else:  # triangle: circumradius R, vertices at angle + 90, 210, 330 degrees
        r = extent / math.sqrt(3)
        vs = [angle + math.pi / 2 + k * 2 * math.pi / 3 for k in range(3)]
        ex = r * max(abs(math.cos(v)) for v in vs)
        ey = r * max(abs(math.sin(v)) for v in vs)
    # Shrink if the shape cannot fit (only happens for tiny images).
    fit = min(1.0, (h / 2 - 1) / max(ey, 1e-6), (w / 2 - 1) / max(ex, 1e-6))
    if fit < 1.0:
        extent *= fit
        ey *= fit
        ex *= fit
    cy = rng.uniform(ey + 1, h - ey - 1) - 0.5
    cx = rng.uniform(ex + 1, w - ex - 1) - 0.5
    return extent, thickness, angle, (cy, cx), (ey, ex)


def _sdf(label: int, u: np.ndarray, v: np.ndarray, extent: float, thickness: float):
    """Signed distance (px, negative inside) in the object's frame (u along, v across)."""
    if label == 1:
        return np.hypot(u, v) - extent / 2
    if label == 2:
        mid = extent / 2 - thickness / 2
        return np.abs(np.hypot(u, v) - mid) - thickness / 2
    if label in (3, 5):
        a = extent / 2
        b = a if label == 3 else thickness / 2
        qu, qv = np.abs(u) - a, np.abs(v) - b
        outside = np.hypot(np.maximum(qu, 0), np.maximum(qv, 0))
        return outside + np.minimum(np.maximum(qu, qv), 0)
    # triangle: intersection of three half-planes, inradius = side / (2 sqrt 3)
    inradius = extent / (2 * math.sqrt(3))
    d = None
    for k in range(3):  # outward normals at -90, 30, 150 degrees (vertex up at 90)
        phi = -math.pi / 2 + k * 2 * math.pi / 3
        dk = u * math.cos(phi) + v * math.sin(phi)
        d = dk if d is None else np.maximum(d, dk)
    return d - inradius


def render_shapes(rng: np.random.Generator, height: int, width: int) -> ShapeSample:
    """Draw one random image of shapes with ``rng``; see the module docstring."""
    h, w = int(height), int(width)
    # Smaller images shrink the shapes to fit; larger ones keep the 128-px shapes on a larger
    # canvas, so a model trained at 128 px meets the same objects at any size.
    scale = min(h, w, _REFERENCE_SIDE) / _REFERENCE_SIDE
    background = _background(rng, h, w, scale)
    image = background.copy()
    mask = np.zeros((h, w), dtype=np.uint8)
    instances = np.zeros((h, w), dtype=np.int16)
    objects: list[dict] = []

    n_objects = int(rng.integers(_OBJECTS_PER_IMAGE[0], _OBJECTS_PER_IMAGE[1] + 1))
    for _ in range(n_objects):
        label = int(rng.integers(1, len(CLASSES)))
        placed = None
        for _attempt in range(_MAX_TRIES):
            extent, thick, angle, (cy, cx), (ey, ex) = _sample_geometry(rng, label, h, w, scale)
            y0, y1 = max(int(math.floor(cy - ey)) - 1, 0), min(int(math.ceil(cy + ey)) + 2, h)
            x0, x1 = max(int(math.floor(cx - ex)) - 1, 0), min(int(math.ceil(cx + ex)) + 2, w)
            dy = np.arange(y0, y1, dtype=np.float32)[:, None] - np.float32(cy)
            dx = np.arange(x0, x1, dtype=np.float32)[None, :] - np.float32(cx)
            ca, sa = np.float32(math.cos(angle)), np.float32(math.sin(angle))
            u = dx * ca + dy * sa
            v = dy * ca - dx * sa
            d = _sdf(label, u, v, extent, thick)
            inside = d <= 0
            area = int(inside.sum())
            if area == 0:
                continue
            hidden = np.bincount(instances[y0:y1, x0:x1][inside], minlength=len(objects) + 1)
            if objects:
                visible = np.array([o["visible"] for o in objects])
                keep = visible - hidden[1:]
                full = np.array([o["area"] for o in objects])
                if np.any(keep < _MIN_VISIBLE * full):
                    continue
            placed = (extent, thick, angle, (cy, cx), (y0, y1, x0, x1), u, d, inside, area, hidden)
            break
        if placed is None:
            continue  # too crowded: skip this object (never the first one)
        extent, thick, angle, centre, (y0, y1, x0, x1), u, d, inside, area, hidden = placed

        # Colour: random, independent of the class, far enough from what lies beneath.
        refs = [background[y0:y1, x0:x1][inside].mean(axis=0)]
        refs += [objects[j]["colour"] for j in np.flatnonzero(hidden[1:])]
        cands = rng.random((_COLOUR_CANDIDATES, 3)).astype(np.float32)
        dist = np.linalg.norm(cands[:, None, :] - np.asarray(refs)[None, :, :], axis=2).min(1)
        ok = np.flatnonzero(dist >= _MIN_CONTRAST)
        colour = cands[ok[0]] if ok.size else cands[int(dist.argmax())]

        # A gentle shading gradient across the object, then anti-aliased compositing.
        shade = np.float32(rng.uniform(-0.08, 0.08)) * u / np.float32(max(extent / 2, 1.0))
        fill = colour[None, None, :] + shade[:, :, None]
        alpha = np.clip(0.5 - d, 0.0, 1.0)[:, :, None]
        region = image[y0:y1, x0:x1]
        region += alpha * (fill - region)
        mask[y0:y1, x0:x1][inside] = label
        instances[y0:y1, x0:x1][inside] = len(objects) + 1
        for j in np.flatnonzero(hidden[1:]):
            objects[j]["visible"] -= int(hidden[j + 1])
        objects.append(
            dict(
                label=label,
                name=CLASSES[label],
                center=(float(centre[0]), float(centre[1])),
                angle=float(angle),
                extent=float(extent),
                thickness=float(thick),
                colour=tuple(float(c) for c in colour),
                area=area,
                visible=area,
            )
        )

    noise = np.float32(rng.uniform(0.015, 0.045))
    image += noise * rng.standard_normal((h, w, 3), dtype=np.float32)
    np.clip(image, 0.0, 1.0, out=image)
    objs = [ShapeObject(**o) for o in objects]
    return ShapeSample(image=image, mask=mask, instances=instances, objects=objs)


class ShapesDataset(Dataset):
    """Procedural shapes for semantic segmentation, classified by shape, not colour.

    Args:
        num_images: number of items.
        image_size: an int (square) or an ``(H, W)`` pair, each at least 16. Any size
            works, not only multiples of 32. Below 128 px objects shrink with
            ``min(H, W)``; above it they keep their 128-px size on a larger canvas.
        seed: item ``i`` depends only on ``(seed, i, image_size)``, so datasets with the
            same seed agree item by item whatever their length.

    Item ``i`` is ``(image, mask)``: a float32 tensor ``(3, H, W)`` in ``[0, 1]``, ready
    for the classroom models as it is, and an int64 tensor ``(H, W)`` of labels in
    ``[0, num_classes)`` (indices into :data:`CLASSES`).
    """

    classes: tuple[str, ...] = CLASSES

    def __init__(self, num_images: int, image_size: int | tuple[int, int] = 128, seed: int = 0):
        if isinstance(num_images, bool) or not isinstance(num_images, (int, np.integer)):
            raise ValueError(f"num_images must be an int, got {num_images!r}")
        if num_images < 0:
            raise ValueError(f"num_images must be >= 0, got {num_images}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        self.num_images = int(num_images)
        self.image_size: tuple[int, int] = _check_size(image_size)
        self.seed = int(seed)
        self._tensors: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def palette(self) -> torch.Tensor:
        return PALETTE.clone()

    def __len__(self) -> int:
        return self.num_images

    def __repr__(self) -> str:
        return (
            f"ShapesDataset(num_images={self.num_images}, image_size={self.image_size}, "
            f"seed={self.seed})"
        )

    def _index(self, i) -> int:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"index must be an int, got {type(i).__name__}")
        i = int(i)
        if i < 0:
            i += self.num_images
        if not 0 <= i < self.num_images:
            raise IndexError(f"index out of range for {self.num_images} images")
        return i

    def sample(self, i: int) -> ShapeSample:
        """Item ``i`` as numpy arrays, with the instance map and the list of drawn objects."""
        i = self._index(i)
        rng = np.random.default_rng([self.seed, i])
        return render_shapes(rng, *self.image_size)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        i = self._index(i)
        if self._tensors is not None:
            return self._tensors[0][i], self._tensors[1][i]
        s = self.sample(i)
        image = torch.from_numpy(np.ascontiguousarray(s.image.transpose(2, 0, 1)))
        return image, torch.from_numpy(s.mask.astype(np.int64))

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole dataset stacked: images ``(N, 3, H, W)`` float32, masks ``(N, H, W)`` int64.

        Computed once and cached on the instance (about 200 KB per 128x128 image);
        ``dataset[i]`` then reads from the cache.
        """
        if self._tensors is None:
            h, w = self.image_size
            images = np.empty((self.num_images, 3, h, w), dtype=np.float32)
            masks = np.empty((self.num_images, h, w), dtype=np.int64)
            for i in range(self.num_images):
                s = self.sample(i)
                images[i] = s.image.transpose(2, 0, 1)
                masks[i] = s.mask
            self._tensors = (torch.from_numpy(images), torch.from_numpy(masks))
        return self._tensors


def mixed_size_shapes(num_images: int, sizes: tuple[int, ...], seed: int = 0) -> ConcatDataset:
    """`num_images` split evenly over canvases of several sizes, generated once.

    Training on one size only lets a net tie its features to that one grid of 32-px cells
    (where the zero padding of fc6 falls); mixing 96, 128 and 160 px (3, 4 and 5 cells) keeps
    it honest at sizes it never saw. Batch it with `replicate_pad_collate`.
    """
    if not sizes:
        raise ValueError("sizes must name at least one image size")
    per_size = [num_images // len(sizes) + (k < num_images % len(sizes)) for k in range(len(sizes))]
    return ConcatDataset([TensorDataset(*ShapesDataset(n, s, seed=seed).tensors())
                          for n, s in zip(per_size, sizes, strict=True)])


def replicate_pad_collate(batch):
    """Stack (image, mask) pairs of different sizes: pad bottom/right to the largest, images
    by replicating their border (as the models pad their input), masks with 255 (ignored)."""
    height = max(img.shape[-2] for img, _ in batch)
    width = max(img.shape[-1] for img, _ in batch)
    images, masks = [], []
    for img, mask in batch:
        pad = (0, width - img.shape[-1], 0, height - img.shape[-2])
        images.append(F.pad(img[None], pad, mode="replicate")[0])
        masks.append(F.pad(mask, pad, value=IGNORE_INDEX))
    return torch.stack(images), torch.stack(masks)
