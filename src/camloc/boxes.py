"""From normalised maps to boxes: threshold, connected components, IoU.

Boxes are ``[xmin, ymin, xmax, ymax]`` in pixel edges: a box covering columns 10..19
is ``[10, y, 20, y']``, so ``width = xmax - xmin``.

>>> import numpy as np
>>> heat = np.zeros((50, 80)); heat[10:20, 30:60] = 1.0
>>> boxes_from_map(heat, threshold=0.2)
[(30, 10, 60, 20)]
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch

from .config import THRESHOLD_RULES, Threshold, parse_threshold  # noqa: F401 - re-exported

DEFAULT_THRESHOLD = 0.2  # the paper's rule, the default of these plain functions

Box = tuple[int, int, int, int]
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
    return otsu_of_histogram(torch.histc(values, bins=bins, min=low, max=high), low, high)


def otsu_of_histogram(histogram: torch.Tensor, low: float, high: float) -> float:
    """:func:`otsu_level` from the values' histogram over ``[low, high]`` (``torch.histc``)."""
    bins = histogram.numel()
    histogram = histogram.double()
    probability = histogram / histogram.sum()
    edges = torch.linspace(low, high, bins + 1, dtype=torch.float64, device=histogram.device)
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


def mask_components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Areas ``(n,)`` and boxes ``(n, 4)`` (``[xmin, ymin, xmax, ymax]``, pixel edges) of the
    8-connected components of a boolean ``(H, W)`` mask, numbered as
    ``scipy.ndimage.label`` numbers them (by their first pixel in raster order).

    >>> mask = np.zeros((4, 6), bool); mask[0, 0] = mask[1, 1] = True; mask[2:4, 3:6] = True
    >>> areas, boxes = mask_components(mask)
    >>> areas.tolist(), boxes.tolist()
    ([2, 6], [[0, 0, 2, 2], [3, 2, 6, 4]])
    """
    [(areas, boxes)] = stack_components(np.asarray(mask, dtype=bool)[None])
    return areas, boxes


def stack_components(masks: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """:func:`mask_components` of each mask of a ``(k, H, W)`` stack, all in one pass.

    The masks are read once, as runs of True pixels along their rows (one vectorised
    comparison); runs on adjacent rows that touch (diagonals included) are joined by
    ``scipy.sparse.csgraph``. A thresholded CAM has a few runs per row, so this is several
    times faster than labelling every pixel (``ndimage.label`` + ``bincount``), with the
    same components; the k maps of an image cost one call.
    """
    padded = _framed(*masks.shape)
    padded[:, : masks.shape[1], 1:-1] = masks
    return _framed_components(padded)


def _framed(count: int, height: int, width: int) -> np.ndarray:
    """All-False ``(count, height + 1, width + 2)``: masks go inside, a False column on both
    sides starts and ends every run inside its row, a False row after each mask keeps the
    masks of a stack apart."""
    return np.zeros((count, height + 1, width + 2), dtype=bool)


def _components(count: int, source: np.ndarray, target: np.ndarray) -> tuple[int, np.ndarray]:
    """Connected components of ``count`` nodes and undirected edges ``source[i] — target[i]``:
    ``(number, label per node)``, numbered in the order of their smallest node (as scipy's
    ``connected_components``, without importing scipy.sparse: two thirds of a second of a
    one-photo ``camloc run``). Each node takes the smallest label across its edges, then
    labels jump to their label's label, until nothing changes."""
    label = np.arange(count)
    while True:
        lowest = np.minimum(label[source], label[target])
        new = label.copy()
        np.minimum.at(new, source, lowest)
        np.minimum.at(new, target, lowest)
        new = new[new]
        while not np.array_equal(new, new[new]):
            new = new[new]
        if np.array_equal(new, label):
            break
        label = new
    roots, label = np.unique(label, return_inverse=True)
    return roots.size, label.reshape(-1)


