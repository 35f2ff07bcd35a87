"""From normalised maps to boxes: threshold, connected components, IoU.

Boxes are ``[xmin, ymin, xmax, ymax]`` in pixel edges: a box covering columns 10..19
is ``[10, y, 20, y']``, so ``width = xmax - xmin``.

>>> import numpy as np
>>> heat = np.zeros((50, 80)); heat[10:20, 30:60] = 1.0
>>> boxes_from_map(heat, threshold=0.2)
[(30, 10, 60, 20)]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage

Box = tuple[int, int, int, int]
DEFAULT_THRESHOLD = 0.2
# A threshold is a fraction of the map's range, or a rule that adapts it to each map.
Threshold = float | str
THRESHOLD_RULES = ("otsu", "otsu2", "mean")


NORMALIZATIONS = ("minmax", "max")


def normalize_maps(
    maps: torch.Tensor, mask: torch.Tensor | None = None, mode: str = "minmax"
) -> torch.Tensor:
    """Normalise each ``(..., H, W)`` map to [0, 1] over the pixels in ``mask``.

    ``"minmax"``: ``(map - min) / (max - min)``; ``"max"``: negative scores (evidence against
    the class) become 0 and the rest is divided by the maximum, ``relu(map) / max``.
    Pixels outside the mask (not seen by the network) become 0. A flat map becomes all 0.

    >>> normalize_maps(torch.tensor([[[1.0, 3.0], [2.0, 5.0]]])).tolist()
    [[[0.0, 0.5], [0.25, 1.0]]]
    >>> normalize_maps(torch.tensor([[[-1.0, 1.0], [2.0, 4.0]]]), mode="max").tolist()
    [[[0.0, 0.25], [0.5, 1.0]]]
    """
    if mode not in NORMALIZATIONS:
        raise ValueError(f"unknown normalisation {mode!r}; choose from {', '.join(NORMALIZATIONS)}")
    flat = maps.flatten(-2)
    if mode == "max":
        flat = flat.clamp_min(0)
    if mask is not None:
        valid = mask.flatten().to(maps.device)
        low = flat.masked_fill(~valid, float("inf")).amin(-1, keepdim=True)
        high = flat.masked_fill(~valid, float("-inf")).amax(-1, keepdim=True)
    else:
        low, high = flat.amin(-1, keepdim=True), flat.amax(-1, keepdim=True)
    if mode == "max":
        low = torch.zeros_like(low)
    span = (high - low).clamp_min(1e-12)
    normalized = ((flat - low) / span).clamp_(0, 1)
    if mask is not None:
        normalized = normalized * valid
    return normalized.view_as(maps)


def parse_threshold(value: Threshold) -> Threshold:
    """A fraction in [0, 1] or a rule name (``"otsu"``, ``"otsu2"``, ``"mean"``), else ValueError.

    >>> parse_threshold("0.6"), parse_threshold("Otsu")
    (0.6, 'otsu')
    """
    if isinstance(value, str):
        name = value.strip().lower()
        if name in THRESHOLD_RULES:
            return name
        try:
            value = float(name)
        except ValueError:
            raise ValueError(f"threshold must be a fraction in [0, 1] or one of "
                             f"{', '.join(THRESHOLD_RULES)}, got {value!r}") from None
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {value}")
    return float(value)


def otsu_level(values: torch.Tensor, bins: int = 256) -> float:
    """Otsu's threshold: the level that best splits ``values`` in two classes.

    The histogram spans the values' own range, so the split of any subset can be asked for.

    >>> otsu_level(torch.tensor([[0.1, 0.1], [0.9, 0.8]])) > 0.1
    True
    """
    values = values.detach().float().flatten()
    low, high = float(values.min()), float(values.max())
    if high - low < 1e-12:
        return high
    histogram = torch.histc(values, bins=bins, min=low, max=high).double()
    probability = histogram / histogram.sum()
    edges = torch.linspace(low, high, bins + 1, dtype=torch.float64, device=values.device)
    centers = (edges[:-1] + edges[1:]) / 2
    weight_low = probability.cumsum(0)
    mass_low = (probability * centers).cumsum(0)
    spread = (weight_low * (1 - weight_low)).clamp_min(1e-12)
    between = (mass_low[-1] * weight_low - mass_low) ** 2 / spread
    return float(edges[int(between[:-1].argmax()) + 1])


def threshold_level(normalized_map: np.ndarray | torch.Tensor, threshold: Threshold) -> float:
    """The fraction of the map's range a rule gives for this map.

    ``"otsu"``: Otsu's split of the map's values; ``"otsu2"``: Otsu applied again to the
    upper class (the top class of a three-way split: the map's peak region, without the
    broad shoulder around it); ``"mean"``: the map's mean. A number is used as it is (the
    paper's rule is 0.2).
    """
    if not isinstance(threshold, str):
        return float(threshold)
    values = torch.as_tensor(normalized_map).float()
    if threshold in ("otsu", "otsu2"):
        level = otsu_level(values)
        if threshold == "otsu2":
            level = otsu_level(values[values >= level])
        return level
    if threshold == "mean":
        return float(values.mean())
    rules = ", ".join(THRESHOLD_RULES)
    raise ValueError(f"unknown threshold rule {threshold!r}; choose from {rules}")


def boxes_from_mask(mask: np.ndarray, largest_only: bool = True, min_area: float = 0.0) -> list[Box]:
    """Bounding boxes of the 8-connected components of a boolean mask, largest first.

    ``min_area`` is a fraction of the image area (components smaller are dropped, except
    that the largest is always kept when ``largest_only``).

    >>> mask = np.zeros((6, 8), bool); mask[1:3, 1:3] = True; mask[3:6, 4:8] = True
    >>> boxes_from_mask(mask), boxes_from_mask(mask, largest_only=False)
    ([(4, 3, 8, 6)], [(4, 3, 8, 6), (1, 1, 3, 3)])
    """
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return []
    if count == 1:  # the usual case of a smooth map: the box of the mask itself
        return [_extent(mask)]
    areas = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    order = np.argsort(-areas, kind="stable")
    if largest_only:
        return [_extent(labels == order[0] + 1)]
    slices = ndimage.find_objects(labels)
    limit = min_area * mask.size
    boxes: list[Box] = []
    for rank, index in enumerate(order):
        if rank > 0 and areas[index] < limit:
            break
        rows, cols = slices[index]
        boxes.append((int(cols.start), int(rows.start), int(cols.stop), int(rows.stop)))
    return boxes


def _extent(mask: np.ndarray) -> Box:
    """The box ``(xmin, ymin, xmax, ymax)`` of the True pixels of a non-empty mask."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)


