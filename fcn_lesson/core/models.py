"""FCN-32s, FCN-16s and FCN-8s (Long, Shelhamer & Darrell, CVPR 2015) on one shared base.

    image (N,3,H,W) --pad to a multiple of 32-->  VGG16 backbone
        pool3 (stride 8) ------------------------------> score_pool3 --+            (FCN-8s)
        pool4 (stride 16) ------------> score_pool4 --+                 |            (FCN-16s, 8s)
        fc7  (stride 32) -> score_fr -> upscore2 ----(+) fuse_pool4 -> upscore_pool4 (+) fuse_pool3
                                                       |                              |
        upscore (x32, FCN-32s)  /  upscore16 (x16, FCN-16s)  /  upscore8 (x8, FCN-8s)
        -> crop back to (H, W)

The final upsampling is fixed bilinear, as in the paper's experiments (Sec. 4.3) and its reference
code; `learn_final_upsampling=True` learns it too, starting from bilinear, which the paper allows
("need not be fixed ... but can be learned", Sec. 3.3). The classroom FCN-8s is trained that way.

Geometry: the input is padded (replicating its border) to a multiple of 32, pooling floors,
fc6 has padding 3 and every upsampler has kernel 2s, stride s, padding s/2. Then each stage
is exactly 1/stride of the padded image, every score map cell is centred over the pixels it
was computed from, and the fusions add maps of equal size. The output is cropped back to
(H, W), so any H, W >= 1 works. (The paper instead pads conv1_1 by 100 and crops with
offsets 19; 5, 27; 5, 9, 31. Both are exact; this way needs no offsets.)
"""

import torch
import torch.nn.functional as F
from torch import nn

from fcn_lesson.core.backbone import VGG16Backbone, imagenet_vgg16
from fcn_lesson.core.upsample import BilinearUpsample

# The names of `forward_maps`' outputs, in the order they are computed.
SCORE_MAPS = ("score_fr", "upscore2", "score_pool4", "fuse_pool4",
              "upscore_pool4", "score_pool3", "fuse_pool3", "out")


