"""The one path from images to explanations, used by every door.

:class:`ExplainConfig` holds everything that decides an answer (classes, method, layer,
resize policy, input size, views, normalisation, box rule, precision); :class:`Pipeline`
is a model with a config: it preprocesses, runs the method with its views, and finishes
(maps at original resolution, normalised, boxes). ``camloc.explain``, ``camloc run``
(local and Ray), ``camloc serve``, ``camloc eval`` and its report all go through it.

>>> import camloc
>>> model = camloc.load_model()
>>> [result] = camloc.explain(model, ["examples/images/chelsea_cat.jpg"])
>>> result.targets[0].label in ("tabby", "tiger cat", "Egyptian cat")
True
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from .boxes import Box, Threshold, band_levels, boxes_from_bands, boxes_from_maps, map_levels, parse_threshold
from .config import DEFAULT_BOX_THRESHOLD, DEFAULT_NORMALIZATION, NORMALIZATIONS, ExplainConfig
from .errors import CamlocError, ClassError
from .images import (
    Geometry,
    coverage_mask,
    load_image,
    maps_to_original,
    preprocess,
    resized_geometry,
    stack_images,
)
from .maps import OriginalBands, normalized_to_original_batch
from .methods import ClassSelection, Method, MethodOutput, Selection, explain_batch, get_method
from .methods.views import CANDIDATES
from .models import ClassifierAdapter

NUM_PREDICTIONS = CANDIDATES  # predictions listed per image (top-5)


def network_size(model: ClassifierAdapter, input_size: int | None = None) -> tuple[int, int]:
    """The ``(height, width)`` fed to the network: ``input_size`` squared, or the model's own.

    >>> import camloc
    >>> network_size(camloc.load_model("resnet18", weights="random")), network_size(None, 320)
    ((224, 224), (320, 320))
    """
    return ExplainConfig(input_size=input_size).network_size(model)


# --------------------------------------------------------------------------- results


@dataclass
class Prediction:
    """A class of the model with its softmax probability: ``index``, ``label``, ``score``."""

    index: int
    label: str
    score: float

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "label": self.label, "score": round(self.score, 6)}


@dataclass
class Explanation:
    """One image explained: predictions, maps at original resolution, boxes.

    ``feature_maps`` are the method's raw class scores on the feature grid (``(k, h, w)``),
    ``maps`` the same resampled to every original pixel (``(k, H, W)``, computed on first
    use), ``normalized`` the maps at original resolution scaled to [0, 1] over the pixels the
    network saw (``BoxOptions.normalization``; at another size when :func:`finish` was asked
    for one, as ``camloc serve`` does: ``coverage`` too), ``boxes[i]`` the boxes of class
    ``targets[i]`` in original pixels (largest component first), cut at ``levels[i]`` (the
    box rule's level on that map at original resolution, a fraction of its range).
    """

    geometry: Geometry
    predictions: list[Prediction]
    targets: list[Prediction]
    feature_maps: torch.Tensor
    normalized: torch.Tensor
    boxes: list[list[Box]]
    method: str = "cam"
    source: str | None = None
    coverage: torch.Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    levels: list[float] = field(default_factory=list)

    @functools.cached_property
    def maps(self) -> torch.Tensor:
        """Raw class scores at original resolution ``(k, H, W)`` (resampled once, on first use)."""
        return maps_to_original(self.feature_maps, self.geometry)

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` of the original image."""
        return self.geometry.original_size[1], self.geometry.original_size[0]

    def to_record(self) -> dict[str, Any]:
        """The results.jsonl record (without ``outputs``)."""
        return {
            "image": self.source,
            "width": self.size[0],
            "height": self.size[1],
            "method": self.method,
            "predictions": [p.to_dict() for p in self.predictions],
            "cams": [
                {**target.to_dict(), "boxes": [list(box) for box in boxes]}
                for target, boxes in zip(self.targets, self.boxes, strict=True)
            ],
            "outputs": {},
            "error": None,
        }


@dataclass(frozen=True)
class BoxOptions:
    """How maps become boxes: keep ``>= threshold`` of the normalised map, then the largest
    component (or all components of at least ``min_area`` of the image). ``threshold`` is a
    fraction, or a rule adapting to each map (``"otsu"``, ``"otsu2"``, ``"mean"``)."""

    threshold: Threshold = DEFAULT_BOX_THRESHOLD
    largest_only: bool = True
    min_area: float = 0.0
    normalization: str = DEFAULT_NORMALIZATION

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "threshold", parse_threshold(self.threshold))
        except ValueError as error:
            raise ClassError(str(error)) from None
        if self.normalization not in NORMALIZATIONS:
            raise ClassError(f"unknown normalisation {self.normalization!r}; choose from "
                             f"{', '.join(NORMALIZATIONS)}")
        if not 0.0 <= self.min_area < 1.0:
            raise ClassError(f"min area must be a fraction of the image in [0, 1), got {self.min_area}")


