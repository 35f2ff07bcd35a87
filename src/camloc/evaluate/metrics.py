"""Localization metrics with the field's definitions.

The map of an image's ground-truth class is swept over CAM thresholds τ (all at once: one
``(T, H, W)`` mask stack, one connected-component labelling) to give MaxBoxAccV2 (Choe et
al., CVPR 2020) next to top-1 / GT-known localization.

>>> import numpy as np, torch
>>> heat = torch.zeros(20, 20); heat[5:15, 5:15] = 1.0
>>> sweep = sweep_ious(heat, np.array([[5, 5, 15, 15]]), torch.tensor([0.5]))
>>> sweep.best.tolist(), sweep.largest.tolist()
([1.0], [1.0])
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from ..boxes import box_iou, level_components, stack_components
from ..errors import CamlocError
from .coco_ap import coco_ap

IOU_THRESHOLDS: tuple[float, ...] = (0.3, 0.5, 0.7)
LOC_IOU = 0.5
SWEEP_STEP = 0.01
SWEEP_MAX_SIDE = 448  # larger maps are swept at this size (IoU does not change with scale)

def sweep_thresholds(step: float = SWEEP_STEP) -> torch.Tensor:
    """The τ grid of the sweep: ``0, step, ..., < 1`` (wsolevaluation's ``cam_curve_interval``)."""
    return torch.arange(0.0, 1.0 - 1e-9, step, dtype=torch.float64).float()


@dataclass
class Sweep:
    """IoUs of one map against its ground-truth boxes, for each τ of a sweep.

    ``best[t]``: the best IoU of any component's box at τ_t (MaxBoxAccV2's rule);
    ``largest[t]``: the IoU of the largest component's box (camloc's box, top-1 / GT-known).
    """

    best: np.ndarray  # (T,)
    largest: np.ndarray  # (T,)


def component_boxes(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """8-connected components of every mask of a ``(T, H, W)`` stack, in one pass.

    Returns ``(layer (M,), boxes (M, 4), areas (M,))``: which mask each component is in, its
    box in pixel edges and its pixel count (in each mask, numbered by its first pixel).

    >>> masks = np.zeros((2, 4, 6), bool); masks[0, 1:3, 0:2] = masks[0, 0, 5] = True
    >>> layer, boxes, areas = component_boxes(masks)
    >>> layer.tolist(), boxes.tolist(), areas.tolist()
    ([0, 0], [[5.0, 0.0, 6.0, 1.0], [0.0, 1.0, 2.0, 3.0]], [1, 4])
    """
    return _flatten_components(stack_components(np.asarray(masks, dtype=bool)))


def _flatten_components(found: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    layer = np.repeat(np.arange(len(found)), [len(areas) for areas, _ in found])
    if layer.size == 0:
        return np.zeros(0, np.int64), np.zeros((0, 4), np.float64), np.zeros(0, np.int64)
    boxes = np.concatenate([boxes for _, boxes in found]).astype(np.float64)
    return layer, boxes, np.concatenate([areas for areas, _ in found])


def sweep_ious(normalized: torch.Tensor, gt_boxes: np.ndarray, thresholds: torch.Tensor) -> Sweep:
    """Box IoUs of a normalised ``(H, W)`` map at every τ in ``thresholds`` (pixels ``>= τ``).

    Pixel counts at every τ come from one binary search per pixel; masks equal to the
    previous one (same count: the masks are nested) and empty masks are not labelled again,
    the others are labelled in one pass (:func:`camloc.boxes.level_components`).

    >>> heat = torch.zeros(10, 30); heat[2:8, 2:8] = 1.0; heat[2:8, 20:28] = 0.5
    >>> s = sweep_ious(heat, np.array([[20, 2, 28, 8]]), torch.tensor([0.4, 0.9]))
    >>> s.best.round(2).tolist(), s.largest.round(2).tolist()
    ([1.0, 0.0], [1.0, 0.0])
    """
    order = torch.argsort(thresholds)
    values = normalized.detach().float().cpu().numpy()
    levels = thresholds[order].numpy().astype(np.float32)
    # pixels >= each τ: each pixel counts for the τ's at or below it (one binary search a pixel)
    below = np.bincount(np.searchsorted(levels, values.ravel(), side="right"), minlength=len(levels) + 1)
    counts = below[::-1].cumsum()[::-1][1:]
    fresh = (counts > 0) & np.concatenate([[True], counts[1:] != counts[:-1]])
    distinct = np.flatnonzero(fresh)
    # each τ reuses the components of the last distinct mask at or before it
    source = np.maximum.accumulate(np.where(fresh, np.arange(len(counts)), -1))
    best_distinct = np.zeros(len(distinct))
    largest_distinct = np.zeros(len(distinct))
    if len(distinct) and len(gt_boxes):
        layer, boxes, areas = _flatten_components(level_components(values, levels[distinct]))
        ious = box_iou(boxes, gt_boxes).max(1) if len(boxes) else np.zeros(0)
        np.maximum.at(best_distinct, layer, ious)
        pick = np.lexsort((-areas, layer))  # by layer, largest area first
        first = pick[np.r_[True, layer[pick][1:] != layer[pick][:-1]]]
        largest_distinct[layer[first]] = ious[first]
    best, largest = np.zeros(len(counts)), np.zeros(len(counts))
    valid = counts > 0  # the first non-empty mask is always fresh, so source >= 0 there
    position = np.searchsorted(distinct, source[valid])
    best[valid], largest[valid] = best_distinct[position], largest_distinct[position]
    unsorted_best, unsorted_largest = np.empty_like(best), np.empty_like(largest)
    unsorted_best[order.numpy()] = best
    unsorted_largest[order.numpy()] = largest
    return Sweep(unsorted_best, unsorted_largest)


def working_resolution(
    normalized: torch.Tensor, boxes: np.ndarray, max_side: int = SWEEP_MAX_SIDE
) -> tuple[torch.Tensor, np.ndarray]:
    """A map larger than ``max_side`` resized (bilinear) to fit it, and its boxes scaled alike.

    >>> m, b = working_resolution(torch.zeros(1000, 500), np.array([[0, 0, 100, 100]]), 448)
    >>> tuple(m.shape), b.round(2).tolist()
    ((448, 224), [[0.0, 0.0, 44.8, 44.8]])
    """
    height, width = normalized.shape
    if max(height, width) <= max_side:
        return normalized, boxes
    factor = max_side / max(height, width)
    size = (max(1, round(height * factor)), max(1, round(width * factor)))
    resized = torch.nn.functional.interpolate(
        normalized[None, None].float(), size=size, mode="bilinear", align_corners=False
    )[0, 0]
    scale = np.array([size[1] / width, size[0] / height] * 2)
    return resized, np.asarray(boxes, dtype=np.float64) * scale


def max_box_acc(
    best_ious: np.ndarray, thresholds: np.ndarray, iou_thresholds: Sequence[float] = IOU_THRESHOLDS
) -> dict[str, Any]:
    """MaxBoxAccV2 from ``(N, T)`` best-box IoUs: per δ, the best over τ of the fraction of
    maps with IoU ≥ δ; their mean, and the τ that gave each.

    >>> ious = np.array([[0.2, 0.6, 0.8], [0.1, 0.4, 0.35]])
    >>> result = max_box_acc(ious, np.array([0.1, 0.2, 0.3]))
    >>> result["per_iou"], result["value"]
    ({'0.3': 1.0, '0.5': 0.5, '0.7': 0.5}, 0.6666666666666666)
    """
    per_iou, best_tau = {}, {}
    for delta in iou_thresholds:
        accuracy = (best_ious >= delta).mean(0) if len(best_ious) else np.zeros(len(thresholds))
        index = int(np.argmax(accuracy))
        per_iou[f"{delta:g}"] = float(accuracy[index])
        best_tau[f"{delta:g}"] = float(round(float(thresholds[index]), 6))
    return {
        "value": float(np.mean(list(per_iou.values()))),
        "per_iou": per_iou,
        "best_tau": best_tau,
    }


# --------------------------------------------------------------------------- the eval job


@dataclass
class ImageResult:
    """What evaluation kept of one image (one row per image in the report)."""

    path: str
    key: str
    gt_classes: list[int]
    gt_boxes: list[list[float]]
    predicted: list[int]  # top-5 class indices
    box: list[int] | None  # camloc's box (default settings) of the ground-truth class's map
    iou: float  # its IoU with the boxes of that class
    top1_correct: bool
    top5_correct: bool
    rule_ious: list[float] = field(default_factory=list)  # IoU of the box at each candidate rule
    boxes: list[list[int]] = field(default_factory=list)  # all of camloc's boxes of that map (COCO AP)
    score: float = 0.0  # the model's probability of the ground-truth class (COCO AP)
    gt_box_classes: list[int] = field(default_factory=list)  # the class of each ground-truth box


@dataclass
class Counts:
    images: int = 0
    evaluated: int = 0
    without_ground_truth: int = 0
    unknown_labels: int = 0
    unreadable: int = 0
    ground_truth_without_image: int = 0
    boxes_outside_image: int = 0  # ground-truth boxes that do not overlap their image (ignored)
    errors: list[str] = field(default_factory=list)


@dataclass
class EvalResult:
    """Everything ``camloc eval`` measured. :meth:`metrics` is the ``--json`` payload."""

    settings: dict[str, Any]
    counts: Counts
    thresholds: np.ndarray  # (T,)
    images: list[ImageResult]
    best_ious: np.ndarray  # (N, T): best box among all components per τ
    largest_ious: np.ndarray  # (N, T): camloc's box (largest component) per τ
    class_names: list[str]
    seconds: float = 0.0

    def curves(self) -> dict[str, np.ndarray]:
        """Metrics as functions of τ: ``top1_loc``, ``gt_known_loc`` and box accuracy per δ."""
        top1 = np.array([r.top1_correct for r in self.images], dtype=bool)
        found = {
            "gt_known_loc": (self.largest_ious >= LOC_IOU).mean(0),
            "top1_loc": ((self.largest_ious >= LOC_IOU) & top1[:, None]).mean(0),
        }
        for delta in IOU_THRESHOLDS:
            found[f"box_acc@{delta:g}"] = (self.best_ious >= delta).mean(0)
        return found

    def metrics(self) -> dict[str, Any]:
        count = len(self.images)
        if count == 0:
            raise CamlocError(
                "no image could be evaluated (none had readable ground truth "
                "with labels the model knows)"
            )
        top1 = np.array([r.top1_correct for r in self.images])
        ious = np.array([r.iou for r in self.images])
        located = ious >= LOC_IOU
        curves = self.curves()
        best_index = int(np.argmax(curves["gt_known_loc"]))
        box = max_box_acc(self.best_ious, self.thresholds)
        return {
            **coco_ap(self.images),
            "top1_cls": float(top1.mean()),
            "top5_cls": float(np.mean([r.top5_correct for r in self.images])),
            "top1_loc": float((located & top1).mean()),
            "gt_known_loc": float(located.mean()),
            "maxboxacc_v2": box["value"],
            "maxboxacc_v2_per_iou": box["per_iou"],
            "maxboxacc_v2_best_tau": box["best_tau"],
            "best_tau": float(round(float(self.thresholds[best_index]), 6)),
            "top1_loc_at_best_tau": float(curves["top1_loc"][best_index]),
            "gt_known_loc_at_best_tau": float(curves["gt_known_loc"][best_index]),
            "default_tau": self.settings.get("threshold"),
            "mean_iou": float(ious.mean()),
            "num_images": count,
            "counts": {k: v for k, v in asdict(self.counts).items() if k != "errors"},
            "settings": self.settings,
            "seconds": round(self.seconds, 2),
        }

    def per_class(self) -> list[dict[str, Any]]:
        """Accuracy per ground-truth class (the first class of each image), most frequent first."""
        groups: dict[int, list[ImageResult]] = defaultdict(list)
        for result in self.images:
            groups[result.gt_classes[0]].append(result)
        rows = [
            {
                "class": self.class_names[index],
                "index": index,
                "images": len(members),
                "top1_cls": float(np.mean([m.top1_correct for m in members])),
                "top1_loc": float(np.mean([m.top1_correct and m.iou >= LOC_IOU for m in members])),
                "gt_known_loc": float(np.mean([m.iou >= LOC_IOU for m in members])),
            }
            for index, members in groups.items()
        ]
        return sorted(rows, key=lambda row: (-row["images"], row["class"]))
