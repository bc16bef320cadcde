"""fcn_lesson: the code behind the FCN notebooks (Long, Shelhamer & Darrell, CVPR 2015)."""

from fcn_lesson.classroom import load_classroom_classifier, load_classroom_model
from fcn_lesson.core.convert import convolutionalize, fc_to_conv
from fcn_lesson.core.models import FCN8s, FCN16s, FCN32s, build_model
from fcn_lesson.core.upsample import BilinearUpsample, bilinear_kernel, bilinear_upsample
from fcn_lesson.datasets.shapes import ShapesDataset
from fcn_lesson.engine.checkpoint import package_version
from fcn_lesson.engine.metrics import (
    accuracy_by_boundary_distance,
    boundary_accuracy,
    confusion_matrix,
    segmentation_scores,
)
from fcn_lesson.lessons.explain import explain_pixel

__version__ = package_version()

__all__ = [
    "FCN8s", "FCN16s", "FCN32s", "build_model",
    "BilinearUpsample", "bilinear_kernel", "bilinear_upsample",
    "accuracy_by_boundary_distance", "boundary_accuracy", "confusion_matrix",
    "segmentation_scores", "convolutionalize", "fc_to_conv", "ShapesDataset",
    "load_classroom_classifier", "load_classroom_model", "explain_pixel",
]