def finish(
    output: MethodOutput,
    geometries: Sequence[Geometry],
    model: ClassifierAdapter,
    box_options: BoxOptions | None = None,
    sources: Sequence[str | None] | None = None,
    sizes: Sequence[tuple[int, int]] | None = None,
) -> list[Explanation]:
    """Method output → per-image explanations at original resolution, with boxes.

    The maps of images that share a size are normalised and resampled together, in one
    resampling (:func:`camloc.boxes.normalized_to_original`; the raw ``maps`` at original
    resolution are resampled when first read); the per-image rest (thresholds, connected
    components) runs on a small thread pool when the batch is large enough to pay for it
    (the heavy numpy steps release the GIL).

    ``sizes[i] = (height, width)``: ``normalized`` (and ``coverage``) sampled at that size
    instead (the image resized to it, :func:`camloc.images.resized_geometry`), and the boxes,
    still in original pixels, found a band of rows at a time
    (:class:`camloc.maps.OriginalBands`): the full-size maps are never held (``camloc serve``).
    """
    box_options = box_options or BoxOptions()
    probabilities = output.logits.float().softmax(dim=1)
    top = probabilities.topk(min(NUM_PREDICTIONS, probabilities.shape[1]), dim=1)
    target_scores = probabilities.gather(1, output.classes)
    top_values, top_indices = top.values.cpu().tolist(), top.indices.cpu().tolist()
    classes, scores = output.classes.cpu().tolist(), target_scores.cpu().tolist()
    sampled = list(geometries)
    if sizes is not None:
        sampled = [resized_geometry(g, size) if size != g.original_size else g
                   for g, size in zip(geometries, sizes, strict=True)]
    normalized = normalized_to_original_batch(output.maps, sampled, box_options.normalization)
    names = model.class_names

    def boxes_of(i: int) -> tuple[list[list[Box]], list[float]]:
        """Image ``i``'s boxes and the level each map was cut at (at original resolution)."""
        options = box_options
        if sampled[i] is geometries[i]:
            levels = map_levels(normalized[i], options.threshold)
            boxes = boxes_from_maps(normalized[i], options.threshold, options.largest_only, options.min_area, levels)
            return boxes, levels
        bands = OriginalBands(output.maps[i], geometries[i], options.normalization)
        levels = band_levels(bands.band, bands.shape, options.threshold)
        return boxes_from_bands(bands.band, bands.shape, options.threshold, options.largest_only, options.min_area,
                                levels=levels), levels

    def explanation(i: int) -> Explanation:
        geometry = sampled[i]
        covered = coverage_mask(geometry, output.maps.device) if geometry.policy == "center-crop" else None
        boxes, levels = boxes_of(i)
        return Explanation(
            geometry=geometries[i],
            predictions=[Prediction(c, names[c], s) for c, s in zip(top_indices[i], top_values[i], strict=True)],
            targets=[Prediction(c, names[c], s) for c, s in zip(classes[i], scores[i], strict=True)],
            feature_maps=output.maps[i].float(),
            normalized=normalized[i],
            boxes=boxes,
            levels=levels,
            method=output.method,
            source=sources[i] if sources is not None else None,
            coverage=covered,
        )

    pixels = sum(maps.numel() for maps in normalized)
    return map_in_parallel(explanation, range(len(geometries)), parallel=pixels >= PARALLEL_PIXELS)


PARALLEL_PIXELS = 2_000_000  # below this many map pixels a batch is finished in the caller's thread
_POOLS: dict[int, ThreadPoolExecutor] = {}  # by process id: a forked child starts its own


def map_in_parallel(function: Callable[[int], Any], indices: Sequence[int], parallel: bool = True) -> list[Any]:
    """``[function(i) for i in indices]``, on camloc's finishing threads when ``parallel``
    and there is more than one core and one index (results in order, errors re-raised).

    >>> map_in_parallel(lambda i: i * i, range(4))
    [0, 1, 4, 9]
    """
    threads = min(8, os.cpu_count() or 1)
    if not parallel or threads < 2 or len(indices) < 2:
        return [function(i) for i in indices]
    pool = _POOLS.get(os.getpid())
    if pool is None:
        pool = _POOLS[os.getpid()] = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="camloc-finish")
    return list(pool.map(function, indices))


ImageInput = str | os.PathLike | Image.Image | torch.Tensor | np.ndarray


def as_pil(image: ImageInput) -> Image.Image:
    """A path, PIL image, ``(3, H, W)`` tensor (uint8, or float in [0, 1]) or ``(H, W, 3)`` array → RGB."""
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, (str, os.PathLike)):
        return load_image(image)
    array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if isinstance(image, torch.Tensor) and array.ndim == 3 and array.shape[0] in (1, 3):
        array = array.transpose(1, 2, 0)
    if array.dtype != np.uint8:
        array = (np.clip(array, 0, 1) * 255).round().astype(np.uint8)
    return Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array)


# --------------------------------------------------------------------------- the pipeline


def selection_of(config: ExplainConfig) -> ClassSelection:
    """The classes ``config`` asks for."""
    return ClassSelection(topk=config.topk, rank=config.rank, classes=config.classes)


