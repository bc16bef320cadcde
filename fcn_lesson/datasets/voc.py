"""PASCAL VOC segmentation: classes, palette, dataset, joint transforms, safe download.

The real FCN is trained and evaluated on PASCAL VOC. This module wraps
``torchvision.datasets.VOCSegmentation`` so that

* the ground-truth PNGs (palette images) are decoded to *class indices*, with 255 kept as the
  "void / ignore" label drawn around every object outline;
* image and mask go through the same random geometry (``torchvision.transforms.v2`` with
  ``tv_tensors.Image`` / ``tv_tensors.Mask``: the mask is always resized with nearest-neighbour
  and padded with 255, so no new labels are ever invented);
* a missing or half-unpacked dataset gives one readable message (what is missing, the layout
  expected, how to get it) instead of a traceback from deep inside torchvision;
* archives are unpacked without letting a member escape the target folder.

Nothing here touches the network unless ``download=True`` is asked for explicitly.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
import torchvision
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from fcn_lesson.core.backbone import IMAGENET_MEAN, IMAGENET_STD
from fcn_lesson.datasets.common import IGNORE_INDEX, pad_collate
from fcn_lesson.datasets.voc_files import check_voc_root, download_voc

__all__ = [
    "IGNORE_INDEX",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "VOC_CLASSES",
    "VOC_PALETTE",
    "VOCSegmentation",
    "RandomScale",
    "decode_mask",
    "denormalize",
    "eval_transforms",
    "fake_voc_tree",
    "mask_to_pil",
    "pad_collate",
    "train_transforms",
]

# --------------------------------------------------------------------------------------------
# Classes, palette, normalisation
# --------------------------------------------------------------------------------------------

VOC_CLASSES: tuple[str, ...] = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)

#: Label of "void" pixels (object outlines, difficult regions): excluded from loss and metrics.


def _voc_palette(n: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map (``VOCdevkit/VOCcode/labelcolormap.m``).

    The bits of the class index are dealt out in turn to R, G and B, most significant first:
    bit 0 of the index goes to bit 7 of R, bit 1 to bit 7 of G, bit 2 to bit 7 of B, bit 3 to
    bit 6 of R, and so on. Neighbouring labels therefore get very different colours.
    """
    cmap = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        cmap[i] = (r, g, b)
    return cmap


#: (256, 3) uint8: row k is the colour of label k; row 255 (void) is (224, 224, 192).
VOC_PALETTE: np.ndarray = _voc_palette()
VOC_PALETTE.setflags(write=False)

def denormalize(image: torch.Tensor) -> torch.Tensor:
    """Undo ImageNet normalisation: ``(3, H, W)`` or ``(N, 3, H, W)`` -> values in [0, 1]."""
    image = torch.as_tensor(image).as_subclass(torch.Tensor).float()
    shape = (3, 1, 1) if image.dim() == 3 else (1, 3, 1, 1)
    mean = torch.tensor(IMAGENET_MEAN, device=image.device).view(shape)
    std = torch.tensor(IMAGENET_STD, device=image.device).view(shape)
    return (image * std + mean).clamp(0.0, 1.0)


# --------------------------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------------------------


def decode_mask(mask: PIL.Image.Image) -> np.ndarray:
    """A VOC ground-truth PNG -> ``(H, W)`` uint8 array of class indices (255 = ignore).

    VOC masks are palette ('P') images: each pixel already stores its class index and the palette
    only says how to draw it, so the decoding is reading the indices, not matching colours.
    Grey ('L') images are read the same way. An RGB mask (someone re-saved the PNG) is mapped
    back through ``VOC_PALETTE``; a colour that is not in the palette is an error.
    """
    if mask.mode in ("P", "L"):
        return np.array(mask, dtype=np.uint8)
    if mask.mode in ("RGB", "RGBA"):
        rgb = np.asarray(mask.convert("RGB"), dtype=np.int64)
        code = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
        pal = VOC_PALETTE.astype(np.int64)
        pal_code = (pal[:, 0] << 16) | (pal[:, 1] << 8) | pal[:, 2]
        lut = {int(c): k for k, c in enumerate(pal_code)}
        uniq, inverse = np.unique(code, return_inverse=True)
        unknown = [hex(int(u)) for u in uniq if int(u) not in lut]
        if unknown:
            raise ValueError(
                f"RGB mask has colours that are not VOC palette entries: {unknown[:5]}"
            )
        labels = np.array([lut[int(u)] for u in uniq], dtype=np.uint8)
        return labels[inverse].reshape(code.shape)
    raise ValueError(f"cannot decode a mask of PIL mode {mask.mode!r} (expected 'P', 'L' or 'RGB')")


def mask_to_pil(mask: np.ndarray | torch.Tensor) -> PIL.Image.Image:
    """``(H, W)`` class indices -> a VOC-style palette PNG image (what ``decode_mask`` reads)."""
    arr = np.ascontiguousarray(torch.as_tensor(mask).cpu(), dtype=np.uint8)
    if arr.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {arr.shape}")
    img = PIL.Image.frombytes("P", (arr.shape[1], arr.shape[0]), arr.tobytes())
    img.putpalette(VOC_PALETTE.reshape(-1).tolist())
    return img