def _framed_components(padded: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """:func:`stack_components` of masks already inside their :func:`_framed` frame."""
    count, height, width = padded.shape[0], padded.shape[1] - 1, padded.shape[2] - 2
    stride = width + 1  # edges index a (count * (height + 1), width + 1) array
    edges = np.flatnonzero(padded[..., 1:] != padded[..., :-1])  # each run: start, one past its end
    rows, starts, ends = edges[0::2] // stride, edges[0::2] % stride, edges[1::2] % stride
    runs = rows.size
    if runs == 0:
        return [(np.zeros(0, np.int64), np.zeros((0, 4), np.int64)) for _ in range(count)]
    # the runs of the next row touching run i form one index range [first, last): those
    # that end at or after its start and begin at or before its end (8-connectivity)
    first = np.searchsorted(rows * stride + ends, (rows + 1) * stride + starts, side="left")
    last = np.searchsorted(rows * stride + starts, (rows + 1) * stride + ends, side="right")
    links = np.maximum(last - first, 0)
    offsets = np.zeros(runs + 1, np.int64)
    np.cumsum(links, out=offsets[1:])
    target = first.repeat(links) + np.arange(offsets[-1]) - offsets[:-1].repeat(links)
    source = np.arange(runs).repeat(links)
    found, label = _components(runs, source, target)  # numbered by their first run
    areas = np.bincount(label, weights=ends - starts, minlength=found).astype(np.int64)
    boxes = np.empty((found, 4), np.int64)
    boxes[:, :2], boxes[:, 2:] = np.iinfo(np.int64).max, -1
    row_in_mask = rows % (height + 1)
    np.minimum.at(boxes[:, 0], label, starts)
    np.minimum.at(boxes[:, 1], label, row_in_mask)
    np.maximum.at(boxes[:, 2], label, ends)
    np.maximum.at(boxes[:, 3], label, row_in_mask + 1)
    first_run = np.full(found, runs, np.int64)
    np.minimum.at(first_run, label, np.arange(runs))
    owner = rows[first_run] // (height + 1)  # the mask of each component, non-decreasing
    bounds = np.searchsorted(owner, np.arange(count + 1))
    return [(areas[a:b], boxes[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _ranked_boxes(areas: np.ndarray, boxes: np.ndarray, largest_only: bool, min_area: float,
                  pixels: int) -> list[Box]:
    if areas.size == 0:
        return []
    order = np.argsort(-areas, kind="stable")
    kept: Sequence[int] | np.ndarray
    if largest_only:
        kept = order[:1]
    else:
        kept = [order[0], *(index for index in order[1:] if areas[index] >= min_area * pixels)]
    return [(int(x0), int(y0), int(x1), int(y1)) for x0, y0, x1, y1 in (boxes[index] for index in kept)]


def boxes_from_mask(mask: np.ndarray, largest_only: bool = True, min_area: float = 0.0) -> list[Box]:
    """Bounding boxes of the 8-connected components of a boolean mask, largest first
    (equal areas: in raster order of their first pixel).

    ``min_area`` is a fraction of the image area (components smaller are dropped, except
    that the largest is always kept).

    >>> mask = np.zeros((6, 8), bool); mask[1:3, 1:3] = True; mask[3:6, 4:8] = True
    >>> boxes_from_mask(mask), boxes_from_mask(mask, largest_only=False)
    ([(4, 3, 8, 6)], [(4, 3, 8, 6), (1, 1, 3, 3)])
    """
    areas, boxes = mask_components(mask)
    return _ranked_boxes(areas, boxes, largest_only, min_area, np.asarray(mask).size)


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
    [boxes] = boxes_from_maps(_as_tensor(normalized_map)[None], threshold, largest_only, min_area)
    return boxes


def _as_tensor(values: np.ndarray | torch.Tensor) -> torch.Tensor:
    return values if isinstance(values, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(values))


def map_levels(normalized_maps: torch.Tensor | np.ndarray, threshold: Threshold) -> list[float]:
    """:func:`threshold_level` of each map of a ``(k, H, W)`` stack: where its boxes are cut.

    >>> heat = torch.zeros(2, 4, 4); heat[0, :2] = 1; heat[1, 0, 0] = 1
    >>> map_levels(heat, 0.3), [round(level, 2) for level in map_levels(heat, "mean")]
    ([0.3, 0.3], [0.5, 0.06])
    """
    maps = _as_tensor(normalized_maps)
    if not isinstance(threshold, str):
        return [float(threshold)] * len(maps)
    return [threshold_level(m, threshold) for m in maps]


def boxes_from_maps(
    normalized_maps: torch.Tensor | np.ndarray,
    threshold: Threshold = DEFAULT_THRESHOLD,
    largest_only: bool = True,
    min_area: float = 0.0,
    levels: Sequence[float] | None = None,
) -> list[list[Box]]:
    """:func:`boxes_from_map` of each map of a ``(k, H, W)`` stack (one threshold
    comparison, one transfer and one components pass for all k). ``levels``: the maps'
    :func:`map_levels` under ``threshold``, when they are already known.

    >>> heat = torch.zeros(2, 20, 30); heat[0, 2:5, 3:9] = 1; heat[1, 10:20, 0:4] = 1
    >>> boxes_from_maps(heat, 0.5)
    [[(3, 2, 9, 5)], [(0, 10, 4, 20)]]
    """
    maps = _as_tensor(normalized_maps)
    if levels is None:
        levels = map_levels(maps, threshold)
    pixels = maps.shape[1] * maps.shape[2]
    return [_ranked_boxes(areas, boxes, largest_only, min_area, pixels)
            for areas, boxes in level_components(maps, levels)]


def level_components(maps: torch.Tensor | np.ndarray,
                     levels: Sequence[float] | np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Areas and boxes (as :func:`mask_components`) of the components of ``maps >= levels``:
    a ``(k, H, W)`` stack against one level each (or one level for all), or one ``(H, W)``
    map against T levels (a threshold sweep); one comparison and one components pass.

    >>> heat = np.zeros((5, 9)); heat[1:4, 1:4] = 0.5; heat[2, 6:8] = 1.0
    >>> [boxes.tolist() for _, boxes in level_components(heat, [0.4, 0.9])]
    [[[1, 1, 4, 4], [6, 2, 8, 3]], [[6, 2, 8, 3]]]
    """
    maps = _as_tensor(maps)
    maps = maps[None] if maps.dim() == 2 else maps
    count, height, width = len(levels) if len(maps) == 1 else len(maps), maps.shape[1], maps.shape[2]
    padded = _framed(count, height, width)
    inside = padded[:, :height, 1:-1]
    if maps.device.type == "cpu" and maps.dtype in (torch.float32, torch.float64):
        # numpy compares straight into the frame (2x faster than torch's >= and a copy)
        values = maps.detach().numpy()
        np.greater_equal(values, np.asarray(levels, values.dtype)[:, None, None], out=inside)
    else:
        dtype = maps.dtype if maps.is_floating_point() else torch.float32
        inside[...] = (maps >= torch.tensor(levels, dtype=dtype, device=maps.device)[:, None, None]).cpu().numpy()
    return _framed_components(padded)


Bands = Callable[[int, int, int], torch.Tensor]  # (map index, start row, stop row) → (rows, W) values


def boxes_from_bands(
    bands: Bands,
    shape: tuple[int, int, int],
    threshold: Threshold = DEFAULT_THRESHOLD,
    largest_only: bool = True,
    min_area: float = 0.0,
    band_pixels: int = 1 << 21,
    levels: Sequence[float] | None = None,
) -> list[list[Box]]:
    """:func:`boxes_from_maps` of a ``(k, H, W)`` stack that is never held whole: ``bands(i,
    start, stop)`` gives rows ``start:stop`` of map ``i``, about ``band_pixels`` values at a
    time. One map's mask (``H x W`` bytes) is the largest thing held. ``levels``: the maps'
    :func:`band_levels`, when they are already known.

    >>> heat = torch.zeros(2, 20, 30); heat[0, 2:5, 3:9] = 1; heat[1, 10:20, 0:4] = 1
    >>> boxes_from_bands(lambda i, a, b: heat[i, a:b], (2, 20, 30), 0.5, band_pixels=60)
    [[(3, 2, 9, 5)], [(0, 10, 4, 20)]]
    """
    count, height, width = shape
    if levels is None:
        levels = band_levels(bands, shape, threshold, band_pixels)
    found = []
    for index, level in zip(range(count), levels, strict=True):
        padded = _framed(1, height, width)
        for start, chunk in _band_chunks(bands, index, height, width, band_pixels):
            values = chunk.detach().float().cpu().numpy()
            np.greater_equal(values, np.float32(level), out=padded[0, start:start + values.shape[0], 1:-1])
        [(areas, boxes)] = _framed_components(padded)
        found.append(_ranked_boxes(areas, boxes, largest_only, min_area, height * width))
    return found


def band_levels(bands: Bands, shape: tuple[int, int, int], threshold: Threshold,
                band_pixels: int = 1 << 21) -> list[float]:
    """:func:`map_levels` of a stack read in bands (as :func:`boxes_from_bands` reads it): a
    rule (``"otsu"``, ``"mean"``...) reads each map's values in passes of bands, with the
    same result as on the whole map (to float rounding).

    >>> heat = torch.zeros(1, 20, 30); heat[0, 2:5, 3:9] = 1
    >>> [round(level, 2) for level in band_levels(lambda i, a, b: heat[i, a:b], (1, 20, 30), "mean", 60)]
    [0.03]
    """
    count, height, width = shape

    def levels_of(index: int) -> float:
        def chunks() -> Iterator[torch.Tensor]:
            return (chunk for _, chunk in _band_chunks(bands, index, height, width, band_pixels))

        return streamed_threshold_level(chunks, threshold, height * width)

    return [levels_of(index) for index in range(count)]


def _band_chunks(bands: Bands, index: int, height: int, width: int,
                 band_pixels: int) -> Iterator[tuple[int, torch.Tensor]]:
    """``(start row, rows)`` of map ``index``, about ``band_pixels`` values at a time."""
    step = max(1, band_pixels // max(width, 1))
    for start in range(0, height, step):
        yield start, bands(index, start, min(start + step, height))


def streamed_threshold_level(chunks: Callable[[], Iterator[torch.Tensor]], threshold: Threshold,
                             count: int) -> float:
    """:func:`threshold_level` of a map read as chunks of its values (``chunks()`` starts a
    new pass over them; ``count`` values in all): a mean is one pass, Otsu two (range,
    histogram), ``"otsu2"`` four.

    >>> values = torch.rand(50, 40)
    >>> chunks = lambda: iter(values.split(7))
    >>> all(abs(streamed_threshold_level(chunks, rule, values.numel()) - threshold_level(values, rule)) < 1e-6
    ...     for rule in ("otsu", "otsu2", "mean"))
    True
    """
    if not isinstance(threshold, str):
        return float(threshold)
    if threshold == "mean":
        return float(sum(chunk.double().sum() for chunk in chunks()) / max(count, 1))
    if threshold not in ("otsu", "otsu2"):
        return threshold_level(torch.zeros(1, 1), threshold)  # the same error for an unknown rule

    def otsu(above: float | None) -> float:
        low, high = float("inf"), float("-inf")
        for chunk in chunks():
            chunk = chunk.float() if above is None else chunk.float()[chunk >= above]
            if chunk.numel():
                low, high = min(low, float(chunk.min())), max(high, float(chunk.max()))
        if high - low < 1e-12:
            return high
        histogram = functools.reduce(operator.add, (
            torch.histc(chunk.float() if above is None else chunk.float()[chunk >= above], bins=256, min=low, max=high)
            for chunk in chunks()))
        return otsu_of_histogram(histogram, low, high)

    level = otsu(None)
    return otsu(level) if threshold == "otsu2" else level


def box_iou(boxes_a: Sequence[Sequence[float]] | np.ndarray,
            boxes_b: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
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
    # no floor under the union: a box of tiny area has IoU 1 with itself, not area / 1e-12
    return np.divide(inter, union, out=np.zeros_like(union), where=union > 0)