def box_options_of(config: ExplainConfig, model: ClassifierAdapter, method: str | None = None) -> BoxOptions:
    """How ``config`` turns ``model``'s maps into boxes (its rule, else the model's, else that
    of ``method``, the method the config's resolves to)."""
    return BoxOptions(config.box_threshold(model, method), config.largest_only, config.min_area,
                      config.normalization)


class Pipeline:
    """A model with an :class:`ExplainConfig`: preprocess → method with views → finish.

    Building one checks the config against the model (classes, method, layer) before any
    image is read. Hooks live on the shared module, so calls on one model from several
    threads must be serialised (``camloc serve`` holds a lock).

    >>> import camloc
    >>> pipeline = Pipeline(camloc.load_model(), ExplainConfig(topk=2))
    >>> [r] = pipeline.explain(["examples/images/coffee.jpg"])
    >>> len(r.targets), r.size
    (2, (600, 400))
    """

    def __init__(self, model: ClassifierAdapter, config: ExplainConfig | None = None):
        self.model = model
        self.config = config = config or ExplainConfig()
        self.selection = selection_of(config)
        self.selection.resolve(model)  # unknown classes fail here
        if config.amp and model.runtime != "torch":
            raise CamlocError(f"--amp (bfloat16 autocast) runs in eager PyTorch, but {model.name} runs in "
                              f"{model.runtime}; load it with runtime='torch' (--runtime torch)")
        self.method: Method = get_method(config.method, model, layer=config.layer)
        self.box_options = box_options_of(config, model, self.method.name)
        self.size = network_size(model, config.input_size)

    def preprocess(self, image: Image.Image) -> tuple[torch.Tensor, Geometry]:
        """An RGB image → ``(normalised (3, h, w) tensor, geometry)`` for the network."""
        return preprocess(image, self.size, self.config.policy, self.model.mean, self.model.std)

    def forward(self, batch: torch.Tensor, selection: Selection | None = None) -> MethodOutput:
        """The method with the config's views on a normalised batch (moved to the model's
        device); ``selection`` overrides the config's classes (e.g. ground-truth classes)."""
        device = self.model.device
        if device.type == "cuda":
            batch = batch.pin_memory().to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        else:
            batch = batch.to(device)
        config = self.config
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.amp):
            output = explain_batch(self.method, batch, selection or self.selection, config.flip, config.scales)
        return MethodOutput(output.logits.float(), output.classes, output.maps.float(), output.method)

    def finish(self, output: MethodOutput, geometries: Sequence[Geometry],
               sources: Sequence[str | None] | None = None,
               sizes: Sequence[tuple[int, int]] | None = None) -> list[Explanation]:
        """Method output → explanations at original resolution (``normalized`` at ``sizes``,
        see :func:`finish`), with boxes."""
        return finish(output, geometries, self.model, self.box_options, sources, sizes)

    def explain_tensors(self, tensors: Sequence[torch.Tensor], geometries: Sequence[Geometry],
                        sources: Sequence[str | None] | None = None,
                        selection: Selection | None = None) -> list[Explanation]:
        """Preprocessed images → explanations (forward, then finish)."""
        output = self.forward(stack_images(tensors), selection)
        return self.finish(output, geometries, sources)

    def explain(self, images: Sequence[ImageInput] | ImageInput, batch_size: int = 32) -> list[Explanation]:
        """Images (paths, PIL images, tensors, arrays) → explanations, in batches."""
        if isinstance(images, (str, os.PathLike, Image.Image, torch.Tensor, np.ndarray)):
            images = [images]
        results: list[Explanation] = []
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            tensors, geometries = zip(*(self.preprocess(as_pil(image)) for image in chunk), strict=True)
            sources = [str(image) if isinstance(image, (str, os.PathLike)) else None for image in chunk]
            results.extend(self.explain_tensors(tensors, geometries, sources))
        return results


def explain(
    model: ClassifierAdapter,
    images: Sequence[ImageInput] | ImageInput,
    config: ExplainConfig | None = None,
    *,
    batch_size: int = 32,
    **options: Any,
) -> list[Explanation]:
    """Explain images (paths, PIL images, tensors): predictions, maps, boxes.

    ``config`` (default :class:`ExplainConfig()`) and/or its fields as keyword ``options``
    (``topk=3``, ``classes=["tabby"]``, ``method="gradcam"``, ``threshold=0.2``, ``flip=True``
    ...), which override the config's. Plain CAM as in the paper, on a model loaded with
    ``dilate=False``: ``method="cam", threshold=0.2``.

    >>> import camloc
    >>> model = camloc.load_model()
    >>> [r] = camloc.explain(model, "examples/images/coffee.jpg", topk=3)
    >>> len(r.targets), tuple(r.normalized.shape)
    (3, (3, 400, 600))
    """
    config = config or ExplainConfig()
    if options:
        unknown = set(options) - {f.name for f in dataclasses.fields(ExplainConfig)}
        if unknown:
            raise TypeError(f"explain() got unknown option(s) {', '.join(sorted(unknown))}")
        config = config.replace(**options)
    return Pipeline(model, config).explain(images, batch_size=batch_size)
