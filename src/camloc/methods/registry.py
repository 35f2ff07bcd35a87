"""The registry of map methods: :func:`register_method`, :func:`get_method`, :func:`list_methods`.

A new method is a subclass of :class:`camloc.methods.base.Method` with a ``name`` and a
``compute``; registering it makes it available to every door (``--method NAME``, the API,
``camloc serve``).

>>> list_methods()
['cam', 'gradcam', 'gradcam++', 'layercam', 'scorecam', 'walkcam']
"""

from __future__ import annotations

from ..errors import ModelError
from ..models import ClassifierAdapter
from .base import Method
from .cam import CAM
from .gradient import GradCAM, GradCAMPlusPlus, LayerCAM
from .scorecam import ScoreCAM
from .walk import WalkCAM

METHODS: dict[str, type[Method]] = {}


def register_method(method: type[Method]) -> type[Method]:
    """Register ``method`` under its ``name`` (usable as a class decorator)."""
    if not method.name:
        raise ValueError(f"{method.__name__} has no name")
    METHODS[method.name] = method
    return method


def list_methods() -> list[str]:
    """The registered method names (``"auto"`` aside)."""
    return list(METHODS)


def resolve_method(name: str, model: ClassifierAdapter, layer: str | None = None) -> str:
    """The method that ``name`` means for ``model``: itself, or for ``"auto"`` the default
    localization: ``walkcam`` when the CAM is exact and the model is a PyTorch network with a
    stage before its last, plain ``cam`` when the CAM is exact otherwise (ONNX, Keras) or
    ``layer`` is the CAM's own, else ``gradcam``.

    >>> import camloc
    >>> resolve_method("auto", camloc.load_model()), resolve_method("gradcam++", camloc.load_model())
    ('walkcam', 'gradcam++')
    """
    if name != "auto":
        return name
    if model.head_error is not None or layer not in (None, model.feature_layer):
        return "gradcam"
    if layer is None:
        try:
            model.guide_layer()
        except ModelError:  # outside PyTorch, or no stage to guide the walk
            return "cam"
        return "walkcam"
    return "cam"


def get_method(name: str, model: ClassifierAdapter, layer: str | None = None) -> Method:
    """The method called ``name`` (``"auto"``: see :func:`resolve_method`), on ``layer``
    (``None``: the method's default layer)."""
    name = resolve_method(name, model, layer)
    if name not in METHODS:
        raise ModelError(f"unknown method {name!r}; choose from auto, {', '.join(METHODS)}")
    return METHODS[name](model, layer=layer)


for _builtin in (CAM, GradCAM, GradCAMPlusPlus, LayerCAM, ScoreCAM, WalkCAM):
    register_method(_builtin)
