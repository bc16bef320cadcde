"""The textbook FCN forward pass, kept here ON PURPOSE WRONG, as a reference to compare against.

Many FCN tutorials run VGG16 on the raw image, upsample with stride-32 (or 2) transposed
convolutions and add the skips without cropping. When a side is not a multiple of 32 that
code is wrong in two ways, and this module reproduces both with any trained `FCN`'s own
layers (so the only difference from `FCN.forward` is the geometry):

* FCN-32s silently returns a smaller map: five floor-poolings keep floor(H / 32) rows, the
  32x upsampling gives 32 floor(H / 32) rows, so a 375x500 image gets a 352x480 prediction,
  with the bottom 23 rows and right 20 columns never predicted.
* FCN-16s/8s crash: pool4 keeps floor(H / 16) rows, the 2x-upsampled pool5 scores have
  2 floor(H / 32); they differ whenever H mod 32 >= 16 (375 = 11 x 32 + 23), and adding them
  raises a size-mismatch RuntimeError. FCN-8s meets the same at pool3 when H mod 16 >= 8.
  (When the sizes happen to agree, the output still has 32 floor(H / 32) rows: the crash is
  gone, the missing rows are not.)

`FCN.forward` avoids both by padding the input to a multiple of 32 and cropping the output
back (see models.py). Do not use this module for predictions; it exists for the lesson
and for benchmarks that compare against the naive code.
"""

import torch

from fcn_lesson.core.models import FCN, check_images


def naive_fcn32s_output_size(height: int, width: int) -> tuple[int, int]:
    """The output size of the textbook FCN-32s on a (height, width) image: 32 floor(n / 32)
    per side (five floor-poolings, then x32). Inputs under 32 pixels leave nothing."""
    for name, n in (("height", height), ("width", width)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"{name} must be an int >= 1, got {n!r}")
        if n < 32:
            raise ValueError(f"{name} {n} < 32: five poolings leave no cell, the naive net "
                             "has no output at all")
    return 32 * (height // 32), 32 * (width // 32)


@torch.no_grad()
def naive_forward(model: FCN, x: torch.Tensor) -> torch.Tensor:
    """`model`'s layers run the textbook way: no padding to a multiple of 32, no crop.

    Returns logits of size naive_fcn32s_output_size(H, W) for an FCN-32s; raises the
    textbook's RuntimeError (tensor sizes must match) in the skip fusion of an FCN-16s/8s
    when pool4 or pool3 has one row or column more than the upsampled coarser scores.
    """
    check_images(x)
    features = model.backbone(x)
    score = model.score_fr(features["fc7"])
    if model.skips >= 1:
        score = model.upscore2(score) + model.score_pool4(features["pool4"])
    if model.skips >= 2:
        score = model.upscore_pool4(score) + model.score_pool3(features["pool3"])
    return model.upscore_final(score)
