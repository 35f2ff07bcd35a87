"""What every map method shares: the classes to explain, the output, the hooks.

>>> ClassSelection(topk=3).count
3
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from ..errors import ClassError, ModelError
from ..models import ClassifierAdapter, inference_mode


class Selection(Protocol):
    """Anything that picks the ``(N, k)`` classes to explain from a batch's logits."""

    def resolve(self, model: ClassifierAdapter) -> list[int] | None: ...

    def indices(self, logits: torch.Tensor, model: ClassifierAdapter) -> torch.Tensor: ...


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

    def __post_init__(self) -> None:
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


@dataclass
class MethodOutput:
    logits: torch.Tensor  # (N, C)
    classes: torch.Tensor  # (N, k) explained class indices
    maps: torch.Tensor  # (N, k, h, w) at feature resolution
    method: str


class Method:
    """Base class of map methods: a method only says how to weight channels (:meth:`compute`).

    The base restores the model's mode and the grad state around every call, and owns the
    hooks on a target layer (:meth:`hooked`, :meth:`capture`), always removed, also after an
    exception. Parameters are never touched
    (no per-call freezing of ``requires_grad``). Hooks live on the shared module, so calls on
    one model from several threads must be serialised (``camloc serve`` holds a lock).

    >>> import torch, camloc
    >>> from camloc.methods import get_method
    >>> out = get_method("cam", camloc.load_model("resnet18", weights="random"))(
    ...     torch.randn(2, 3, 224, 224), ClassSelection(topk=3))
    >>> tuple(out.maps.shape)
    (2, 3, 14, 14)
    """

    name: ClassVar[str] = ""
    needs_grad: ClassVar[bool] = False
    hooks_modules: ClassVar[bool] = True  # False: only ``forward_with_features`` (any runtime)

    def __init__(self, model: ClassifierAdapter, layer: str | None = None):
        self.model = model
        self.layer = layer

    def __call__(self, batch: torch.Tensor, selection: Selection) -> MethodOutput:
        if not self.hooks_modules and self.model.runtime != "torch":
            with torch.no_grad():  # the network runs in another runtime (camloc.models.runtime)
                return self.compute(batch, selection)
        with inference_mode(self.model.model):  # gradient methods enable grad at their layer
            return self.compute(batch, selection)

    def compute(self, batch: torch.Tensor, selection: Selection) -> MethodOutput:
        """``(logits, classes, maps at feature resolution)`` of a normalised batch."""
        raise NotImplementedError

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

        def keep(_module: nn.Module, _inputs: tuple[Any, ...], output: object) -> torch.Tensor | None:
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
