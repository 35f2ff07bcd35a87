"""Choosing the box rule from evidence: a few images with ground-truth boxes pick the rule
(and threshold) whose boxes hit most often, and the choice is stored with the model so every
door uses it.

The candidates are a short list (fixed fractions 0.25, 0.35, 0.5, 0.6 of the normalised map,
its mean, Otsu, Otsu on the upper class): measured on two halves of 298 ImageNet photos, a
choice among these made on 25 boxed images scores within 2–3 points of the best rule on the
other half, while a choice among a finer grid of thresholds, or with 10 images, varies more.

>>> import numpy as np, torch
>>> heat = torch.zeros(40, 40); heat[5:35, 5:35] = 0.3; heat[12:28, 12:28] = 1.0   # a core and a halo
>>> best, scores = choose_box_rule([heat], [np.array([[12, 12, 28, 28]])])
>>> best.rule, best.hits
(0.35, 1.0)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..boxes import box_iou, boxes_from_map
from ..config import Threshold, parse_threshold
from ..errors import CamlocError

SHORTLIST: tuple[Threshold, ...] = (0.25, 0.35, 0.5, 0.6, "mean", "otsu", "otsu2")
HIT_IOU = 0.5
MIN_IMAGES = 25  # fewer boxed images than this make a less stable choice (said, not refused)


@dataclass(frozen=True)
class RuleScore:
    """How one box rule did on the boxed images: the fraction whose largest-component box has
    IoU >= 0.5 with a true box (``hits``), and the mean of that IoU."""

    rule: Threshold
    hits: float
    mean_iou: float


def rule_ious(normalized_maps: Sequence[torch.Tensor], boxes: Sequence[np.ndarray],
              rules: Sequence[Threshold] = SHORTLIST) -> np.ndarray:
    """``(N, R)``: for each image's normalised ``(H, W)`` map and its true boxes ``(m, 4)``, the
    IoU of the largest component's box at each rule (0 when the rule gives no box)."""
    rows = np.zeros((len(normalized_maps), len(rules)))
    for i, (normalized, truth) in enumerate(zip(normalized_maps, boxes, strict=True)):
        for j, rule in enumerate(rules):
            found = boxes_from_map(normalized, rule)[:1]
            rows[i, j] = float(box_iou(found, truth).max()) if found and len(truth) else 0.0
    return rows


def score_rules(ious: np.ndarray, rules: Sequence[Threshold] = SHORTLIST) -> list[RuleScore]:
    """One :class:`RuleScore` per rule from the ``(N, R)`` IoUs of :func:`rule_ious`."""
    if ious.shape[0] == 0:
        raise CamlocError("choosing a box rule needs at least one image with ground-truth boxes")
    return [RuleScore(rule, float((ious[:, j] >= HIT_IOU).mean()), float(ious[:, j].mean()))
            for j, rule in enumerate(rules)]


def best_rule(scores: Sequence[RuleScore]) -> RuleScore:
    """The rule with the most hits; ties go to the higher mean IoU, then to the earlier rule."""
    return max(scores, key=lambda s: (s.hits, round(s.mean_iou, 9), -list(scores).index(s)))


def choose_box_rule(normalized_maps: Sequence[torch.Tensor], boxes: Sequence[np.ndarray],
                    candidates: Sequence[Threshold] = SHORTLIST) -> tuple[RuleScore, list[RuleScore]]:
    """The box rule that localizes best on these images (maps of their true class, true boxes);
    returns the chosen rule's score and every candidate's."""
    candidates = [parse_threshold(rule) for rule in candidates]
    scores = score_rules(rule_ious(normalized_maps, boxes, candidates), candidates)
    return best_rule(scores), scores
