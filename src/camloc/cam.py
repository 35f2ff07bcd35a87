"""Class Activation Maps, batched, and the ``explain`` pipeline.

A method turns a batch into ``(logits, class indices, maps at feature resolution)``.
:class:`CAMMethod` is the base: it owns the forward pass (and, in subclasses, hooks and
gradients); a method only says how to weight the feature channels. Plain CAM is exact:
``maps = einsum(W[classes], features)``, one matmul for all classes of a whole batch.

>>> import camloc
>>> model = camloc.load_model()
>>> [result] = camloc.explain(model, ["examples/images/chelsea_cat.jpg"])
>>> result.targets[0].label in ("tabby", "tiger cat", "Egyptian cat")
True
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image

from .boxes import (
    NORMALIZATIONS,
    Box,
    Threshold,
    boxes_from_maps,
    normalized_to_original_batch,
    parse_threshold,
)
from .errors import CamlocError, ClassError, ModelError
from .images import Geometry, coverage_mask, load_image, maps_to_original, preprocess
from .models import ClassifierAdapter, inference_mode

NUM_PREDICTIONS = 5
# camloc's default localization: one view at the model's own size, boxes at 0.25 of the
# min-max normalised map (the paper: 0.2). Views at 2x (--scales 1,2) and mirrors (--flip)
# are options: they cost 5-10x the network work for +2 points of MaxBoxAccV2 on the dev set.
# docs/localization.md has the measurements.
DEFAULT_INPUT_SCALE = 1.0  # network input side = this x the model's own size
DEFAULT_FLIP = False  # --flip: measured to add nothing on the dev set
DEFAULT_BOX_THRESHOLD = 0.25  # τ of camloc's boxes (the paper's rule is 0.2)
DEFAULT_NORMALIZATION = "minmax"  # as the paper; "max" (relu / max) is the alternative
DEFAULT_SCALES = (1.0,)  # --scales 1,2: +2 points MaxBoxAccV2 on the dev set for 5x the network work


def network_size(model: ClassifierAdapter, input_size: int | None = None) -> tuple[int, int]:
    """The ``(height, width)`` fed to the network: ``input_size`` squared, or by default the
    model's own size times :data:`DEFAULT_INPUT_SCALE` (rounded to a multiple of 32 when
    that is not 1).

    >>> import camloc
    >>> network_size(camloc.load_model("resnet18", weights="random")), network_size(None, 320)
    ((224, 224), (320, 320))
    """
    if input_size is not None:
        if input_size < 16:
            raise CamlocError(f"--input-size must be at least 16 pixels, got {input_size}")
        return (int(input_size), int(input_size))
    if DEFAULT_INPUT_SCALE == 1.0:
        return tuple(model.input_size)
    return tuple(max(32, round(side * DEFAULT_INPUT_SCALE / 32) * 32) for side in model.input_size)


# --------------------------------------------------------------------------- choosing classes


@dataclass(frozen=True)
class ClassSelection:
    """Which classes to explain: the top ``topk``, the ``rank``-th most likely (1-based),
    or named/indexed ``classes``.

    >>> ClassSelection(topk=3).count
    3
    """

    topk: int = 1
    rank: int | None = None
    classes: tuple[int | str, ...] = ()

    def __post_init__(self):
        if self.topk < 1:
            raise ClassError(f"--topk must be at least 1, got {self.topk}")
        if self.rank is not None and self.rank < 1:
            raise ClassError(f"--rank must be at least 1 (1 = most likely), got {self.rank}")

    @property
    def count(self) -> int:
        return len(self.classes) or (1 if self.rank is not None else self.topk)

    def resolve(self, model: ClassifierAdapter) -> list[int] | None:
        """Fixed class indices (validated), or ``None`` when they depend on the scores."""
        if not self.classes:
            if max(self.topk, self.rank or 1) > model.num_classes:
                raise ClassError(f"asked for rank {max(self.topk, self.rank or 1)} of a model "
                                 f"with {model.num_classes} classes")
            return None
        return [model.class_index(c) for c in self.classes]

    def indices(self, logits: torch.Tensor, model: ClassifierAdapter) -> torch.Tensor:
        """``(N, k)`` class indices to explain for each image of the batch."""
        fixed = self.resolve(model)
        if fixed is not None:
            return torch.tensor(fixed, device=logits.device).expand(logits.shape[0], -1)
        order = logits.topk(max(self.topk, self.rank or 1), dim=1).indices
        return order[:, self.rank - 1 : self.rank] if self.rank is not None else order


# --------------------------------------------------------------------------- methods


@dataclass
class MethodOutput:
    logits: torch.Tensor  # (N, C)
    classes: torch.Tensor  # (N, k) explained class indices
    maps: torch.Tensor  # (N, k, h, w) at feature resolution
    method: str


class CAMMethod:
    """Base class of map methods; this one is plain CAM (Zhou et al. 2016).

    Subclasses override :meth:`compute`; the base restores the model's mode and the grad
    state, and owns hooks on a target layer (:meth:`capture`). Parameters are never touched
    (no per-call freezing of ``requires_grad``). Hooks live on the shared module, so calls on
    one model from several threads must be serialised (``camloc serve`` holds a lock).

    >>> import torch, camloc
    >>> model = camloc.load_model("resnet18", weights="random")
    >>> out = CAMMethod(model)(torch.randn(2, 3, 224, 224), ClassSelection(topk=3))
    >>> tuple(out.maps.shape)
    (2, 3, 14, 14)
    """

    name: ClassVar[str] = "cam"
    needs_grad: ClassVar[bool] = False

    def __init__(self, model: ClassifierAdapter, layer: str | None = None):
        self.model = model
        if layer is not None and self.name == "cam" and layer != model.feature_layer:
            model.require_cam()
            raise ModelError(f"plain CAM uses the layer before pooling ({model.feature_layer!r}); "
                             "--layer picks the layer of the gradient methods (--method gradcam, "
                             "gradcam++, layercam or scorecam)")
        self.layer = layer

    def __call__(self, batch: torch.Tensor, selection: ClassSelection) -> MethodOutput:
        with inference_mode(self.model.model):  # gradient methods enable grad at their layer
            return self.compute(batch, selection)

    def compute(self, batch: torch.Tensor, selection: ClassSelection) -> MethodOutput:
        logits, features = self.model.forward_with_features(batch)
        classes = selection.indices(logits, self.model)
        return MethodOutput(logits, classes, class_maps(self.model, features, classes), self.name)

    @contextmanager
    def hooked(self, layer: str, hook: Callable) -> Iterator[None]:
        """``hook`` as a forward hook on ``layer`` for the block; always removed after."""
        handle = self.model.module(layer).register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    def capture(self, batch: torch.Tensor, layer: str) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward: ``(logits, output of layer)``.

        For a method that :attr:`needs_grad`, the forward runs without autograd up to the
        layer; there the output is replaced by a leaf that requires grad and autograd is
        switched on for the rest of the forward (then restored), so ``autograd.grad(score,
        output)`` costs only the part above the layer and no graph is kept below it.
        """
        captured: list[torch.Tensor] = []

        def keep(_module, _inputs, output):
            if not isinstance(output, torch.Tensor):
                raise ModelError(f"layer {layer!r} returns {type(output).__name__}, not a tensor")
            if not self.needs_grad:
                captured[:] = [output.clone()]  # as the layer gave it, before in-place layers
                return None
            torch.set_grad_enabled(True)  # the graph starts here
            leaf = output.detach().requires_grad_()
            captured[:] = [leaf]
            return leaf.clone()  # not a leaf: in-place layers after it stay legal

        grad_mode = torch.is_grad_enabled()
        try:
            with self.hooked(layer, keep):
                logits = self.model.model(batch)
        finally:
            torch.set_grad_enabled(grad_mode)
        if not captured:
            raise ModelError(f"layer {layer!r} is not used in {self.model.name}'s forward pass")
        return logits, captured[0]


