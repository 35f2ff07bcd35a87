"""camloc: where an image classifier looks, as Class Activation Maps and object boxes.

>>> import camloc
>>> model = camloc.load_model()                       # embedded EfficientNet-Lite0
>>> [result] = camloc.explain(model, "examples/images/chelsea_cat.jpg")
>>> result.targets[0].label, result.boxes[0][0] is not None
('Egyptian cat', True)
"""

from .boxes import box_iou, boxes_from_map, normalize_maps
from .cam import (
    BoxOptions,
    CAMMethod,
    ClassSelection,
    Explanation,
    Prediction,
    class_maps,
    explain,
    get_method,
)
from .errors import CamlocError, ClassError, ImageError, ModelError
from .gradcam import GRADIENT_METHODS, SpatialLayer, find_spatial_layer, spatial_layer
from .images import Geometry, load_image, maps_to_original, preprocess
from .models import ClassifierAdapter, adapt, load_model

__version__ = "0.1.0"

__all__ = [
    "BoxOptions", "CAMMethod", "CamlocError", "ClassError", "ClassSelection", "ClassifierAdapter",
    "Explanation", "Geometry", "ImageError", "ModelError", "Prediction", "__version__", "adapt",
    "box_iou", "boxes_from_map", "class_maps", "explain", "get_method", "load_image",
    "GRADIENT_METHODS", "SpatialLayer", "find_spatial_layer", "spatial_layer",
    "load_model", "maps_to_original", "normalize_maps", "preprocess",
]