# --------------------------------------------------------------------------------------------
# Joint transforms (torchvision.transforms.v2 + tv_tensors)
# --------------------------------------------------------------------------------------------


def _spatial_size(flat_inputs: Sequence[Any]) -> tuple[int, int]:
    sizes = {
        tuple(F.get_size(x))
        for x in flat_inputs
        if isinstance(x, PIL.Image.Image) or (isinstance(x, torch.Tensor) and x.dim() >= 2)
    }
    if len(sizes) != 1:
        raise ValueError(f"image and mask must have the same height and width, got {sorted(sizes)}")
    (h, w) = sizes.pop()
    return h, w


class RandomScale(v2.Transform):
    """Resize image and mask together by one random factor drawn uniformly from ``scale_range``.

    The image uses ``interpolation`` (bilinear by default); a ``tv_tensors.Mask`` is always
    resized with nearest-neighbour by torchvision, so labels are copied, never blended.
    """

    def __init__(
        self,
        scale_range: tuple[float, float] = (0.5, 2.0),
        interpolation: F.InterpolationMode = F.InterpolationMode.BILINEAR,
        antialias: bool = True,
    ) -> None:
        super().__init__()
        lo, hi = float(scale_range[0]), float(scale_range[1])
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range must satisfy 0 < low <= high, got {scale_range}")
        self.scale_range = (lo, hi)
        self.interpolation = interpolation
        self.antialias = antialias

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = _spatial_size(flat_inputs)
        lo, hi = self.scale_range
        s = float(torch.empty(()).uniform_(lo, hi)) if hi > lo else lo
        return {"size": [max(1, round(h * s)), max(1, round(w * s))]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return F.resize(
            inpt, size=params["size"], interpolation=self.interpolation, antialias=self.antialias
        )

    # torchvision < 0.21 called these hooks `_get_params` / `_transform`.
    _get_params = make_params
    _transform = transform


def _to_float_and_normalize() -> list[v2.Transform]:
    return [
        # Only the image is scaled to [0, 1]; the mask keeps its integer labels.
        v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64}, scale=True),
        v2.Normalize(mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD)),  # touches images only
    ]


def train_transforms(
    crop_size: int | tuple[int, int] = 320,
    scale_range: tuple[float, float] = (0.5, 2.0),
    hflip: float = 0.5,
    interpolation: F.InterpolationMode = F.InterpolationMode.BILINEAR,
) -> v2.Compose:
    """Random scale -> pad to at least ``crop_size`` -> random crop -> random h-flip -> normalise.

    Call it as ``image, mask = t(tv_tensors.Image(uint8 (3,H,W)), tv_tensors.Mask(int (H,W)))``.
    Padding uses 0 for the image and ``IGNORE_INDEX`` (255) for the mask, so padded pixels never
    count in the loss. ``interpolation`` only applies to the image (masks are always nearest).
    """
    return v2.Compose(
        [
            RandomScale(scale_range, interpolation=interpolation),
            v2.RandomCrop(
                crop_size,
                pad_if_needed=True,
                fill={tv_tensors.Image: 0, tv_tensors.Mask: IGNORE_INDEX},
            ),
            v2.RandomHorizontalFlip(p=hflip),
            *_to_float_and_normalize(),
        ]
    )


def eval_transforms() -> v2.Compose:
    """No geometric change (FCN predicts at any size): image to float + normalise, mask to int64."""
    return v2.Compose(_to_float_and_normalize())


# --------------------------------------------------------------------------------------------
# The dataset
# --------------------------------------------------------------------------------------------


