"""CAM spread over the object by a random walk on the network's own feature affinities.

The plain CAM of a class (:func:`camloc.methods.cam.class_maps`) peaks on the most
discriminative part of an object. ``walkcam`` spreads it over the cells the network itself
sees as alike: the features of a mid-level layer (by default the stage that feeds the
network's last stage, ``blocks.4`` of EfficientNet-Lite, ``layer3`` of a ResNet) give the
affinity of every two cells ``a_ij = max(cos(g_i, g_j), 0)^β`` (``a_ii = 1``), rows are
normalised into a transition matrix ``T = D⁻¹A``, and the map becomes ``Tᵗ · CAM``. No
training, no parameter of the network changes; the walk is linear in the CAM, so it costs
about a millisecond an image on top of the forward pass, and it runs in the model's runtime
(OpenVINO or onnxruntime, see :mod:`camloc.models.runtime`) like plain CAM. β = 4 and t = 8 were chosen on one
half of camloc's development photos and confirmed on the other (docs/localization.md).

The walked map is no longer an exact decomposition of the logit (``mean_xy(map) + b`` is
not the logit); ``--method cam`` stays the exact one.

>>> import torch, camloc
>>> model = camloc.load_model("resnet18", weights="random")
>>> method = WalkCAM(model)
>>> method.layer, tuple(method(torch.randn(2, 3, 224, 224), ClassSelection(topk=3)).maps.shape)
('layer3', (2, 3, 14, 14))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models import ClassifierAdapter
from .base import ClassSelection, Method, MethodOutput, Selection
from .cam import class_maps

WALK_BETA = 4.0  # sharpness of the affinities
WALK_STEPS = 8  # steps of the walk


def feature_walk(maps: torch.Tensor, guide: torch.Tensor, beta: float = WALK_BETA,
                 steps: int = WALK_STEPS) -> torch.Tensor:
    """``maps (N, k, h, w)`` walked ``steps`` times over the affinities of ``guide (N, K, H, W)``
    features; returns ``(N, k, H, W)`` (maps on another grid are resampled to the guide's).

    Parameters
    ----------
    maps : torch.Tensor
        Class maps at feature resolution.
    guide : torch.Tensor
        Features whose cosine similarity says which cells belong together.
    beta : float
        Power of the (non-negative) cosine similarities: larger keeps the walk among closer cells.
    steps : int
        Number of steps ``t`` in ``Tᵗ · map``.

    Examples
    --------
    Two regions with orthogonal features: one step spreads each region's mean over it.

    >>> guide = torch.zeros(1, 2, 1, 4); guide[0, 0, 0, :2] = 1; guide[0, 1, 0, 2:] = 1
    >>> feature_walk(torch.tensor([[[[4.0, 0.0, 1.0, 1.0]]]]), guide, steps=1).flatten().tolist()
    [2.0, 2.0, 1.0, 1.0]
    """
    n, k = maps.shape[:2]
    height, width = guide.shape[-2:]
    values = maps.float()
    if tuple(maps.shape[-2:]) != (height, width):
        values = F.interpolate(values, size=(height, width), mode="bilinear", align_corners=False)
    unit = F.normalize(guide.float().flatten(2), dim=1)  # (N, K, HW), unit columns
    affinity = torch.bmm(unit.transpose(1, 2), unit).clamp_min_(0).pow_(beta)  # (N, HW, HW)
    affinity.diagonal(dim1=1, dim2=2).fill_(1.0)  # every cell is its own neighbour (all-zero features too)
    transition = affinity / affinity.sum(-1, keepdim=True)
    walked = values.flatten(2).transpose(1, 2)  # (N, HW, k)
    for _ in range(steps):
        walked = torch.bmm(transition, walked)
    return walked.transpose(1, 2).reshape(n, k, height, width).to(maps.dtype)


def guide_layer(model: ClassifierAdapter) -> str:
    """walkcam's default guide layer for ``model``: the stage that feeds its last stage
    (:meth:`camloc.models.ClassifierAdapter.guide_layer`, remembered by a runtime's cache).

    >>> import camloc
    >>> guide_layer(camloc.load_model()), guide_layer(camloc.load_model("resnet18", weights="random"))
    ('blocks.4', 'layer3')
    """
    return model.guide_layer()


class WalkCAM(Method):
    """Plain CAM walked over the affinities of a mid-level layer's features (``layer``:
    that layer; default :func:`guide_layer`). Runs in the model's runtime, like plain CAM
    (:meth:`~camloc.models.ClassifierAdapter.forward_with_guide`)."""

    name = "walkcam"
    hooks_modules = False  # the runtime's graph has the guide layer as an output

    def __init__(self, model: ClassifierAdapter, layer: str | None = None):
        model.require_cam()
        self.guide: str = layer or guide_layer(model)  # outside PyTorch (ONNX, Keras): its own error
        super().__init__(model, self.guide)
        if layer is not None:
            model.module(layer)  # an unknown layer fails here, listing close names

    def compute(self, batch: torch.Tensor, selection: Selection) -> MethodOutput:
        logits, features, guide = self.model.forward_with_guide(batch, self.guide)
        classes = selection.indices(logits, self.model)
        maps = feature_walk(class_maps(self.model, features, classes), guide)
        return MethodOutput(logits, classes, maps, self.name)


__all__ = ["WALK_BETA", "WALK_STEPS", "ClassSelection", "WalkCAM", "feature_walk", "guide_layer"]
