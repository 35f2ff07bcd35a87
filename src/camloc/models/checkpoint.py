"""camloc checkpoints: a trained classifier with its class names, preprocessing and box rule.

``camloc train`` writes them (:func:`checkpoint_payload`, :func:`save_atomic`);
:func:`load_checkpoint` rebuilds the model by its architecture name, so ``camloc run --model
ckpt.pt`` needs nothing else.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ModelError
from .adapter import ClassifierAdapter, adapt
from .torch_models import build_named, load_tensors

CHECKPOINT_FORMAT = "camloc-checkpoint"
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".safetensors")


def load_checkpoint(path: str | os.PathLike) -> ClassifierAdapter:
    """Load a checkpoint written by ``camloc train`` (weights, architecture, classes, preprocessing)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file {path} not found")
    payload = read_payload(path)
    return adapter_from_checkpoint(payload, path)


def read_payload(path: Path) -> dict[str, Any]:
    """The payload of a camloc checkpoint file (weights only: tensors and plain values)."""
    try:
        payload = load_tensors(path)
    except Exception:  # noqa: BLE001 - any unreadable file is one user error
        raise ModelError(f"{path} is not a camloc checkpoint (train one with `camloc train`, or pass a "
                         "plain weights file with --model NAME --weights PATH)") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ModelError(f"{path} is not a camloc checkpoint (train one with `camloc train`, or "
                         "pass a plain weights file with --model NAME --weights PATH)")
    return payload


def is_checkpoint(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a camloc checkpoint (not a plain weights file)."""
    try:
        read_payload(Path(path))
    except ModelError:
        return False
    return True


def store_checkpoint_rule(path: str | os.PathLike, rule: float | str | None) -> None:
    """Rewrite the checkpoint at ``path`` with ``rule`` as its box rule (atomically)."""
    payload = read_payload(Path(path))
    payload["box_threshold"] = rule
    save_atomic(payload, Path(path))


def checkpoint_payload(network: nn.Module, architecture: str, head: str, class_names: Sequence[str],
                       input_size: tuple[int, int], mean: Sequence[float], std: Sequence[float],
                       box_threshold: float | str | None, extra: dict[str, Any]) -> dict[str, Any]:
    from .. import __version__

    return {
        "format": CHECKPOINT_FORMAT,
        "camloc_version": __version__,
        "architecture": architecture,
        "head": head,
        "class_names": list(class_names),
        "input_size": list(input_size),
        "mean": list(mean),
        "std": list(std),
        "box_threshold": box_threshold,
        "state_dict": {k: v.detach().cpu() for k, v in network.state_dict().items()},
        **extra,
    }


def adapter_from_checkpoint(payload: dict[str, Any], path: str | os.PathLike) -> ClassifierAdapter:
    """Rebuild a trained model from a checkpoint payload (see :func:`load_checkpoint`)."""
    try:
        architecture, head = payload["architecture"], payload["head"]
        class_names, state = payload["class_names"], payload["state_dict"]
        input_size = tuple(payload["input_size"])
        mean, std = payload["mean"], payload["std"]
    except (KeyError, TypeError) as error:
        raise ModelError(f"{path}: camloc checkpoint is incomplete (missing {error})") from None
    try:
        network = build_named(architecture)
    except ModelError as error:
        raise ModelError(f"{path} was made for architecture {architecture!r}, which cannot be "
                         f"built here ({error})") from None
    try:
        new_head(network, head, len(class_names))
        network.load_state_dict(state)
    except (AttributeError, RuntimeError) as error:
        first = str(error).splitlines()[0][:160]
        raise ModelError(f"{path}: its weights do not fit architecture {architecture!r} "
                         f"({first})") from None
    network.eval()
    adapter = adapt(network, name=architecture.rpartition("/")[2], class_names=class_names,
                    input_size=input_size, mean=mean, std=std, source=f"camloc checkpoint {path}")
    adapter.box_threshold = payload.get("box_threshold")
    return adapter


def save_atomic(payload: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    torch.save(payload, temporary)
    os.replace(temporary, path)


def classifier_name(network: nn.Module, weight: torch.Tensor | None) -> str:
    """Name of the ``nn.Linear`` whose weight is ``weight`` (the head the adapter found)."""
    for name, module in network.named_modules():
        if isinstance(module, nn.Linear) and module.weight is weight:
            return name
    raise ModelError("the classifier is not an nn.Linear module; camloc train cannot replace it")


def replace_module(network: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = network.get_submodule(parent_name) if parent_name else network
    setattr(parent, child, new)


def new_head(network: nn.Module, name: str, num_classes: int) -> nn.Linear:
    """Replace the linear layer ``name`` by a fresh one with ``num_classes`` outputs."""
    old = network.get_submodule(name)
    if not isinstance(old, nn.Linear):
        raise AttributeError(f"{name!r} is a {type(old).__name__}, not an nn.Linear")
    head = nn.Linear(old.in_features, num_classes)
    nn.init.normal_(head.weight, std=0.01)
    nn.init.zeros_(head.bias)
    replace_module(network, name, head.to(old.weight.device))
    return head