class VOCSegmentation(torchvision.datasets.VOCSegmentation):
    """PASCAL VOC semantic segmentation as ``(image, mask)`` tensors.

    ``image`` is ``(3, H, W)`` float32 normalised with ``IMAGENET_MEAN`` / ``IMAGENET_STD``;
    ``mask`` is ``(H, W)`` int64 holding class indices 0..20 and ``IGNORE_INDEX`` (255).

    ``transforms`` is a joint transform called as ``transforms(tv_tensors.Image(uint8),
    tv_tensors.Mask(int64))`` (default :func:`eval_transforms`); use :func:`train_transforms`
    for training. ``root`` is the folder that contains ``VOCdevkit``. With ``download=False``
    (the default) a missing or incomplete folder raises :class:`VOCNotFoundError` explaining
    what to do; ``download=True`` fetches the archive (checksum verified) and unpacks it safely.

    ``seed``: draw each item's random augmentation from ``(seed, epoch, index)`` (see
    :meth:`set_epoch`) instead of the global random stream, so that it is reproducible across
    data-loader workers, processes and interrupted runs. ``num_images``: use only the first
    ``num_images`` of the split.
    """

    classes = VOC_CLASSES
    palette = VOC_PALETTE

    def __init__(
        self,
        root: str | os.PathLike,
        year: str = "2012",
        image_set: str = "train",
        download: bool = False,
        transforms: Callable | None = None,
        seed: int | None = None,
        num_images: int | None = None,
    ) -> None:
        year = str(year)
        if num_images is not None and num_images < 1:
            raise ValueError(f"num_images must be >= 1 (or None for the whole split), got {num_images}")
        if download:
            download_voc(root, year)
        check_voc_root(root, year, image_set)
        super().__init__(
            os.fspath(root),
            year=year,
            image_set=image_set,
            download=False,
            transforms=transforms if transforms is not None else eval_transforms(),
        )
        if num_images is not None:  # the first images of the split, for quick runs
            self.images, self.targets = self.images[:num_images], self.targets[:num_images]
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        """With a ``seed``, item ``i`` of epoch ``e`` is augmented with random numbers drawn from
        ``(seed, e, i)`` alone (``fcn_lesson.engine.loop.fit`` calls this every epoch)."""
        self.epoch = int(epoch)

    def load(self, index: int) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        """The untransformed pair: ``Image`` uint8 ``(3, H, W)`` and ``Mask`` int64 ``(H, W)``."""
        with PIL.Image.open(self.images[index]) as im:
            image = F.pil_to_tensor(im.convert("RGB"))
        with PIL.Image.open(self.masks[index]) as m:
            mask = torch.from_numpy(decode_mask(m)).to(torch.int64)
        return tv_tensors.Image(image), tv_tensors.Mask(mask)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.load(index)
        if self.seed is None:
            image, mask = self.transforms(image, mask)
        else:
            # The crop of an image then does not depend on which process or data-loader worker
            # loads it, nor on what was loaded before: a run resumed mid-epoch, or split over
            # several processes, sees exactly the crops of the uninterrupted single-process run.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(_item_seed(self.seed, self.epoch, index))
                image, mask = self.transforms(image, mask)
        return image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor)


def _item_seed(seed: int, epoch: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


# --------------------------------------------------------------------------------------------
# A tiny VOC-shaped folder for tests and offline demos
# --------------------------------------------------------------------------------------------


def fake_voc_tree(
    root: str | os.PathLike,
    num_images: int = 4,
    size: tuple[int, int] = (60, 80),
    seed: int = 0,
) -> Path:
    """Write a tiny VOC-2012-shaped dataset under ``root`` and return ``root``.

    ``root`` is what ``VOCSegmentation(root)`` takes (the folder that contains ``VOCdevkit``).
    Each ``(H, W) = size`` image is a noisy background with two or three filled rectangles or
    ellipses of random VOC classes; the palette PNG mask marks them with their class, outlined
    by a 2-pixel ``IGNORE_INDEX`` border as in real VOC annotations. Splits: ``train.txt`` (the
    first half, rounded up), ``val.txt`` (the rest) and ``trainval.txt``. Deterministic in ``seed``.
    """
    from PIL import ImageDraw

    if num_images < 1:
        raise ValueError("num_images must be >= 1")
    h, w = int(size[0]), int(size[1])
    if h < 16 or w < 16:
        raise ValueError("size must be at least 16x16")
    root = Path(root)
    voc = root / "VOCdevkit" / "VOC2012"
    jpeg_dir, mask_dir = voc / "JPEGImages", voc / "SegmentationClass"
    split_dir = voc / "ImageSets" / "Segmentation"
    for d in (jpeg_dir, mask_dir, split_dir):
        d.mkdir(parents=True, exist_ok=True)

    rng = np.random.default_rng(seed)
    ids = [f"2012_{i:06d}" for i in range(num_images)]
    for name in ids:
        image = PIL.Image.fromarray(rng.integers(60, 140, size=(h, w, 3), dtype=np.uint8))
        labels = PIL.Image.new("L", (w, h), 0)
        outline = PIL.Image.new("L", (w, h), 0)
        draw_img, draw_lab, draw_out = (ImageDraw.Draw(x) for x in (image, labels, outline))
        for _ in range(int(rng.integers(2, 4))):
            cls = int(rng.integers(1, len(VOC_CLASSES)))
            bw, bh = int(rng.integers(w // 5, w // 2)), int(rng.integers(h // 5, h // 2))
            x0, y0 = int(rng.integers(2, w - bw - 2)), int(rng.integers(2, h - bh - 2))
            box = (x0, y0, x0 + bw, y0 + bh)
            colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
            kind = "ellipse" if rng.random() < 0.5 else "rectangle"
            getattr(draw_img, kind)(box, fill=colour)
            getattr(draw_lab, kind)(box, fill=cls)
            getattr(draw_out, kind)(box, outline=255, width=2)
        mask = np.array(labels, dtype=np.uint8)
        mask[np.array(outline) == 255] = IGNORE_INDEX
        image.save(jpeg_dir / f"{name}.jpg", quality=95)
        mask_to_pil(mask).save(mask_dir / f"{name}.png")

    n_train = (num_images + 1) // 2
    splits = {"train": ids[:n_train], "val": ids[n_train:] or ids[-1:], "trainval": ids}
    for split, names in splits.items():
        (split_dir / f"{split}.txt").write_text("".join(f"{n}\n" for n in names))
    return root
