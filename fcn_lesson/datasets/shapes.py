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
from torch.utils.data import ConcatDataset, Dataset, TensorDataset

from fcn_lesson.datasets.common import IGNORE_INDEX

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


class PhotoStyle(NamedTuple):
    """How a "photo-style" image departs from the default look (see ShapesDataset(photo=...))."""

    grey: bool  # the whole image in greyscale (luminance repeated over 3 channels)
    texture: float  # amplitude of photograph-like textures on the background and object fills
    scale: float  # object sizes times this
    objects: int  # how many objects to try to place


def _draw_photo_style(srng: np.random.Generator) -> PhotoStyle:
    return PhotoStyle(grey=bool(srng.random() < 0.6), texture=float(srng.uniform(0.3, 1.0)),
                      scale=float(np.exp(srng.uniform(math.log(0.6), math.log(1.25)))),
                      objects=int(srng.integers(1, 7)))


def _place(rng: np.random.Generator, label: int, h: int, w: int, scale: float,
           instances: np.ndarray, objects: list[dict]):
    """Up to _MAX_TRIES random placements of one `label` shape; the first one that leaves every
    earlier object at least _MIN_VISIBLE of its pixels, or None. Returns its geometry, its
    signed distance field `d` over its bounding box (y0, y1, x0, x1) and what it hides."""
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
        return extent, thick, angle, (cy, cx), (y0, y1, x0, x1), u, d, inside, area, hidden
    return None


def _contrasting_colour(rng: np.random.Generator, refs: list, grey: bool) -> np.ndarray:
    """A random colour, independent of the class, far enough from every colour in `refs` (what
    lies beneath): in luminance for a greyscale image, in RGB otherwise."""
    cands = rng.random((_COLOUR_CANDIDATES, 3)).astype(np.float32)
    if grey:  # contrast in luminance, the only thing left to see
        cands = np.repeat((cands @ _LUMA)[:, None], 3, axis=1)
        dist = np.abs(cands[:, :1] - (np.asarray(refs) @ _LUMA)[None, :]).min(1)
        ok = np.flatnonzero(dist >= 0.2)
    else:
        dist = np.linalg.norm(cands[:, None, :] - np.asarray(refs)[None, :, :], axis=2).min(1)
        ok = np.flatnonzero(dist >= _MIN_CONTRAST)
    return cands[ok[0]] if ok.size else cands[int(dist.argmax())]


