"""Maps to [0, 1], at the image's original resolution.

Bilinear resampling is linear with weights summing to one, so each map is normalised on the
feature grid and resampled once; the full-size range is read off the samples where a
piecewise-linear map can peak (:func:`camloc.images.extreme_samples`).

>>> import torch
>>> normalize_maps(torch.tensor([[[1.0, 3.0], [2.0, 5.0]]])).tolist()
[[[0.0, 0.5], [0.25, 1.0]]]
"""

from __future__ import annotations

import torch

from .config import NORMALIZATIONS
from .images import (
    Geometry,
    coverage_axes,
    coverage_mask,
    extreme_samples,
    group_by_geometry,
    resampling_matrices,
)

# A map whose range is under this fraction of its values' magnitude is flat: what is left is
# float32 rounding (a walked map's eight products of 196-term sums) or the differences
# between runtimes, which agree with eager PyTorch to about 1e-5 of the values. Real maps
# span far more: the CAMs of the default model's top-5 classes on 298 photos at least 0.87
# of their magnitude, their walked maps at least 0.035.
FLAT_RANGE = 1e-4


def flat_safe_span(low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """``high - low``, or infinity where the range is noise (under :data:`FLAT_RANGE` of the
    values' magnitude, or 1e-12): dividing by it makes a flat map all 0, not all noise."""
    span = high - low
    noise = torch.maximum(high.abs(), low.abs()).mul(FLAT_RANGE).clamp_min(1e-12)
    return torch.where(span <= noise, torch.full_like(span, float("inf")), span)


def normalize_maps(
    maps: torch.Tensor, mask: torch.Tensor | None = None, mode: str = "minmax"
) -> torch.Tensor:
    """Normalise each ``(..., H, W)`` map to [0, 1] over the pixels in ``mask``.

    ``"minmax"``: ``(map - min) / (max - min)``; ``"max"``: negative scores (evidence against
    the class) become 0 and the rest is divided by the maximum, ``relu(map) / max``.
    Pixels outside the mask (not seen by the network) become 0. A flat map (range within
    float32 rounding of its values) becomes all 0.

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
    normalized = flat.sub(low).div_(flat_safe_span(low, high))  # in [0, 1] where low and high were taken
    if mask is not None:  # masked_fill, not a product: an empty mask leaves inf - inf there
        normalized = normalized.clamp_(0, 1).masked_fill_(~valid, 0)
    return normalized.view_as(maps)


def normalized_to_original(maps: torch.Tensor, geometry: Geometry, mode: str = "minmax") -> torch.Tensor:
    """``(k, h_f, w_f)`` maps → normalised ``(k, H, W)`` maps at original resolution:
    ``normalize_maps(maps_to_original(maps, geometry), coverage, mode)`` to float rounding
    (coverage: the pixels a center crop kept), for the cost of one resampling.

    Resampling is linear with weights that sum to one, so normalising commutes with it:
    the range is read off the few samples where a resampled map can peak
    (:func:`extreme_samples`, ~(2 h_f + 2) x (2 w_f + 2) values), the small map is
    normalised, and only that is resampled to full size.

    >>> geometry = Geometry((40, 60), (7, 7), (7 / 40, 7 / 60), (0.0, 0.0), "squash")
    >>> normalized = normalized_to_original(torch.randn(2, 7, 7), geometry)
    >>> tuple(normalized.shape), normalized.amin().item(), normalized.amax(dim=(1, 2)).tolist()
    ((2, 40, 60), 0.0, [1.0, 1.0])
    """
    [normalized] = normalized_to_original_batch(maps[None], [geometry], mode)
    return normalized


def normalized_to_original_batch(maps: torch.Tensor, geometries: list[Geometry],
                                 mode: str = "minmax") -> list[torch.Tensor]:
    """:func:`normalized_to_original` of each image of ``(N, k, h_f, w_f)`` maps; images
    that share a geometry are resampled in one batched matmul."""
    if mode not in NORMALIZATIONS:
        raise ValueError(f"unknown normalisation {mode!r}; choose from {', '.join(NORMALIZATIONS)}")
    results: dict[int, torch.Tensor] = {}
    with torch.autocast(maps.device.type, enabled=False):  # float32 maps, even inside --amp
        for geometry, indices in group_by_geometry(geometries).items():
            chosen = maps[indices] if len(indices) < len(geometries) else maps
            for index, result in zip(indices, _normalized_group(chosen.float(), geometry, mode), strict=True):
                results[index] = result
    return [results[index] for index in range(len(geometries))]


def _normalized_group(maps: torch.Tensor, geometry: Geometry, mode: str) -> torch.Tensor:
    """``(n, k, h, w)`` maps of images that share ``geometry`` → ``(n, k, H, W)`` normalised."""
    small, rows, cols, spots = _normalized_on_grid(maps, geometry, mode)
    normalized = (rows @ small @ cols.T).clamp_(0, 1)  # (n, k, H, W)
    if geometry.policy == "center-crop":
        normalized.mul_(coverage_mask(geometry, maps.device))
    pixels = normalized.view(*normalized.shape[:2], -1)
    for spot, value in spots:
        pixels.scatter_(2, spot[..., None], value[..., None])
    return normalized


def _normalized_on_grid(maps: torch.Tensor, geometry: Geometry, mode: str
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    """``(n, k, h, w)`` maps → ``(small, rows, cols, spots)``: the maps normalised on the
    feature grid (``rows @ small @ cols.T``, clamped to [0, 1], is the normalised map at
    original resolution) and, per image and class, the flat pixel index of the peak (and the
    trough) with the value it gets: exactly 1 (0), as :func:`normalize_maps` gives them, not
    1 - ε (a flat map is all 0 already)."""
    rows, cols = resampling_matrices(geometry, maps.shape[-2:], maps.device)
    cropped = geometry.policy == "center-crop"
    (height, width), (input_h, input_w) = geometry.original_size, geometry.input_size
    (sy, sx), (oy, ox) = geometry.scale, geometry.offset
    peak_rows = extreme_samples(height, maps.shape[-2], input_h, sy, oy, cropped).to(maps.device)
    peak_cols = extreme_samples(width, maps.shape[-1], input_w, sx, ox, cropped).to(maps.device)
    probe = (rows[peak_rows] @ maps @ cols[peak_cols].T).flatten(2)  # (n, k, peaks)
    high, at_high = probe.max(-1)
    low, at_low = probe.min(-1) if mode == "minmax" else (torch.zeros_like(high), None)
    span = flat_safe_span(low, high)
    small = (maps - low[..., None, None]) / span[..., None, None]
    spots = []
    for at, value in ((at_high, span.isfinite().float()), (at_low, torch.zeros_like(span))):
        if at is not None:
            spots.append((peak_rows[at // peak_cols.numel()] * width + peak_cols[at % peak_cols.numel()], value))
    return small, rows, cols, spots


class OriginalBands:
    """The normalised maps of one image at original resolution, a band of rows at a time.

    ``band(i, start, stop)`` is ``normalized_to_original(maps, geometry, mode)[i, start:stop]``
    (to float rounding) without ever holding the ``(k, H, W)`` stack: what boxes at original
    resolution need from an image of 40 megapixels with 20 classes costs one band, not 3 GB.

    >>> geometry = Geometry((40, 60), (7, 7), (7 / 40, 7 / 60), (0.0, 0.0), "squash")
    >>> maps = torch.randn(2, 7, 7)
    >>> bands = OriginalBands(maps, geometry)
    >>> torch.allclose(bands.band(1, 10, 20), normalized_to_original(maps, geometry)[1, 10:20], atol=1e-6)
    True
    """

    def __init__(self, maps: torch.Tensor, geometry: Geometry, mode: str = "minmax"):
        if mode not in NORMALIZATIONS:
            raise ValueError(f"unknown normalisation {mode!r}; choose from {', '.join(NORMALIZATIONS)}")
        with torch.autocast(maps.device.type, enabled=False):
            small, self.rows, self.cols, spots = _normalized_on_grid(maps[None].float(), geometry, mode)
        self.small = small[0]
        self.spots = [(spot[0].tolist(), value[0].tolist()) for spot, value in spots]
        self.geometry = geometry
        self.coverage = coverage_axes(geometry, maps.device) if geometry.policy == "center-crop" else None

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(k, H, W)``."""
        return (self.small.shape[0], *self.geometry.original_size)

    def band(self, index: int, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` of map ``index`` at original resolution, ``(stop - start, W)`` float32."""
        with torch.autocast(self.small.device.type, enabled=False):
            values = (self.rows[start:stop] @ self.small[index] @ self.cols.T).clamp_(0, 1)
        if self.coverage is not None:
            rows, cols = self.coverage
            values.mul_(rows[start:stop, None] & cols[None, :])
        width = self.geometry.original_size[1]
        for spots, fills in self.spots:
            y, x = divmod(spots[index], width)
            if start <= y < stop:
                values[y - start, x] = fills[index]
        return values
