"""Map methods: plain CAM, the gradient family, Score-CAM, CAM walked over feature affinities,
and test-time views.

>>> from camloc.methods import list_methods
>>> "cam" in list_methods() and "gradcam" in list_methods()
True
"""

from .base import ClassSelection, Method, MethodOutput, Selection
from .cam import CAM, class_maps
from .gradient import (
    GradCAM,
    GradCAMPlusPlus,
    GradientMethod,
    LayerCAM,
    LayerMethod,
    SpatialLayer,
    find_spatial_layer,
    spatial_layer,
)
from .registry import METHODS, get_method, list_methods, register_method, resolve_method
from .scorecam import ScoreCAM
from .views import explain_batch
from .walk import WalkCAM, feature_walk, guide_layer

CAMMethod = CAM  # the plain CAM method under its earlier name
GRADIENT_METHODS = {m.name: m for m in (GradCAM, GradCAMPlusPlus, LayerCAM, ScoreCAM)}

__all__ = [
    "CAM", "CAMMethod", "GRADIENT_METHODS", "METHODS", "ClassSelection", "GradCAM", "GradCAMPlusPlus",
    "GradientMethod", "LayerCAM",
    "LayerMethod", "Method", "MethodOutput", "ScoreCAM", "Selection", "SpatialLayer", "class_maps",
    "explain_batch", "find_spatial_layer", "get_method", "list_methods", "register_method", "resolve_method",
    "spatial_layer", "WalkCAM", "feature_walk", "guide_layer",
]
