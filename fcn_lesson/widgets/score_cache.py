"""The backbone's part of every image an explorer of a trained net can show, made before any move.

The fusion and pixel explorers redraw from a few small score maps per image (`score_fr`, and
`score_pool4`, `score_pool3` where the net has those skips): `model.fuse` and
`explain_from_maps` redo everything after the backbone in about a millisecond. Only the backbone
is slow, tens of milliseconds an image on a CPU, so `ScoreMapCache` runs it on the whole dataset
when the explorer is built, in batches: after that no control move waits for it.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from fcn_lesson.core.models import FCN
from fcn_lesson.engine.device import eval_mode
from fcn_lesson.lessons.explain import STREAMS

__all__ = ["BATCH_SIZE", "UP_FRONT_LIMIT", "ScoreMapCache"]

#: datasets up to this many images are run when the cache is made; larger ones image by image
UP_FRONT_LIMIT = 512
#: images per forward pass: on a CPU a batch of 32 costs about half as much as its images one by one
BATCH_SIZE = 32


def _batches_of_one_size(dataset, batch_size: int):
    """(indices, images (B, 3, H, W)) for the whole dataset in order, at most `batch_size`
    images a batch, all of one size (a batch is one tensor)."""
    indices, images = [], []
    for index in range(len(dataset)):
        image = dataset[index][0]
        if images and (len(images) == batch_size or image.shape != images[0].shape):
            yield indices, torch.stack(images)
            indices, images = [], []
        indices.append(index)
        images.append(image)
    if images:
        yield indices, torch.stack(images)


class ScoreMapCache:
    """`cache[i]`: the score maps {stream: (1, C, h, w)} of image i of `dataset` under `model`,
    on the model's device, in eval mode. `dataset[i]` must give (image (3, H, W), ...).

    A dataset of up to `up_front_limit` images is run when the cache is made, `batch_size`
    images of one size per forward pass (the result equals the image-by-image one up to float
    rounding, ~1e-6: the nets pad each image to a multiple of 32 and BatchNorm in eval mode
    treats every image alone). The maps are small: about 8 KB a 128 x 128 image for an FCN-8s,
    2 KB for an FCN-16s. A larger dataset would make the explorer slow to build and the maps
    large, so its images are run one by one on first use instead, and the last `cache_size` kept.
    """

    def __init__(self, model: FCN, dataset, *, up_front_limit: int = UP_FRONT_LIMIT,
                 batch_size: int = BATCH_SIZE, cache_size: int = 8):
        self.model, self.dataset = model, dataset
        self.streams = STREAMS[:model.skips + 1]
        self.up_front = len(dataset) <= up_front_limit
        self._device = next(model.parameters()).device
        self._maps: dict[int, dict[str, torch.Tensor]] = {}
        if self.up_front:
            for indices, images in _batches_of_one_size(dataset, batch_size):
                maps = self._run(images)
                for k, index in enumerate(indices):
                    self._maps[index] = {s: m[k:k + 1] for s, m in maps.items()}
        else:
            self._one = lru_cache(maxsize=cache_size)(lambda index: self._run(dataset[index][0][None]))

    @torch.no_grad()
    def _run(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        with eval_mode(self.model):
            maps = self.model.forward_maps(images.to(self._device))
        return {s: maps[s] for s in self.streams}

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self._maps[index] if self.up_front else self._one(index)

    @property
    def nbytes(self) -> int:
        """The memory the maps made up front take (0 for a dataset served image by image)."""
        return sum(m.element_size() * m.nelement() for maps in self._maps.values() for m in maps.values())
