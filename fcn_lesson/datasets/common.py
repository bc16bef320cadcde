"""What every dataset here shares: the ignore label and batching images of different sizes."""

from collections.abc import Sequence

import torch
import torch.nn.functional as F

# Pixels with this label count in no loss and no metric (VOC's "void" outlines, padding).
IGNORE_INDEX: int = 255


def pad_collate(batch: Sequence[tuple[torch.Tensor, torch.Tensor]],
                image_padding: str = "zeros") -> tuple[torch.Tensor, torch.Tensor]:
    """Stack ``(image (C, H, W), mask (H, W))`` items of different sizes into one batch.

    Every item is placed at the top left of a canvas as large as the largest H and W in the
    batch. The mask is padded with ``IGNORE_INDEX``, so padding never counts; the image with 0
    (``image_padding="zeros"``: a normalised image's mean colour) or by repeating its border
    (``"replicate"``: as the FCN models pad their own input). Returns plain tensors
    ``(N, C, Hmax, Wmax)`` float and ``(N, Hmax, Wmax)`` int64.
    """
    if len(batch) == 0:
        raise ValueError("pad_collate got an empty batch")
    if image_padding not in ("zeros", "replicate"):
        raise ValueError(f"image_padding must be 'zeros' or 'replicate', got {image_padding!r}")
    images = [torch.as_tensor(img).as_subclass(torch.Tensor) for img, _ in batch]
    masks = [torch.as_tensor(m).as_subclass(torch.Tensor) for _, m in batch]
    for img, m in zip(images, masks, strict=True):
        if img.dim() != 3 or m.dim() != 2 or img.shape[-2:] != m.shape:
            raise ValueError(f"expected image (C,H,W) and mask (H,W) of equal size, got "
                             f"{tuple(img.shape)} and {tuple(m.shape)}")
    height = max(img.shape[-2] for img in images)
    width = max(img.shape[-1] for img in images)
    out_images, out_masks = [], []
    for img, m in zip(images, masks, strict=True):
        pad = (0, width - img.shape[-1], 0, height - img.shape[-2])  # right, bottom
        if image_padding == "replicate":
            out_images.append(F.pad(img[None], pad, mode="replicate")[0])
        else:
            out_images.append(F.pad(img, pad, value=0.0))
        out_masks.append(F.pad(m.long(), pad, value=IGNORE_INDEX))
    return torch.stack(out_images), torch.stack(out_masks)


def replicate_pad_collate(batch: Sequence[tuple[torch.Tensor, torch.Tensor]]):
    """`pad_collate` with images padded by repeating their border (the classroom shapes)."""
    return pad_collate(batch, image_padding="replicate")
