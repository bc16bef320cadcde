"""fcn_lesson: the code behind the FCN notebooks (Long, Shelhamer & Darrell, CVPR 2015)."""

__version__ = "0.1.0"

from fcn_lesson.classroom import load_classroom_model
from fcn_lesson.convert import convolutionalize, fc_to_conv
from fcn_lesson.metrics import (
    accuracy_by_boundary_distance,
    boundary_accuracy,
    confusion_matrix,
    segmentation_scores,
)
from fcn_lesson.models import FCN8s, FCN16s, FCN32s, build_model
from fcn_lesson.shapes import ShapesDataset
from fcn_lesson.upsample import BilinearUpsample, bilinear_kernel, bilinear_upsample

__all__ = [
    "FCN8s", "FCN16s", "FCN32s", "build_model",
    "BilinearUpsample", "bilinear_kernel", "bilinear_upsample",
    "accuracy_by_boundary_distance", "boundary_accuracy", "confusion_matrix",
    "segmentation_scores", "convolutionalize", "fc_to_conv", "ShapesDataset",
    "load_classroom_model",
]
