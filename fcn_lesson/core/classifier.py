"""The classroom classifier: VGG16 at classroom width, with VGG's own fully connected head.

A real `torchvision.models.VGG` (so `convolutionalize` works on it unchanged):

    features    conv1_1 ... pool5 as one flat Sequential (conv, BatchNorm, ReLU; max-pool)
    avgpool     AdaptiveAvgPool2d(7): the identity on 224-px images (pool5 is 7 x 7)
    classifier  fc6 Linear(C*7*7, fc), ReLU, Dropout, fc7 Linear(fc, fc), ReLU, Dropout,
                fc8 Linear(fc, num_classes)

Channels are VGG16's times `width` (`backbone.scaled`, the same numbers as the FCN backbone),
so its 13 convolutions and BatchNorms, fc6 and fc7 map one to one onto an FCN's backbone
(`FCN.init_from_classifier`, the paper's transfer, Sec. 4.1). It reads `ShapesDataset`-style
images, float in [0, 1], as they come: the BatchNorm after conv1_1 does the normalising.
"""

import torch
from torch import nn

from fcn_lesson.core.backbone import VGG16_FC, VGG16_STAGES, scaled

# Image-level labels of the classroom classifier: the shape at the centre of a 224-px image.
CLASSIFIER_CLASSES = ("disk", "ring", "square", "triangle", "bar")


def vgg_features(width: float = 0.125, batch_norm: bool = True) -> nn.Sequential:
    """torchvision's `make_layers` for VGG16 ("D") at `width`: a flat Sequential."""
    layers, c_in = [], 3
    for channels, convs in VGG16_STAGES:
        c_out = scaled(channels, width)
        for _ in range(convs):
            layers.append(nn.Conv2d(c_in, c_out, 3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(c_out))
            layers.append(nn.ReLU(inplace=True))
            c_in = c_out
        layers.append(nn.MaxPool2d(2, stride=2))
    return nn.Sequential(*layers)


def classroom_vgg16(num_classes: int = len(CLASSIFIER_CLASSES), width: float = 0.125,
                    batch_norm: bool = True, dropout: float = 0.5):
    """A `torchvision.models.VGG` at `width` with a 3-Linear classifier over a 7 x 7 pool5.

    torchvision's VGG.__init__ hard-codes a 512*7*7 -> 4096 head; it is replaced here by one of
    the right size (fc = scaled(4096, width)). Initialised as torchvision initialises VGG.
    """
    from torchvision.models import VGG

    if not width > 0:
        raise ValueError(f"width must be positive, got {width!r}")
    features = vgg_features(width, batch_norm)
    # VGG.__init__ builds (and initialises) its full-width 25088 -> 4096 fc6 before it is
    # replaced below: 411 MB of the process's peak memory, unless it goes to the meta device.
    with torch.device("meta"):
        model = VGG(features, num_classes=num_classes, init_weights=False, dropout=dropout)
    c5, fc = scaled(VGG16_STAGES[-1][0], width), scaled(VGG16_FC, width)
    model.classifier = nn.Sequential(
        nn.Linear(c5 * 7 * 7, fc), nn.ReLU(True), nn.Dropout(dropout),
        nn.Linear(fc, fc), nn.ReLU(True), nn.Dropout(dropout),
        nn.Linear(fc, num_classes),
    )
    for m in model.modules():  # torchvision's VGG initialisation
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)
    # Convolution weights stored channels-last, as the FCNs store theirs: every convolution
    # then runs channels-last, about 1.8x faster on a CPU, same results to float rounding.
    for weight in model.parameters():
        if weight.dim() == 4:
            weight.data = weight.data.contiguous(memory_format=torch.channels_last)
    model.width, model.batch_norm, model.num_classes = float(width), bool(batch_norm), num_classes
    return model