def check_images(x: torch.Tensor) -> None:
    """Raise a clear error unless x is a non-empty float batch (N, 3, H, W)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor of images, got {type(x).__name__}")
    if x.dim() != 4:
        hint = " (a single image? use x.unsqueeze(0))" if x.dim() == 3 else ""
        raise ValueError(f"expected a 4-D batch (N, 3, H, W), got shape {tuple(x.shape)}{hint}")
    if x.shape[1] != 3:
        raise ValueError(f"expected 3 colour channels (N, 3, H, W), got {x.shape[1]} in shape "
                         f"{tuple(x.shape)}; convert grey or RGBA images to RGB first")
    if 0 in x.shape:
        raise ValueError(f"empty image batch: shape {tuple(x.shape)} (N, H and W must be >= 1)")
    if not x.is_floating_point():
        raise TypeError(f"expected a float image tensor, got {x.dtype}; e.g. x.float() / 255")


def _zero_conv(in_channels: int, out_channels: int) -> nn.Conv2d:
    # Score layers start at zero: a new skip adds nothing until training finds it useful,
    # so a net initialised from a coarser one starts out computing the coarser one.
    conv = nn.Conv2d(in_channels, out_channels, 1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class FCN(nn.Module):
    """The shared base. `skips` = 0 (FCN-32s), 1 (+pool4, FCN-16s) or 2 (+pool3, FCN-8s)."""

    skips = 0
    variant = "fcn"

    def __init__(self, num_classes: int = 21, width: float = 1.0, dropout: float = 0.5,
                 batch_norm: bool = False, learn_final_upsampling: bool = False):
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        self.num_classes, self.width, self.batch_norm = num_classes, width, batch_norm
        self.learn_final_upsampling = bool(learn_final_upsampling)
        self.backbone = VGG16Backbone(width, dropout, batch_norm)
        ch = self.backbone.channels
        self.score_fr = _zero_conv(ch["fc7"], num_classes)
        if self.skips >= 1:
            self.upscore2 = BilinearUpsample(num_classes, 2, learnable=True)
            self.score_pool4 = _zero_conv(ch["pool4"], num_classes)
        if self.skips >= 2:
            self.upscore_pool4 = BilinearUpsample(num_classes, 2, learnable=True)
            self.score_pool3 = _zero_conv(ch["pool3"], num_classes)
        self.output_stride = 32 >> self.skips
        # Fixed bilinear as in the reference implementation, or learned from bilinear: a full
        # (classes x classes) weight like upscore2's, which may reshape the interpolation between
        # score cells and mix classes (data/README.md measures what the classroom FCN-8s gains).
        self.upscore_final = BilinearUpsample(num_classes, self.output_stride,
                                              learnable=self.learn_final_upsampling)
        # Weights stored channels-last make every convolution run channels-last (oneDNN on CPU,
        # tensor cores on GPU): 1.3x faster training and 1.8x faster inference on a 2-core CPU
        # at classroom width, same results to float rounding. `python -m fcn_lesson bench`.
        # Learnable weights only: the fixed (C, 1, k, k) kernel in channels-last strides has two
        # stride-1 dimensions, which DistributedDataParallel's buffer broadcast rejects.
        for weight in self.parameters():
            if weight.dim() == 4:
                weight.data = weight.data.contiguous(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> class logits (N, num_classes, H, W)."""
        return self.forward_maps(x)["out"]

    def forward_maps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """One forward pass, returning every named score map (see SCORE_MAPS) and `out`.
        Maps other than `out` cover the padded image."""
        check_images(x)
        height, width = x.shape[-2:]
        features = self.backbone(pad_to_multiple(x, 32))
        maps = {"score_fr": self.score_fr(features["fc7"])}  # stride 32
        return self.fuse(maps, features, height, width)

    def fuse(self, maps: dict[str, torch.Tensor], features: dict[str, torch.Tensor] | None,
             height: int, width: int, pool4_gain: float = 1.0,
             pool3_gain: float = 1.0) -> dict[str, torch.Tensor]:
        """The skip fusion, from `score_fr` (and the skip scores, or the features to score).

        Split out of `forward_maps` so that the skip ablation and the fusion explorer can
        re-fuse cached score maps with the skips scaled by a gain (0 switches one off, 1 is the
        trained network) without running the backbone again.
        """
        maps = dict(maps)
        score = maps["score_fr"]
        if self.skips >= 1:
            if "score_pool4" not in maps:
                maps["score_pool4"] = self.score_pool4(features["pool4"])  # stride 16
            maps["upscore2"] = self.upscore2(score)
            score = maps["fuse_pool4"] = maps["upscore2"] + pool4_gain * maps["score_pool4"]
        if self.skips >= 2:
            if "score_pool3" not in maps:
                maps["score_pool3"] = self.score_pool3(features["pool3"])  # stride 8
            maps["upscore_pool4"] = self.upscore_pool4(score)
            score = maps["fuse_pool3"] = maps["upscore_pool4"] + pool3_gain * maps["score_pool3"]
        maps["out"] = self.upscore_final(score)[..., :height, :width]
        return maps

    @property
    def last_score_layer(self) -> nn.Conv2d:
        """The score layer added last before the final upsampling: `score_fr`, `score_pool4` or
        `score_pool3`."""
        return getattr(self, ("score_fr", "score_pool4", "score_pool3")[self.skips])

    @torch.no_grad()
    def shift_class_scores(self, shift: torch.Tensor) -> "FCN":
        """Add `shift[c]` to class c's scores, folded into the bias of `last_score_layer`, so
        the net itself makes the shifted scores. The fixed bilinear upsampling after that layer
        passes a constant on unchanged except within half a stride of the (padded) image's
        border, where its zero padding weighs it less; a learned one passes on what its kernel
        makes of it (it may mix classes). `fcn_lesson.engine.calibrate.tune_class_shift`
        measures that response and chooses the shift."""
        shift = torch.as_tensor(shift, dtype=torch.float32)
        if shift.shape != (self.num_classes,):
            raise ValueError(f"shift needs one value per class, shape ({self.num_classes},), "
                             f"got {tuple(shift.shape)}")
        bias = self.last_score_layer.bias
        bias += shift.to(bias)
        return self

    @torch.no_grad()
    def init_from(self, coarser: "FCN") -> "FCN":
        """Stage-wise initialisation (paper, Sec. 4.2): copy every layer `coarser` shares with
        this net (backbone, score_fr, and upscore2 / score_pool4 going 16s -> 8s); the new
        skip's score layer stays zero, so at first this net predicts what `coarser` does.
        `coarser` may also be the same variant, to train a net further: then everything is
        copied, except a fixed final upsampling into a learned one, which starts bilinear."""
        mine = (self.num_classes, self.width, self.batch_norm)
        if (coarser.num_classes, coarser.width, coarser.batch_norm) != mine:
            raise ValueError(
                f"cannot initialise a {self.variant} (num_classes={self.num_classes}, width="
                f"{self.width}, batch_norm={self.batch_norm}) from a {coarser.variant} with "
                f"num_classes={coarser.num_classes}, width={coarser.width}, "
                f"batch_norm={coarser.batch_norm}")
        if coarser.skips > self.skips:
            raise ValueError(f"{self.variant} is initialised from a coarser net (or another "
                             f"{self.variant}), not {coarser.variant}")
        own = self.state_dict()
        # A coarser net's final upsampling has another factor, a fixed one another shape than
        # a learned one: only tensors of the same name and shape are shared.
        shared = {k: v for k, v in coarser.state_dict().items() if k in own and v.shape == own[k].shape}
        own.update(shared)
        self.load_state_dict(own)
        return self

    @torch.no_grad()
    def init_from_classifier(self, clf: nn.Module) -> "FCN":
        """The paper's transfer (Sec. 4.1) from a torchvision-style VGG classifier such as
        `fcn_lesson.load_classroom_classifier()`: its 13 convolutions (and BatchNorms) are
        copied in order into the backbone, its fc6 / fc7 Linears reshaped into the backbone's
        fc6 (7x7) / fc7 (1x1) convolutions with `fc_to_conv`. fc8 (its image classes) is
        dropped; score_fr stays zero and learns the pixel classes."""
        from fcn_lesson.core.convert import fc_to_conv

        kinds = (nn.Conv2d, nn.BatchNorm2d)
        src = [m for m in clf.features if isinstance(m, kinds)]
        dst = [m for s in (self.backbone.to_pool3, self.backbone.to_pool4, self.backbone.to_pool5)
               for m in s.modules() if isinstance(m, kinds)]
        def layout(layers):
            return [(type(m), tuple(m.weight.shape)) for m in layers]

        if layout(src) != layout(dst):
            raise ValueError(f"the classifier's features ({len(src)} conv/BatchNorm layers) do not "
                             f"match this {self.variant}'s backbone ({len(dst)}); build both with "
                             "the same width and batch_norm")
        for d, s in zip(dst, src, strict=True):
            d.load_state_dict(s.state_dict())  # copies into d's own (channels-last) tensors
        linears = [m for m in clf.classifier if isinstance(m, nn.Linear)]
        head = self.backbone.head
        for conv, linear, k in ((head.fc6, linears[0], 7), (head.fc7, linears[1], 1)):
            if linear.weight.numel() != conv.weight.numel():
                raise ValueError(f"the classifier's {linear} does not fit this backbone's {conv}")
            new = fc_to_conv(linear, conv.in_channels, k)
            conv.weight.copy_(new.weight)
            conv.bias.copy_(new.bias)
        return self

    @torch.no_grad()
    def init_from_imagenet(self, vgg: nn.Module | None = None) -> "FCN":
        """Backbone from torchvision's ImageNet VGG16 (fc6/fc7 reshaped into convolutions)."""
        self.backbone.load_vgg16(vgg if vgg is not None else imagenet_vgg16())
        return self


class FCN32s(FCN):
    """Scores from fc7 alone, upsampled 32x."""

    skips, variant = 0, "fcn32s"


class FCN16s(FCN):
    """Adds the pool4 skip: stride-16 scores fused with 2x-upsampled fc7 scores."""

    skips, variant = 1, "fcn16s"


class FCN8s(FCN):
    """Adds the pool3 skip as well: three scales fused, upsampled 8x."""

    skips, variant = 2, "fcn8s"


VARIANTS = {"fcn32s": FCN32s, "fcn16s": FCN16s, "fcn8s": FCN8s}


def build_model(variant: str, **kwargs) -> FCN:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    return VARIANTS[variant](**kwargs)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad bottom/right, replicating the border, so H and W are multiples of `multiple`."""
    height, width = x.shape[-2:]
    pad_h, pad_w = -height % multiple, -width % multiple
    if pad_h == 0 and pad_w == 0:
        return x
    return F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
