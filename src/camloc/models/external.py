"""What Keras and ONNX adapters share: input preprocessing, metadata, the adapter shape.

camloc's own preprocessing turns an RGB image into ``(x / 255 - mean) / std``, channels
first. Models trained outside PyTorch expect other inputs; each convention is written here
as a ``mean``/``std`` on ``[0, 1]`` plus a channel order, so camloc's preprocessing does
the arithmetic and the adapter only flips RGB → BGR (caffe) and moves channels last:

===========  ==========================================  ================================
name         the network sees                            as camloc mean / std (RGB, 0..1)
===========  ==========================================  ================================
``caffe``    BGR, 0..255 minus the ImageNet mean pixel   mean = (123.68, 116.779, 103.939)
                                                         / 255, std = 1/255, then BGR flip
``tf``       RGB in [-1, 1]                              mean = std = 0.5
``torch``    RGB, ImageNet mean/std normalised           mean = (.485, .456, .406), std =
                                                         (.229, .224, .225)
``none``     RGB, raw 0..255 (the model rescales)        mean = 0, std = 1/255
===========  ==========================================  ================================

>>> PREPROCESSING["tf"].mean
(0.5, 0.5, 0.5)
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import torch

from ..errors import ModelError
from .adapter import IMAGENET_MEAN, IMAGENET_STD, ClassifierAdapter, imagenet_class_names, per_channel


@dataclass(frozen=True)
class Preprocessing:
    """An input convention as camloc ``mean``/``std`` on [0, 1] RGB, plus ``bgr`` order."""

    name: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    bgr: bool = False


_CAFFE_MEAN_RGB = (123.68, 116.779, 103.939)
PREPROCESSING: dict[str, Preprocessing] = {
    "caffe": Preprocessing("caffe", per_channel(m / 255 for m in _CAFFE_MEAN_RGB), (1 / 255,) * 3, True),
    "tf": Preprocessing("tf", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "torch": Preprocessing("torch", IMAGENET_MEAN, IMAGENET_STD),
    "none": Preprocessing("none", (0.0, 0.0, 0.0), (1 / 255,) * 3),
}


def preprocessing(name: str) -> Preprocessing:
    """The convention called ``name`` (caffe, tf, torch, none), or a :class:`ModelError`."""
    key = name.strip().lower()
    if key not in PREPROCESSING:
        raise ModelError(f"unknown preprocessing {name!r}; choose from {', '.join(PREPROCESSING)}")
    return PREPROCESSING[key]


def sidecar(path: str | os.PathLike) -> dict[str, Any]:
    """Optional metadata next to a model file: ``model.keras.json`` / ``model.onnx.json``.

    Keys read: ``class_names`` (list), ``preprocess`` (caffe|tf|torch|none) and
    ``input_size`` (int or [h, w]). Missing file → ``{}``; an unreadable one is an error.
    """
    meta = Path(f"{path}.json")
    if not meta.is_file():
        return {}
    try:
        data = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ModelError(f"cannot read model metadata {meta}: {error}") from None
    if not isinstance(data, dict):
        raise ModelError(f"model metadata {meta} must be a JSON object")
    return data


def default_class_names(num_classes: int, given: Sequence[str] | None) -> list[str]:
    """``given`` (checked against ``num_classes``), else ImageNet's 1000 names, else class_i."""
    if given is None:
        if num_classes == 1000:
            return imagenet_class_names()
        return [f"class_{i}" for i in range(num_classes)]
    if len(given) != num_classes:
        raise ModelError(f"{len(given)} class names given for a model with {num_classes} outputs")
    return [str(name) for name in given]


def size_pair(size: int | Sequence[int]) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


@dataclass
class ExternalAdapter(ClassifierAdapter):
    """A :class:`ClassifierAdapter` whose network runs outside camloc's torch modules.

    Subclasses implement :meth:`run_network` on the network's own input layout; this class
    turns camloc's NCHW RGB batch into it (BGR flip for caffe, channels last) and checks the
    head. ``weight``/``bias`` are torch tensors, so ``head`` and CAM are the shared code.
    """

    bgr: bool = False
    channels_last: bool = False

    def network_input(self, batch: torch.Tensor) -> torch.Tensor:
        """camloc's ``(N, 3, H, W)`` batch in the network's channel order and layout."""
        if self.bgr:
            batch = batch.flip(1)
        if self.channels_last:
            batch = batch.permute(0, 2, 3, 1)
        return batch.contiguous()

    def run_network(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def place_head(self, device: str | torch.device) -> None:
        """Put classifier weight, bias and neck parameters where the features come out."""
        move = lambda t: t.to(device) if isinstance(t, torch.Tensor) else t  # noqa: E731
        self.weight, self.bias = move(self.weight), move(self.bias)
        for step in self.neck:
            step.weight, step.bias = move(step.weight), move(step.bias)
            step.running_mean, step.running_var = move(step.running_mean), move(step.running_var)

    def module(self, name: str) -> NoReturn:
        """No torch sub-modules to hook: gradient methods need a PyTorch model."""
        raise ModelError(f"{self.name} runs outside PyTorch ({self.source}); only plain CAM "
                         "works for it (gradient methods and walkcam need a PyTorch model)")

    def guide_layer(self) -> NoReturn:
        """No torch sub-modules: walkcam needs a PyTorch model."""
        self.module("")

    def forward_with_features(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits (N, C), features (N, K, h, w))`` from one run of the network."""
        self.require_cam()
        return self.run_network(self.network_input(batch))