def render_shapes(rng: np.random.Generator, height: int, width: int,
                  style: PhotoStyle | None = None,
                  style_rng: np.random.Generator | None = None) -> ShapeSample:
    """Draw one random image of shapes with ``rng``; see the module docstring.

    With a `style` (and its own generator `style_rng`) the image is "photo-style": greyscale
    or colour, photograph-like textures on the background and inside objects, scaled objects,
    more of them. Without one, exactly the default image (``rng`` is used as always)."""
    h, w = int(height), int(width)
    # Smaller images shrink the shapes to fit; larger ones keep the 128-px shapes on a larger
    # canvas, so a model trained at 128 px meets the same objects at any size.
    scale = min(h, w, _REFERENCE_SIDE) / _REFERENCE_SIDE
    background = _background(rng, h, w, scale)
    grey = False
    if style is not None:
        scale *= style.scale
        grey = style.grey
        background += style.texture * _photo_texture(style_rng, h, w)
        if grey:
            background = np.repeat((background @ _LUMA)[:, :, None], 3, axis=2)
    image = background.copy()
    mask = np.zeros((h, w), dtype=np.uint8)
    instances = np.zeros((h, w), dtype=np.int16)
    objects: list[dict] = []

    n_objects = int(rng.integers(_OBJECTS_PER_IMAGE[0], _OBJECTS_PER_IMAGE[1] + 1))
    if style is not None:
        n_objects = style.objects
    for _ in range(n_objects):
        label = int(rng.integers(1, len(CLASSES)))
        placed = _place(rng, label, h, w, scale, instances, objects)
        if placed is None:
            continue  # too crowded: skip this object (never the first one)
        extent, thick, angle, centre, (y0, y1, x0, x1), u, d, inside, area, hidden = placed

        # Colour: random, independent of the class, far enough from what lies beneath.
        refs = [background[y0:y1, x0:x1][inside].mean(axis=0)]
        refs += [objects[j]["colour"] for j in np.flatnonzero(hidden[1:])]
        colour = _contrasting_colour(rng, refs, grey)

        # A gentle shading gradient across the object, then anti-aliased compositing.
        shade = np.float32(rng.uniform(-0.08, 0.08)) * u / np.float32(max(extent / 2, 1.0))
        fill = colour[None, None, :] + shade[:, :, None]
        if style is not None and style_rng.random() < 0.6:
            fill = fill + style.texture * _photo_texture(style_rng, y1 - y0, x1 - x0, grey)
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
    if grey:
        image = np.repeat((image @ _LUMA)[:, :, None], 3, axis=2)
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
        photo: the share of "photo-style" images (default 0: none): greyscale or colour,
            photograph-like textures on background and objects, objects scaled by 0.6-1.25,
            1-6 of them. The other images are exactly those of ``photo=0``. Training with
            some makes the classroom FCNs hold up on real photographs (the coins).

    Item ``i`` is ``(image, mask)``: a float32 tensor ``(3, H, W)`` in ``[0, 1]``, ready
    for the classroom models as it is, and an int64 tensor ``(H, W)`` of labels in
    ``[0, num_classes)`` (indices into :data:`CLASSES`).
    """

    classes: tuple[str, ...] = CLASSES

    def __init__(self, num_images: int, image_size: int | tuple[int, int] = 128, seed: int = 0,
                 photo: float = 0.0):
        if isinstance(num_images, bool) or not isinstance(num_images, (int, np.integer)):
            raise ValueError(f"num_images must be an int, got {num_images!r}")
        if num_images < 0:
            raise ValueError(f"num_images must be >= 0, got {num_images}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        self.num_images = int(num_images)
        self.image_size: tuple[int, int] = _check_size(image_size)
        self.seed = int(seed)
        if not 0.0 <= float(photo) <= 1.0:
            raise ValueError(f"photo must be a share in [0, 1], got {photo!r}")
        self.photo = float(photo)
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
            f"seed={self.seed}" + (f", photo={self.photo}" if self.photo else "") + ")"
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
        if self.photo > 0:  # drawn from a generator of its own: the default images stay as they are
            srng = np.random.default_rng([self.seed, i, 7919])
            if srng.random() < self.photo:
                return render_shapes(rng, *self.image_size, style=_draw_photo_style(srng), style_rng=srng)
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


def mixed_size_shapes(num_images: int, sizes: tuple[int, ...], seed: int = 0,
                      photo: float = 0.0) -> ConcatDataset:
    """`num_images` split evenly over canvases of several sizes, generated once.

    Training on one size only lets a net tie its features to that one grid of 32-px cells
    (where the zero padding of fc6 falls); mixing 96, 128 and 160 px (3, 4 and 5 cells) keeps
    it honest at sizes it never saw. Batch it with `replicate_pad_collate`.
    """
    if not sizes:
        raise ValueError("sizes must name at least one image size")
    per_size = [num_images // len(sizes) + (k < num_images % len(sizes)) for k in range(len(sizes))]
    return ConcatDataset([TensorDataset(*ShapesDataset(n, s, seed=seed, photo=photo).tensors())
                          for n, s in zip(per_size, sizes, strict=True)])

# ---------------------------------------------------------------------------------------
# Image-level labels: the classroom classifier's "ImageNet".

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _photo_texture(rng: np.random.Generator, h: int, w: int, grey: bool = False) -> np.ndarray:
    """A photograph-like texture, (H, W, 3) float32 around 0: smooth noise at several octaves
    (1/f-like amplitudes), sometimes with a strong periodic pattern or coarse pixel grain."""
    channels = 1 if grey else 3
    field = np.zeros((h, w, channels), dtype=np.float32)
    amp = rng.uniform(0.04, 0.14)
    for knots in (3, 6, 12, 24):
        values = rng.normal(0.0, amp, size=(knots, knots, channels)).astype(np.float32)
        field += _smooth_field(_smooth_basis(h, knots), _smooth_basis(w, knots), values)
        amp *= rng.uniform(0.45, 0.8)
    kind = rng.random()
    if kind < 0.25:  # stripes or a checkerboard
        period = rng.uniform(4.0, 24.0)
        phi = rng.uniform(0.0, math.pi)
        ys = np.arange(h, dtype=np.float32)[:, None]
        xs = np.arange(w, dtype=np.float32)[None, :]
        a = np.sin((ys * math.sin(phi) + xs * math.cos(phi)) * (2 * math.pi / period))
        if rng.random() < 0.5:
            a = a * np.sin((ys * math.cos(phi) - xs * math.sin(phi)) * (2 * math.pi / period))
        field += (rng.uniform(0.04, 0.15) * a.astype(np.float32))[:, :, None]
    elif kind < 0.5:  # grain
        field += rng.uniform(0.03, 0.12) * rng.standard_normal((h, w, channels), dtype=np.float32)
    return np.broadcast_to(field, (h, w, 3)).astype(np.float32) if grey else field


def _circumradius(label: int, extent: float, thickness: float) -> float:
    if label in (1, 2):
        return extent / 2
    if label == 3:
        return extent / math.sqrt(2)
    if label == 4:
        return extent / math.sqrt(3)
    return math.hypot(extent / 2, thickness / 2)


def _random_shape(rng: np.random.Generator, label: int, extent: float) -> float:
    """Wall thickness (ring) or width (bar) for a shape of `extent` pixels; NaN otherwise."""
    if label == 2:
        return max(rng.uniform(0.1, 0.3) * extent, 1.5)
    if label == 5:
        return max(rng.uniform(0.05, 0.18) * extent, 2.0)
    return float("nan")


def _composite(image: np.ndarray, rng: np.random.Generator, label: int, extent: float,
               thickness: float, angle: float, centre: tuple[float, float], colour: np.ndarray,
               texture: float, grey: bool) -> None:
    """Draw one anti-aliased shape into `image` in place (clipped to the image)."""
    h, w = image.shape[:2]
    r = _circumradius(label, extent, thickness) + 2
    cy, cx = centre
    y0, y1 = max(int(cy - r), 0), min(int(math.ceil(cy + r)) + 1, h)
    x0, x1 = max(int(cx - r), 0), min(int(math.ceil(cx + r)) + 1, w)
    if y0 >= y1 or x0 >= x1:
        return
    dy = np.arange(y0, y1, dtype=np.float32)[:, None] - np.float32(cy)
    dx = np.arange(x0, x1, dtype=np.float32)[None, :] - np.float32(cx)
    ca, sa = np.float32(math.cos(angle)), np.float32(math.sin(angle))
    u, v = dx * ca + dy * sa, dy * ca - dx * sa
    d = _sdf(label, u, v, extent, thickness)
    shade = np.float32(rng.uniform(-0.12, 0.12)) * u / np.float32(max(extent / 2, 1.0))
    fill = colour[None, None, :] + shade[:, :, None]
    if texture > 0:
        fill = fill + texture * _photo_texture(rng, y1 - y0, x1 - x0, grey)
    alpha = np.clip(0.5 - d, 0.0, 1.0)[:, :, None]
    region = image[y0:y1, x0:x1]
    region += alpha * (fill - region)


def render_classification(rng: np.random.Generator, size: int = 224) -> tuple[np.ndarray, int]:
    """One (image (H, W, 3) float32 in [0, 1], label in 1..5) pair: the label is the class of
    the shape at the centre of the image (within 16 px of it), drawn at any scale from 24 px to
    0.85 of the image; 0-4 smaller distractors lie off-centre, some cut by the border. A third
    of the images are greyscale; backgrounds and object fills are often photograph-like."""
    h = w = int(size)
    grey = rng.random() < 0.35
    if rng.random() < 0.4:
        image = _background(rng, h, w, 1.0)
    else:
        image = rng.uniform(0.1, 0.9, size=3).astype(np.float32) + np.zeros((h, w, 3), np.float32)
    if rng.random() < 0.7:
        image += _photo_texture(rng, h, w, grey=False)
    if grey:
        image[:] = (image @ _LUMA)[:, :, None]

    def pick_colour(under: np.ndarray) -> np.ndarray:
        cands = rng.random((_COLOUR_CANDIDATES, 3)).astype(np.float32)
        if grey:
            cands = np.repeat((cands @ _LUMA)[:, None], 3, axis=1)
            dist = np.abs(cands[:, 0] - float(under @ _LUMA))
            ok = np.flatnonzero(dist >= 0.2)
        else:
            dist = np.linalg.norm(cands - under[None], axis=1)
            ok = np.flatnonzero(dist >= _MIN_CONTRAST)
        return cands[ok[0]] if ok.size else cands[int(dist.argmax())]

    label = int(rng.integers(1, len(CLASSES)))
    extent = float(np.exp(rng.uniform(math.log(24.0), math.log(0.85 * size))))
    thick = _random_shape(rng, label, extent)
    centre = (h / 2 - 0.5 + rng.uniform(-16, 16), w / 2 - 0.5 + rng.uniform(-16, 16))
    radius = _circumradius(label, extent, thick)
    shapes = [(label, extent, thick, centre)]
    for _ in range(int(rng.integers(0, 5))):
        lab = int(rng.integers(1, len(CLASSES)))
        ext = float(np.exp(rng.uniform(math.log(16.0), math.log(0.5 * size))))
        th = _random_shape(rng, lab, ext)
        rad = _circumradius(lab, ext, th)
        for _attempt in range(8):
            c = (rng.uniform(-0.2, 1.2) * h, rng.uniform(-0.2, 1.2) * w)
            if math.hypot(c[0] - centre[0], c[1] - centre[1]) > radius + rad + 3 and \
                    all(math.hypot(c[0] - s[3][0], c[1] - s[3][1]) > 0.5 * rad for s in shapes):
                shapes.append((lab, ext, th, c))
                break
    for lab, ext, th, c in shapes[1:] + shapes[:1]:  # the centre object last, unoccluded
        cy, cx = int(min(max(c[0], 0), h - 1)), int(min(max(c[1], 0), w - 1))
        colour = pick_colour(image[cy, cx])
        texture = rng.uniform(0.3, 1.0) if rng.random() < 0.5 else 0.0
        _composite(image, rng, lab, ext, th, rng.uniform(0, 2 * math.pi), c, colour, texture, grey)
    image += np.float32(rng.uniform(0.01, 0.05)) * rng.standard_normal((h, w, 1 if grey else 3),
                                                                       dtype=np.float32)
    np.clip(image, 0.0, 1.0, out=image)
    return image, label


class ShapesClassification(Dataset):
    """Image-level labels only: item ``i`` is ``(image (3, S, S) float32 in [0, 1], label)``,
    label = the shape at the centre of the image, an index into :attr:`classes` (disk, ring,
    square, triangle, bar). Rendered on demand, deterministically from ``(seed, i, size)``.

    What makes the features worth transferring: shapes from 24 px to 85 % of the image,
    colour and greyscale images, flat, graded and photograph-like textures on backgrounds
    and objects, and off-centre distractors (which the label ignores).
    """

    classes: tuple[str, ...] = CLASSES[1:]

    def __init__(self, num_images: int, image_size: int = 224, seed: int = 0):
        if isinstance(num_images, bool) or not isinstance(num_images, (int, np.integer)) or num_images < 0:
            raise ValueError(f"num_images must be a non-negative int, got {num_images!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        self.num_images, self.image_size, self.seed = int(num_images), _check_size(image_size)[0], int(seed)

    def __len__(self) -> int:
        return self.num_images

    def __repr__(self) -> str:
        return (f"ShapesClassification(num_images={self.num_images}, image_size={self.image_size}, "
                f"seed={self.seed})")

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"index must be an int, got {type(i).__name__}")
        i = int(i) + (self.num_images if i < 0 else 0)
        if not 0 <= i < self.num_images:
            raise IndexError(f"index out of range for {self.num_images} images")
        image, label = render_classification(np.random.default_rng([self.seed, i, self.image_size]),
                                             self.image_size)
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))), label - 1
