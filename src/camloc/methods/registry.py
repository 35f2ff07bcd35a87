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


def get_method(name: str, model: ClassifierAdapter, layer: str | None = None) -> Method:
    """The method called ``name`` (``"auto"``: exact CAM when the head allows it, else
    Grad-CAM), on ``layer`` (``None``: the method's default layer)."""
    if name == "auto":
        exact = model.head_error is None and layer in (None, model.feature_layer)
        name = "cam" if exact else "gradcam"
    if name not in METHODS:
        raise ModelError(f"unknown method {name!r}; choose from auto, {', '.join(METHODS)}")
    return METHODS[name](model, layer=layer)


for _builtin in (CAM, GradCAM, GradCAMPlusPlus, LayerCAM, ScoreCAM, WalkCAM):
    register_method(_builtin)
