"""Gradient methods for any classifier: Grad-CAM, Grad-CAM++, LayerCAM (Score-CAM: its own module).

Plain CAM needs ``features → GAP → linear``; these methods need only a spatial layer. For
class ``c`` with score ``S_c`` (the logit), activations ``A (K, h, w)`` of the target layer
and gradients ``g = ∂S_c/∂A``:

- Grad-CAM (Selvaraju et al. 2017):  ``ReLU(Σ_k mean_xy(g_k) A_k)``
- Grad-CAM++ (Chattopadhyay et al. 2018, eq. 19 with ``Y = exp(S)``):
  ``α = g² / (2g² + Σ_ab A_k(a, b) g³)``, ``w_k = Σ_xy α ReLU(g)``, map ``ReLU(Σ_k w_k A_k)``
- LayerCAM (Jiang et al. 2021):      ``ReLU(Σ_k ReLU(g_k) ⊙ A_k)``
- Score-CAM (Wang et al. 2020):      ``ReLU(Σ_k softmax_k(S_c(x ⊙ M_k) − S_c(x)) A_k)`` with
  ``M_k`` the min-max normalised ``A_k`` upsampled to the input (no gradients).

One forward and one backward per requested rank serve the whole batch: the selected logits
are summed over the batch, and since images do not interact, each image gets its own
gradient.
Maps come out at feature resolution, like CAM, and ``finish()`` upsamples them.

On a GAP + linear head Grad-CAM is ``ReLU(CAM) / hw`` exactly: ``∂S_c/∂A_k(x, y) = W_ck / hw``.

>>> import torch, camloc
>>> model = camloc.load_model("vgg11", weights="random")
>>> from camloc.methods import ClassSelection, get_method
>>> method = get_method("auto", model)                 # no linear head after pooling
>>> method.name, method.target.name
('gradcam', 'features')
>>> tuple(method(torch.randn(2, 3, 224, 224), ClassSelection(topk=3)).maps.shape)
(2, 3, 7, 7)
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ModelError
from ..models import ClassifierAdapter, inference_mode
from .base import Method, MethodOutput, Selection

# Modules whose output is never the "feature layer" even when it is spatial.
_NOT_FEATURES = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Identity, nn.Dropout,
                 nn.Dropout2d, nn.Flatten)
MAX_PREFIX_TOKENS = 8
# find_spatial_layer costs a forward and a backward: once per model and input size
_FOUND: weakref.WeakKeyDictionary[nn.Module, dict] = weakref.WeakKeyDictionary()


# --------------------------------------------------------------------------- the target layer


@dataclass(frozen=True)
class SpatialLayer:
    """A layer whose output is a spatial map: ``(N, C, h, w)``, or tokens ``(N, T, D)`` whose
    last ``T - prefix`` tokens form an ``h × w`` grid (a ViT's patch tokens).

    >>> layer = SpatialLayer("blocks.11.norm1", prefix=1, grid=(14, 14))
    >>> tuple(layer.to_map(torch.zeros(2, 197, 192)).shape)
    (2, 192, 14, 14)
    """

    name: str
    prefix: int = 0
    grid: tuple[int, int] | None = None  # None: already (N, C, h, w)

    @property
    def is_tokens(self) -> bool:
        return self.grid is not None

    def to_map(self, output: torch.Tensor) -> torch.Tensor:
        """The layer's output (or its gradient) as ``(N, C, h, w)``."""
        if self.grid is None:
            return output
        tokens = output[:, self.prefix :]
        if tokens.shape[1] != self.grid[0] * self.grid[1]:
            raise ModelError(f"layer {self.name!r} gave {output.shape[1]} tokens, expected "
                             f"{self.prefix} + {self.grid[0]}x{self.grid[1]}")
        return tokens.transpose(1, 2).reshape(output.shape[0], output.shape[2], *self.grid)


def token_grid(
    model: nn.Module, tokens: int, input_size: tuple[int, int]
) -> tuple[int, tuple[int, int]] | None:
    """``(prefix, (h, w))`` when ``tokens`` are class/prefix tokens followed by a patch grid.

    timm ViTs say it themselves (``num_prefix_tokens``, ``patch_embed.grid_size``); otherwise
    the smallest prefix whose remainder is a grid of the input's aspect ratio is taken.

    >>> token_grid(nn.Identity(), 197, (224, 224))
    (1, (14, 14))
    """
    prefix = getattr(model, "num_prefix_tokens", None)
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    if isinstance(prefix, int) and grid is not None and prefix + grid[0] * grid[1] == tokens:
        return prefix, (int(grid[0]), int(grid[1]))
    height, width = input_size
    for prefix in range(min(tokens - 4, MAX_PREFIX_TOKENS) + 1):
        count = tokens - prefix
        rows = round(math.sqrt(count * height / width))
        if rows > 1 and count % rows == 0 and count // rows > 1:
            return prefix, (rows, count // rows)
    return None


def as_spatial(adapter: ClassifierAdapter, name: str, shape: torch.Size) -> SpatialLayer | None:
    """The layer ``name`` with output ``shape`` as a :class:`SpatialLayer`, or ``None``."""
    if len(shape) == 4 and shape[2] > 1 and shape[3] > 1:
        return SpatialLayer(name)
    if len(shape) == 3:
        found = token_grid(adapter.model, shape[1], adapter.input_size)
        if found is not None:
            return SpatialLayer(name, prefix=found[0], grid=found[1])
    return None


def _looks_like_features(adapter: ClassifierAdapter, layer: SpatialLayer,
                         shape: torch.Size) -> bool:
    """Stricter than :func:`as_spatial`, for the automatic choice: a downsampled map with the
    input's aspect ratio (not, say, a ``(N, heads, T, d)`` attention tensor)."""
    if layer.is_tokens:
        return True
    (height, width), (rows, cols) = adapter.input_size, shape[2:]
    return (rows <= height / 2 and cols <= width / 2
            and math.isclose(height / rows, width / cols, rel_tol=0.25))


def _example(adapter: ClassifierAdapter) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(1, 3, *adapter.input_size, generator=generator).to(adapter.device)


def _record_outputs(adapter: ClassifierAdapter, names: list[str] | None,
                    grad: bool) -> tuple[torch.Tensor, list[tuple[str, nn.Module, torch.Tensor]]]:
    """One forward of an example image; ``(logits, [(name, module, output)])`` in the order
    the modules finished (containers after their children)."""
    modules = dict(adapter.model.named_modules())
    recorded: list[tuple[str, nn.Module, torch.Tensor]] = []

    def hook_for(name: str) -> Callable[[nn.Module, tuple[Any, ...], object], None]:
        def hook(module: nn.Module, _inputs: tuple[Any, ...], output: object) -> None:
            if isinstance(output, torch.Tensor):
                recorded.append((name, module, output))
        return hook

    chosen = names if names is not None else [n for n in modules if n]
    handles = [modules[n].register_forward_hook(hook_for(n)) for n in chosen]
    example = _example(adapter).requires_grad_(grad)
    try:
        with inference_mode(adapter.model, grad=grad):
            logits = adapter.model(example)
    finally:
        for handle in handles:
            handle.remove()
    return logits, recorded


def find_spatial_layer(adapter: ClassifierAdapter) -> SpatialLayer:
    """The last layer whose output is a spatial feature map that the top class depends on.

    Exact-CAM models use their pooled layer. Otherwise one forward and backward of an example
    image ranks every module: the last one with a downsampled ``(N, C, h, w)`` output, or a
    token sequence as wide as the model's final tokens, whose patch positions get a non-zero
    gradient (a ViT's last block before attention, since after it only the class token reaches
    the head), pooling and identity modules aside.

    >>> import camloc
    >>> find_spatial_layer(camloc.load_model("mobilenet_v3_small", weights="random")).name
    'features'
    """
    if adapter.head_error is None and adapter.feature_layer:
        return SpatialLayer(adapter.feature_layer)
    found = _FOUND.setdefault(adapter.model, {})
    if adapter.input_size not in found:
        found[adapter.input_size] = _search_spatial_layer(adapter)
    return found[adapter.input_size]


def _search_spatial_layer(adapter: ClassifierAdapter) -> SpatialLayer:
    logits, recorded = _record_outputs(adapter, None, grad=True)
    candidates = []
    for name, module, output in recorded:
        layer = as_spatial(adapter, name, output.shape)
        if (layer is not None and not isinstance(module, _NOT_FEATURES)
                and _looks_like_features(adapter, layer, output.shape)):
            candidates.append((layer, output))
    token_widths = [output.shape[-1] for layer, output in candidates if layer.is_tokens]
    candidates = [(layer, output) for layer, output in candidates
                  if not layer.is_tokens or output.shape[-1] == token_widths[-1]]
    if not candidates:
        raise ModelError(f"found no layer with a spatial output in {adapter.name}; "
                         "name one with --layer")
    score = logits.max(dim=1).values.sum()
    grads = torch.autograd.grad(score, [output for _, output in candidates], allow_unused=True)
    for (layer, _), grad in zip(reversed(candidates), reversed(grads), strict=True):
        if grad is not None and layer.to_map(grad).abs().amax() > 0:
            return layer
    raise ModelError(f"no spatial layer of {adapter.name} influences its class scores; "
                     "name one with --layer")


def spatial_layer(adapter: ClassifierAdapter, name: str | None = None) -> SpatialLayer:
    """The target layer called ``name`` (checked to be spatial), or the default one.

    >>> import camloc
    >>> spatial_layer(camloc.load_model("resnet18", weights="random"), "layer3").name
    'layer3'
    """
    if name is None:
        return find_spatial_layer(adapter)
    adapter.module(name)  # unknown names: an error listing close matches
    _, recorded = _record_outputs(adapter, [name], grad=False)
    if not recorded:
        raise ModelError(f"layer {name!r} of {adapter.name} is not called in its forward pass "
                         "or does not return a tensor")
    shape = recorded[-1][2].shape
    layer = as_spatial(adapter, name, shape)
    if layer is None:
        raise ModelError(f"layer {name!r} of {adapter.name} outputs shape {tuple(shape)}, not a "
                         "spatial map (N, C, h, w) with h, w > 1 nor a token grid; pick a "
                         "convolutional stage or a transformer block")
    return layer


# --------------------------------------------------------------------------- the methods


class LayerMethod(Method):
    """A method on a spatial target layer (``layer=None``: :func:`find_spatial_layer`)."""

    def __init__(self, model: ClassifierAdapter, layer: str | None = None):
        super().__init__(model, layer)
        self.target = spatial_layer(model, layer)


class GradientMethod(LayerMethod):
    """One forward, then one backward per requested rank for the whole batch; subclasses
    only say how activations and gradients combine (:meth:`combine`)."""

    needs_grad = True

    def compute(self, batch: torch.Tensor, selection: Selection) -> MethodOutput:
        logits, output = self.capture(batch, self.target.name)
        classes = selection.indices(logits.detach(), self.model)
        activations = self.target.to_map(output.detach())
        maps = []
        for rank in range(classes.shape[1]):
            with torch.enable_grad():  # the score is part of the graph that starts at the layer
                score = logits.gather(1, classes[:, rank : rank + 1]).sum()
            (grad,) = torch.autograd.grad(score, output, retain_graph=rank + 1 < classes.shape[1],
                                          allow_unused=True)
            if grad is None:
                raise ModelError(f"the class scores of {self.model.name} do not depend on layer "
                                 f"{self.target.name!r}")
            maps.append(self.combine(activations, self.target.to_map(grad)))
        return MethodOutput(logits.detach(), classes, torch.stack(maps, dim=1), self.name)

    def combine(self, activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        """``(N, K, h, w)`` activations and gradients → ``(N, h, w)`` maps."""
        raise NotImplementedError


def weighted_sum(weights: torch.Tensor, activations: torch.Tensor) -> torch.Tensor:
    """``ReLU(Σ_k weights[n, k] · activations[n, k])`` → ``(N, h, w)``."""
    return torch.einsum("nk,nkhw->nhw", weights, activations).relu()


class GradCAM(GradientMethod):
    """Grad-CAM: channel weights are the spatial mean of the gradients."""

    name = "gradcam"

    def combine(self, activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        return weighted_sum(grads.mean(dim=(2, 3)), activations)


class GradCAMPlusPlus(GradientMethod):
    """Grad-CAM++: gradients weighted by α (eq. 19 of the paper, exponential score)."""

    name = "gradcam++"

    def combine(self, activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        squared = grads.square()
        denominator = 2 * squared + activations.sum(dim=(2, 3), keepdim=True) * squared * grads
        defined = (grads != 0) & (denominator != 0)
        alpha = torch.where(defined, squared / torch.where(defined, denominator, 1), 0)
        return weighted_sum((alpha * grads.relu()).sum(dim=(2, 3)), activations)


class LayerCAM(GradientMethod):
    """LayerCAM: each position's activation weighted by its own positive gradient."""

    name = "layercam"

    def combine(self, activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        return (grads.relu() * activations).sum(dim=1).relu()
