"""What decides an explanation: :class:`ExplainConfig`, camloc's defaults, and the parsing
of the options every door shares. Pure Python (no torch): the command line reads its
defaults from here without loading anything heavy.

>>> ExplainConfig().threshold is None, DEFAULT_BOX_THRESHOLD
(True, 0.25)
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .errors import CamlocError, ClassError

RESIZE_POLICIES: tuple[str, ...] = ("squash", "center-crop", "pad")
NORMALIZATIONS: tuple[str, ...] = ("minmax", "max")
# A threshold is a fraction of the map's range, or a rule that adapts it to each map.
Threshold = float | str
THRESHOLD_RULES: tuple[str, ...] = ("otsu", "otsu2", "mean")


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
    if not 0.0 <= float(value) <= 1.0:  # also refuses nan
        raise ValueError(f"threshold must be in [0, 1], got {value}")
    return float(value)


# camloc's defaults, defined here only. Localization: one view at the model's own size, the
# CAM walked over the network's feature affinities ("auto" → walkcam for exact heads), boxed
# by Otsu's split of each map; plain CAM boxes at 0.25 of the min-max normalised map (the
# paper: 0.2). Views at 2x (scales 1,2) and mirrors (flip) are options: they cost 5-10x the
# network work. docs/localization.md has the measurements.
DEFAULT_BOX_THRESHOLD = 0.25
# A method whose maps want another rule: walkcam's maps spread over the whole object, and
# Otsu's split of each map boxes it on photos and on small objects alike.
METHOD_BOX_THRESHOLDS: dict[str, Threshold] = {"walkcam": "otsu"}
DEFAULT_NORMALIZATION = "minmax"
DEFAULT_FLIP = False
DEFAULT_SCALES = (1.0,)
DEFAULT_POLICY = "squash"
DEFAULT_METHOD = "auto"
# Where plain CAM's forward pass runs (camloc.models.runtime): "auto" picks the fastest runtime
# whose answers agree with eager PyTorch on this machine, once per model (cached on disk).
RUNTIMES: tuple[str, ...] = ("auto", "torch", "onnxruntime", "openvino")
DEFAULT_RUNTIME = "auto"
GRADIENT_FREE_METHODS: tuple[str, ...] = ("auto", "cam", "walkcam")  # the methods a runtime can serve
MAX_SCALE = 4.0


def parse_scales(scales: str | Sequence[float]) -> tuple[float, ...]:
    """``"1,0.5"`` or ``(1, 0.5)`` → ``(1.0, 0.5)``; the first view is the input itself (1).

    >>> parse_scales("2,1"), parse_scales([1])
    ((1.0, 2.0), (1.0,))
    """
    try:
        parts = scales.split(",") if isinstance(scales, str) else list(scales)
        values = tuple(float(part) for part in parts if str(part).strip())
    except (TypeError, ValueError):
        raise CamlocError(f"--scales takes factors separated by commas (e.g. 1,0.5), got {scales!r}") from None
    if not values or any(not 0.1 <= s <= MAX_SCALE for s in values):
        raise CamlocError(f"--scales factors must be between 0.1 and {MAX_SCALE:g}, got {scales!r}")
    return values if values[0] == 1.0 else (1.0, *[s for s in values if s != 1.0])


@dataclass(frozen=True)
class ExplainConfig:
    """Everything that decides an explanation; every door builds one and calls :class:`Pipeline`.

    - classes: the top ``topk``, or the ``rank``-th most likely (1-based), or ``classes``
      (names or indices);
    - ``method`` (``"auto"``: walkcam when the CAM is exact, plain CAM for ONNX/Keras models,
      else Grad-CAM; :func:`camloc.methods.resolve_method`) on ``layer`` (``None``: the
      method's default);
    - input: resize ``policy`` (squash | center-crop | pad), ``input_size`` (side; ``None``:
      the model's own);
    - views: ``flip`` (average with the mirror), ``scales`` (average views resized by these
      factors);
    - boxes: ``normalization`` of the maps (minmax | max), ``threshold`` (a fraction of the
      normalised map, or a rule: otsu, otsu2, mean; ``None``: the model's recommended rule if
      it has one, else the method's, see :meth:`box_threshold`), ``largest_only`` component or all of at
      least ``min_area`` of the image;
    - precision: ``amp`` (bfloat16 autocast for the network; maps stay float32).

    Values are checked on construction (one-line :class:`CamlocError`).

    >>> ExplainConfig(topk=3, threshold="otsu").threshold
    'otsu'
    >>> ExplainConfig(scales="2").scales
    (1.0, 2.0)
    """

    topk: int = 1
    rank: int | None = None
    classes: tuple[int | str, ...] = ()
    method: str = DEFAULT_METHOD
    layer: str | None = None
    policy: str = DEFAULT_POLICY
    input_size: int | None = None
    flip: bool = DEFAULT_FLIP
    scales: tuple[float, ...] = DEFAULT_SCALES
    normalization: str = DEFAULT_NORMALIZATION
    threshold: Threshold | None = None
    largest_only: bool = True
    min_area: float = 0.0
    amp: bool = False

    def __post_init__(self) -> None:
        set_ = functools.partial(object.__setattr__, self)
        set_("classes", tuple(self.classes or ()))
        set_("scales", parse_scales(self.scales))
        if self.topk < 1:
            raise ClassError(f"--topk must be at least 1, got {self.topk}")
        if self.rank is not None and self.rank < 1:
            raise ClassError(f"--rank must be at least 1 (1 = most likely), got {self.rank}")
        if self.policy not in RESIZE_POLICIES:
            raise CamlocError(f"unknown policy {self.policy!r}; choose from {', '.join(RESIZE_POLICIES)}")
        if self.input_size is not None and int(self.input_size) < 16:
            raise CamlocError(f"--input-size must be at least 16 pixels, got {self.input_size}")
        if self.threshold is not None:
            try:
                set_("threshold", parse_threshold(self.threshold))
            except ValueError as error:
                raise CamlocError(str(error)) from None
        if self.normalization not in NORMALIZATIONS:
            raise CamlocError(f"unknown normalisation {self.normalization!r}; choose from "
                              f"{', '.join(NORMALIZATIONS)}")
        if not 0.0 <= self.min_area < 1.0:
            raise CamlocError(f"--min-area must be a fraction of the image in [0, 1), got {self.min_area}")

    def replace(self, **changes: Any) -> ExplainConfig:
        """A copy with ``changes`` (checked like a new config)."""
        return dataclasses.replace(self, **changes)

    def box_threshold(self, model: Any, method: str | None = None) -> Threshold:
        """The box rule in force for ``model``: the config's, else the model's recommended
        one (``model.box_threshold``), else the method's (:data:`METHOD_BOX_THRESHOLDS`;
        ``method``: the one the config's resolves to, e.g. ``"auto"`` → ``"walkcam"``, see
        :func:`camloc.methods.resolve_method`), else :data:`DEFAULT_BOX_THRESHOLD`.

        >>> ExplainConfig(method="cam").box_threshold(None), ExplainConfig().box_threshold(None, "walkcam")
        (0.25, 'otsu')
        """
        if self.threshold is not None:
            return self.threshold
        recommended = getattr(model, "box_threshold", None)
        if recommended is not None:
            return recommended
        return METHOD_BOX_THRESHOLDS.get(method or self.method, DEFAULT_BOX_THRESHOLD)

    def network_size(self, model: Any) -> tuple[int, int]:
        """The ``(height, width)`` fed to the network: ``input_size`` squared, else the model's."""
        if self.input_size is not None:
            return (int(self.input_size), int(self.input_size))
        return (int(model.input_size[0]), int(model.input_size[1]))
