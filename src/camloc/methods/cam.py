"""Plain CAM (Zhou et al. 2016): exact for ``features → GAP → (affine) → linear`` heads.

``maps = einsum(W[classes], features)``: one matmul for all classes of a whole batch, and
``mean_xy(map) + bias == logit``.

>>> import torch, camloc
>>> model = camloc.load_model("resnet18", weights="random")
>>> tuple(CAM(model)(torch.randn(2, 3, 224, 224), ClassSelection(topk=3)).maps.shape)
(2, 3, 14, 14)
"""

from __future__ import annotations

import torch

from ..errors import ModelError
from ..models import ClassifierAdapter
from .base import ClassSelection, Method, MethodOutput, Selection


class CAM(Method):
    """Class Activation Mapping: the classifier's weights applied before pooling."""

    name = "cam"
    hooks_modules = False  # runs in the model's runtime (camloc.models.runtime)

    def __init__(self, model: ClassifierAdapter, layer: str | None = None):
        model.require_cam()
        if layer is not None and layer != model.feature_layer:
            raise ModelError(f"plain CAM uses the layer before pooling ({model.feature_layer!r}); "
                             "--layer picks the layer of the gradient methods (--method gradcam, "
                             "gradcam++, layercam or scorecam)")
        super().__init__(model, layer)

    def compute(self, batch: torch.Tensor, selection: Selection) -> MethodOutput:
        logits, features = self.model.forward_with_features(batch)
        classes = selection.indices(logits, self.model)
        return MethodOutput(logits, classes, class_maps(self.model, features, classes), self.name)


def class_maps(model: ClassifierAdapter, features: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Exact CAMs ``(N, k, h, w)`` of ``classes (N, k)``: ``mean_xy(map) + bias == logit``."""
    weight, scale, _ = model.head(features)
    chosen = weight[classes]  # (N, k, K)
    if scale is not None:
        chosen = chosen * scale[:, None, :]
    return torch.einsum("nkc,nchw->nkhw", chosen.to(features.dtype), features)


__all__ = ["CAM", "ClassSelection", "class_maps"]