def class_maps(model: ClassifierAdapter, features: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Exact CAMs ``(N, k, h, w)`` of ``classes (N, k)``: ``mean_xy(map) + bias == logit``."""
    weight, scale, _ = model.head(features)
    chosen = weight[classes]  # (N, k, K)
    if scale is not None:
        chosen = chosen * scale[:, None, :]
    return torch.einsum("nkc,nchw->nkhw", chosen.to(features.dtype), features)


METHODS: dict[str, type[CAMMethod]] = {"cam": CAMMethod}


class MirroredSelection:
    """The classes of a batch stacked with its mirror: chosen once on the two views' mean
    logits, the same for an image and its mirror."""

    def __init__(self, selection: ClassSelection):
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

    def __init__(self, selection: ClassSelection, count: int = NUM_PREDICTIONS):
        self.selection, self.count, self.chosen = selection, count, None

    def resolve(self, model: ClassifierAdapter) -> list[int] | None:
        return self.selection.resolve(model)

    def indices(self, logits: torch.Tensor, model: ClassifierAdapter) -> torch.Tensor:
        if self.chosen is None:
            plain = isinstance(self.selection, ClassSelection)
            if not plain or self.selection.resolve(model) is not None:
                self.chosen = self.selection.indices(logits, model)
            else:
                wanted = max(self.count, self.selection.topk, self.selection.rank or 1)
                self.chosen = logits.topk(min(wanted, logits.shape[1]), dim=1).indices
        return self.chosen


def _one_scale(
    method: CAMMethod, batch: torch.Tensor, selection: Any, flip: bool
) -> MethodOutput:
    if not flip:
        return method(batch, selection)
    count = batch.shape[0]
    both = method(torch.cat([batch, batch.flip(-1)]), MirroredSelection(selection))
    logits = (both.logits[:count] + both.logits[count:]) / 2
    maps = (both.maps[:count] + both.maps[count:].flip(-1)) / 2
    return MethodOutput(logits, both.classes[:count], maps, both.method)


def explain_batch(
    method: CAMMethod,
    batch: torch.Tensor,
    selection: ClassSelection,
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

    >>> import torch, camloc
    >>> model = camloc.load_model("resnet18", weights="random")
    >>> out = explain_batch(CAMMethod(model), torch.randn(2, 3, 64, 64), ClassSelection(),
    ...                     flip=True, scales=(1.0, 0.5))
    >>> tuple(out.maps.shape), tuple(out.logits.shape)
    ((2, 1, 4, 4), (2, 1000))
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


def get_method(name: str, model: ClassifierAdapter, layer: str | None = None) -> CAMMethod:
    """The method called ``name`` (``"auto"``: exact CAM when the head allows it), on ``layer``
    (``None``: the method's default layer)."""
    if name == "auto":
        exact = model.head_error is None and layer in (None, model.feature_layer)
        name = "cam" if exact or "gradcam" not in METHODS else "gradcam"
    if name not in METHODS:
        raise ModelError(f"unknown method {name!r}; choose from auto, {', '.join(METHODS)}")
    if name == "cam":
        model.require_cam()
    return METHODS[name](model, layer=layer)


# --------------------------------------------------------------------------- results


@dataclass
class Prediction:
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
    network saw (``BoxOptions.normalization``), ``boxes[i]`` the boxes of class
    ``targets[i]`` (largest component first).
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

    def __post_init__(self):
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
    box_options: BoxOptions = BoxOptions(),
    sources: Sequence[str | None] | None = None,
) -> list[Explanation]:
    """Method output → per-image explanations at original resolution, with boxes.

    The maps of images that share a size are normalised and resampled together, in one
    resampling (:func:`camloc.boxes.normalized_to_original`; the raw ``maps`` at original
    resolution are resampled when first read); the per-image rest (thresholds, connected
    components) runs on a small thread pool when the batch is large enough to pay for it
    (the heavy numpy steps release the GIL).
    """
    probabilities = output.logits.float().softmax(dim=1)
    top = probabilities.topk(min(NUM_PREDICTIONS, probabilities.shape[1]), dim=1)
    target_scores = probabilities.gather(1, output.classes)
    top_values, top_indices = top.values.cpu().tolist(), top.indices.cpu().tolist()
    classes, scores = output.classes.cpu().tolist(), target_scores.cpu().tolist()
    normalized = normalized_to_original_batch(output.maps, list(geometries), box_options.normalization)
    names = model.class_names

    def explanation(i: int) -> Explanation:
        geometry = geometries[i]
        covered = coverage_mask(geometry, output.maps.device) if geometry.policy == "center-crop" else None
        return Explanation(
            geometry=geometry,
            predictions=[Prediction(c, names[c], s) for c, s in zip(top_indices[i], top_values[i], strict=True)],
            targets=[Prediction(c, names[c], s) for c, s in zip(classes[i], scores[i], strict=True)],
            feature_maps=output.maps[i].float(),
            normalized=normalized[i],
            boxes=boxes_from_maps(normalized[i], box_options.threshold, box_options.largest_only,
                                  box_options.min_area),
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


def explain(
    model: ClassifierAdapter,
    images: Sequence[ImageInput] | ImageInput,
    *,
    topk: int = 1,
    rank: int | None = None,
    classes: Sequence[int | str] = (),
    method: str = "auto",
    layer: str | None = None,
    policy: str = "squash",
    threshold: Threshold = DEFAULT_BOX_THRESHOLD,
    largest_only: bool = True,
    min_area: float = 0.0,
    batch_size: int = 32,
    input_size: int | None = None,
    flip: bool = DEFAULT_FLIP,
    scales: Sequence[float] = DEFAULT_SCALES,
    normalization: str = DEFAULT_NORMALIZATION,
) -> list[Explanation]:
    """Explain images (paths, PIL images, tensors): predictions, maps, boxes.

    ``input_size``: the side images are resized to for the network (default: the model's,
    see :func:`network_size`); ``flip``: average with the mirrored image; ``scales``:
    also average views resized by these factors; ``normalization``: how maps are scaled to
    [0, 1] before the ``threshold`` (see :func:`camloc.boxes.normalize_maps`). Plain CAM as in
    the paper is ``method="cam", threshold=0.2, input_size=224, flip=False, scales=(1,),
    normalization="minmax"``.

    >>> import camloc
    >>> model = camloc.load_model()
    >>> [r] = camloc.explain(model, "examples/images/coffee.jpg", topk=3)
    >>> len(r.targets), tuple(r.normalized.shape)
    (3, (3, 400, 600))
    """
    if isinstance(images, (str, os.PathLike, Image.Image, torch.Tensor, np.ndarray)):
        images = [images]
    selection = ClassSelection(topk=topk, rank=rank, classes=tuple(classes))
    selection.resolve(model)
    box_options = BoxOptions(threshold, largest_only, min_area, normalization)
    runner = get_method(method, model, layer=layer)
    size = network_size(model, input_size)
    results: list[Explanation] = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        tensors, geometries = zip(*(preprocess(as_pil(im), size, policy, model.mean, model.std)
                                    for im in chunk), strict=True)
        batch = torch.stack(tensors).to(model.device)
        sources = [str(im) if isinstance(im, (str, os.PathLike)) else None for im in chunk]
        output = explain_batch(runner, batch, selection, flip, scales)
        results.extend(finish(output, geometries, model, box_options, sources))
    return results
