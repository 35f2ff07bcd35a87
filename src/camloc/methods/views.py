"""Test-time views: a batch and its mirror (``flip``), and the batch resized (``scales``).

Raw maps and logits are averaged over the views, so the mean of a CAM plus the bias is
still the averaged logit; classes are chosen once, on the views' mean logits.

>>> import torch, camloc
>>> from camloc.methods import get_method
>>> model = camloc.load_model("resnet18", weights="random")
>>> out = explain_batch(get_method("cam", model), torch.randn(2, 3, 64, 64), ClassSelection(),
...                     flip=True, scales=(1.0, 0.5))
>>> tuple(out.maps.shape), tuple(out.logits.shape)
((2, 1, 4, 4), (2, 1000))
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..models import ClassifierAdapter
from .base import ClassSelection, Method, MethodOutput, Selection

CANDIDATES = 5  # classes kept from the first view of a multi-scale batch (and predictions shown)


class MirroredSelection:
    """The classes of a batch stacked with its mirror: chosen once on the two views' mean
    logits, the same for an image and its mirror."""

    def __init__(self, selection: Selection):
        self.selection = selection

    def resolve(self, model: ClassifierAdapter) -> list[int] | None:
        return self.selection.resolve(model)

    def indices(self, logits: torch.Tensor, model: ClassifierAdapter) -> torch.Tensor:
        half = logits.shape[0] // 2
        chosen = self.selection.indices((logits[:half] + logits[half:]) / 2, model)
        return torch.cat([chosen, chosen])


class CandidateSelection:
    """The classes of a multi-scale batch: fixed classes as they are; otherwise the top
    ``max(k, 5)`` of the first view, kept for the other views (the final choice is made on
    the views' mean logits, among these candidates)."""

    def __init__(self, selection: Selection, count: int = CANDIDATES):
        self.selection, self.count = selection, count
        self.chosen: torch.Tensor | None = None

    def resolve(self, model: ClassifierAdapter) -> list[int] | None:
        return self.selection.resolve(model)

    def indices(self, logits: torch.Tensor, model: ClassifierAdapter) -> torch.Tensor:
        if self.chosen is None:
            selection = self.selection
            if not isinstance(selection, ClassSelection) or selection.resolve(model) is not None:
                self.chosen = selection.indices(logits, model)
            else:
                wanted = max(self.count, selection.topk, selection.rank or 1)
                self.chosen = logits.topk(min(wanted, logits.shape[1]), dim=1).indices
        return self.chosen


def _one_scale(
    method: Method, batch: torch.Tensor, selection: Selection, flip: bool
) -> MethodOutput:
    if not flip:
        return method(batch, selection)
    count = batch.shape[0]
    both = method(torch.cat([batch, batch.flip(-1)]), MirroredSelection(selection))
    logits = (both.logits[:count] + both.logits[count:]) / 2
    maps = (both.maps[:count] + both.maps[count:].flip(-1)) / 2
    return MethodOutput(logits, both.classes[:count], maps, both.method)


def explain_batch(
    method: Method,
    batch: torch.Tensor,
    selection: Selection,
    flip: bool = False,
    scales: Sequence[float] = (1.0,),
) -> MethodOutput:
    """Run ``method`` on a batch, with test-time flip and scales; maps and logits averaged.

    ``flip``: one forward of ``[batch, mirrored batch]``, classes chosen on the mean logits,
    the mirror's maps flipped back. ``scales``: further views of the batch resized by each
    factor (the first scale is the batch as given); their maps are resampled to the finest
    view's feature grid. Raw maps and logits are averaged over all views, so the mean of
    a CAM plus the bias is still the averaged logit. ``flip=False, scales=(1,)`` is
    ``method(batch, selection)``.
    """
    scales = tuple(scales) or (1.0,)
    if len(scales) == 1 and scales[0] == 1.0:
        return _one_scale(method, batch, selection, flip)
    candidates = CandidateSelection(selection)
    outputs = []
    for scale in scales:
        size = [max(16, round(side * scale)) for side in batch.shape[-2:]]
        view = batch if scale == 1.0 else torch.nn.functional.interpolate(
            batch, size=size, mode="bilinear", align_corners=False, antialias=scale < 1)
        outputs.append(_one_scale(method, view, candidates, flip))
    feature_size = max((out.maps.shape[-2:] for out in outputs), key=lambda size: size.numel())
    maps = torch.stack([
        out.maps if out.maps.shape[-2:] == feature_size else torch.nn.functional.interpolate(
            out.maps.float(), size=feature_size, mode="bilinear", align_corners=False)
        for out in outputs]).mean(0)
    logits = torch.stack([out.logits for out in outputs]).mean(0)
    pool = outputs[0].classes  # (N, m) candidates, the same for every view
    allowed = torch.full_like(logits, float("-inf")).scatter(1, pool, 0.0)
    chosen = selection.indices(logits + allowed, method.model)
    position = (pool[:, None, :] == chosen[:, :, None]).float().argmax(-1)  # (N, k)
    picked = maps.gather(1, position[..., None, None].expand(-1, -1, *maps.shape[-2:]))
    return MethodOutput(logits, chosen, picked, outputs[0].method)