def boxes_from_map(
    normalized_map: np.ndarray | torch.Tensor,
    threshold: Threshold = DEFAULT_THRESHOLD,
    largest_only: bool = True,
    min_area: float = 0.0,
) -> list[Box]:
    """Boxes of a normalised map: pixels ``>= threshold``, components, largest first.

    The paper's rule (Zhou et al. 2016) is the default: 20% of the maximum, largest component.
    ``threshold`` may also be a rule adapting to each map (``"otsu"``, ``"mean"``, see
    :func:`threshold_level`).
    """
    threshold = threshold_level(normalized_map, threshold)
    if isinstance(normalized_map, torch.Tensor):
        mask = (normalized_map >= threshold).cpu().numpy()
    else:
        mask = np.asarray(normalized_map) >= threshold
    return boxes_from_mask(mask, largest_only=largest_only, min_area=min_area)


def box_iou(boxes_a: Sequence[Sequence[float]], boxes_b: Sequence[Sequence[float]]) -> np.ndarray:
    """Pairwise IoU matrix ``(len(a), len(b))`` of ``[xmin, ymin, xmax, ymax]`` boxes.

    >>> box_iou([[0, 0, 10, 10]], [[5, 0, 15, 10], [20, 20, 30, 30]]).round(3).tolist()
    [[0.333, 0.0]]
    """
    a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4)
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(bottom_right - top_left, 0, None).prod(-1)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(-1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)
