"""camloc: where an image classifier looks, as Class Activation Maps and object boxes.

>>> import camloc
>>> model = camloc.load_model()                       # embedded EfficientNet-Lite0
>>> [result] = camloc.explain(model, "examples/images/chelsea_cat.jpg")
>>> result.targets[0].label, result.boxes[0][0] is not None
('Egyptian cat', True)

Importing camloc is cheap and changes nothing global: the names below are loaded from
their modules on first use (torch is imported then).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import CamlocError, ClassError, ImageError, ModelError
from .lazy import lazy_exports

__version__ = "0.1.0"

# public name → the module that defines it (imported on first access)
_EXPORTS = {
    "box_iou": "boxes", "boxes_from_map": "boxes",
    "normalize_maps": "maps",
    "Geometry": "images", "load_image": "images", "maps_to_original": "images", "preprocess": "images",
    "ClassifierAdapter": "models", "adapt": "models", "load_model": "models", "register_format": "models",
    "CAM": "methods", "CAMMethod": "methods", "ClassSelection": "methods", "Method": "methods",
    "GRADIENT_METHODS": "methods", "SpatialLayer": "methods", "find_spatial_layer": "methods",
    "spatial_layer": "methods", "get_method": "methods", "list_methods": "methods",
    "register_method": "methods", "class_maps": "methods",
    "BoxOptions": "pipeline", "Explanation": "pipeline",
    "Pipeline": "pipeline", "Prediction": "pipeline", "explain": "pipeline",
    "RunOptions": "jobs", "run": "jobs",
    "ExplainConfig": "config",
}

__all__ = [
    "BoxOptions", "CAM", "CAMMethod", "CamlocError", "ClassError", "ClassSelection",
    "ClassifierAdapter", "ExplainConfig", "Explanation", "GRADIENT_METHODS", "Geometry",
    "ImageError", "Method", "ModelError", "Pipeline", "Prediction", "RunOptions", "SpatialLayer",
    "__version__", "adapt", "box_iou", "boxes_from_map", "class_maps", "explain",
    "find_spatial_layer", "get_method", "list_methods", "load_image", "load_model",
    "maps_to_original", "normalize_maps", "preprocess", "register_format", "register_method", "run",
    "spatial_layer",
]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, __all__, globals())


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from .boxes import box_iou, boxes_from_map
    from .config import ExplainConfig
    from .images import Geometry, load_image, maps_to_original, preprocess
    from .jobs import RunOptions, run
    from .maps import normalize_maps
    from .methods import (
        CAM,
        GRADIENT_METHODS,
        CAMMethod,
        ClassSelection,
        Method,
        SpatialLayer,
        class_maps,
        find_spatial_layer,
        get_method,
        list_methods,
        register_method,
        spatial_layer,
    )
    from .models import ClassifierAdapter, adapt, load_model, register_format
    from .pipeline import BoxOptions, Explanation, Pipeline, Prediction, explain
