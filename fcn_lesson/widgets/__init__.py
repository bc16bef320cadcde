"""ipywidgets explorers for the notebooks; each keeps its logic testable without a browser."""

from fcn_lesson.widgets.fusion import FusionExplorer
from fcn_lesson.widgets.layers import LayerExplorer
from fcn_lesson.widgets.output_grid import OutputGridExplorer
from fcn_lesson.widgets.pixel import PixelExplorer
from fcn_lesson.widgets.upsampling import UpsamplingExplorer

__all__ = ["FusionExplorer", "LayerExplorer", "OutputGridExplorer", "PixelExplorer",
           "UpsamplingExplorer"]
