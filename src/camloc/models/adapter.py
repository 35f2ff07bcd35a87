"""The model adapter: any classifier seen as ``features → GAP → (affine) → linear``.

:func:`adapt` *finds the head itself*: one traced forward pass records every torch function
call; walking back from the output it finds the final ``linear``, the affine steps allowed
between it and global average pooling (flatten/dropout/BatchNorm1d/LayerNorm), and the
feature map fed to the pooling. The decomposition is then checked numerically:
``mean_xy(CAM_c) + b_c == logit_c``.

>>> import torchvision
>>> adapt(torchvision.models.resnet18(num_classes=10)).feature_layer
'layer4'
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..classnames import imagenet_class_names
from ..errors import ClassError, ModelError
from .cache import digest, read_record, write_record

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TF_MEAN = (0.5, 0.5, 0.5)  # (x - 127.5) / 127.5, the TF-Lite EfficientNet normalisation
TF_STD = (0.5, 0.5, 0.5)


def per_channel(values: Iterable[float]) -> tuple[float, float, float]:
    """A mean or std as one float per RGB channel.

    >>> per_channel([0, 0.5, 1])
    (0.0, 0.5, 1.0)
    """
    red, green, blue = (float(v) for v in values)
    return red, green, blue


# --------------------------------------------------------------------------- head steps


@dataclass
class NeckStep:
    """An affine step between pooling and the classifier, applied to pooled ``(N, K)``.

    ``kind`` is ``"batch_norm"`` (fixed per-channel affine) or ``"layer_norm"`` (per-sample
    statistics over channels). Both keep the head exactly decomposable.
    """

    kind: str
    weight: torch.Tensor | None
    bias: torch.Tensor | None
    eps: float
    running_mean: torch.Tensor | None = None
    running_var: torch.Tensor | None = None


def neck_affine(
    steps: Sequence[NeckStep], pooled: torch.Tensor
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Per-sample ``(scale, shift)`` with ``neck(pooled) == scale * pooled + shift``.

    Returns ``(None, None)`` when there are no steps (the common GAP → Linear head).
    """
    if not steps:
        return None, None
    scale = torch.ones_like(pooled)
    shift = torch.zeros_like(pooled)
    value = pooled
    for step in reversed(steps):  # steps were collected walking backwards
        if step.kind == "batch_norm":
            assert step.running_var is not None and step.running_mean is not None  # a batch norm has both
            a = torch.rsqrt(step.running_var + step.eps)
            b = -step.running_mean * a
        else:  # layer_norm over channels, per sample
            mean = value.mean(dim=1, keepdim=True)
            var = value.var(dim=1, unbiased=False, keepdim=True)
            a = torch.rsqrt(var + step.eps).expand_as(value)
            b = -mean * a
        if step.weight is not None:
            a, b = a * step.weight, b * step.weight
        if step.bias is not None:
            b = b + step.bias
        scale, shift = scale * a, shift * a + b
        value = value * a + b
    return scale, shift


# --------------------------------------------------------------------------- the adapter


@dataclass
class ClassifierAdapter:
    """A classifier seen as ``features → GAP → (affine) → linear``.

    Attributes hold the model, its preprocessing and class names, the module whose output
    is the last feature map (``feature_layer``) and the classifier's ``weight (C, K)`` and
    ``bias (C,)``. When the head is not linear after pooling, ``head_error`` says why and
    plain CAM is refused (gradient methods still work).
    """

    model: nn.Module
    name: str
    class_names: list[str]
    input_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    feature_layer: str | None = None
    weight: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    neck: list[NeckStep] = field(default_factory=list)
    pre_pool: list[tuple[Callable, tuple, dict]] = field(default_factory=list)
    head_error: str | None = None
    source: str = ""
    box_threshold: float | str | None = None  # recommended box rule (trained checkpoints)
    dilated: bool = False  # last stage run at 2x resolution (dilate_last_stage)
    fingerprint: str | None = field(default=None, repr=False, compare=False)  # structure + weights

    runtime = "torch"  # what runs the network's forward pass (camloc.models.runtime)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def device(self) -> torch.device:
        try:
            return next(self.model.parameters()).device
        except StopIteration:
            return torch.device("cpu")

    def to(self, device: str | torch.device) -> ClassifierAdapter:
        """Move the model to ``device`` in channels_last memory format.

        Convolutions run faster that way on CPUs (oneDNN) as on GPUs: forward passes of the
        default model 1.2–1.5× faster on 2 CPU cores at batch 1–32, ResNet-50 1.05–1.3×
        (``benchmarks/bench_layout.py``).
        """
        # torch's stubs list memory_format alone; Module.to takes it with a device too
        self.model.to(torch.device(device), memory_format=torch.channels_last)  # type: ignore[call-overload]
        return self

    def require_cam(self) -> None:
        """Raise :class:`ModelError` when plain CAM is not exact for this model."""
        if self.head_error:
            raise ModelError(
                f"plain CAM needs global average pooling followed by a linear layer, but "
                f"{self.name}: {self.head_error}; use a gradient method (--method gradcam, "
                f"gradcam++, layercam or scorecam)"
            )

    def module(self, name: str) -> nn.Module:
        """The sub-module called ``name``, or a :class:`ModelError` listing close matches."""
        try:
            return self.model.get_submodule(name)
        except AttributeError:
            pass
        modules = dict(self.model.named_modules())
        if name not in modules:
            close = difflib.get_close_matches(name, list(modules), n=5, cutoff=0.5)
            hint = f"; close matches: {', '.join(close)}" if close else ""
            raise ModelError(f"no layer named {name!r} in {self.name}{hint}")
        return modules[name]

    def forward_with_features(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward pass: ``(logits (N, C), features (N, K, h, w))``.

        Runs under whatever grad mode the caller set; the hook is always removed.
        """
        self.require_cam()
        assert self.feature_layer is not None  # an exact head has its feature layer
        captured: dict[str, torch.Tensor] = {}

        def keep(_module: nn.Module, _inputs: tuple[Any, ...], output: torch.Tensor) -> None:
            captured["features"] = output

        handle = self.module(self.feature_layer).register_forward_hook(keep)
        try:
            logits = self.model(batch)
        finally:
            handle.remove()
        features = captured["features"]
        for func, args, kwargs in self.pre_pool:
            features = func(features, *args, **kwargs)
        return logits, features

    def guide_layer(self) -> str:
        """The layer whose features guide :class:`camloc.methods.WalkCAM` by default: the
        stage that feeds the network's last stage (:func:`stage_input_layer`)."""
        layer = stage_input_layer(self.model)
        if layer is None:
            raise ModelError(f"could not find the stage before {self.name}'s last one; give the guide "
                             "layer with --layer")
        return layer

    def forward_with_guide(self, batch: torch.Tensor, layer: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One forward pass: ``(logits, features, output of layer)``, e.g. the features whose
        affinities guide :class:`camloc.methods.WalkCAM`; the hook is always removed."""
        captured: list[torch.Tensor] = []

        def keep(_module: nn.Module, _inputs: tuple[Any, ...], output: object) -> None:
            if not isinstance(output, torch.Tensor) or output.dim() != 4:
                raise ModelError(f"layer {layer!r} must give (N, K, h, w) features")
            captured[:] = [output]

        handle = self.module(layer).register_forward_hook(keep)
        try:
            logits, features = ClassifierAdapter.forward_with_features(self, batch)
        finally:
            handle.remove()
        if not captured:
            raise ModelError(f"layer {layer!r} is not used in {self.name}'s forward pass")
        return logits, features, captured[0]

    def head(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """``(weight (C, K), scale (N, K) | None, bias (N, C))`` of the exact decomposition.

        ``logit = bias + mean_xy(Σ_k weight[c, k] * scale[n, k] * features[n, k])``.
        """
        assert self.weight is not None  # called for exact heads only (after require_cam)
        weight = self.weight.detach()
        bias = self.bias.detach() if self.bias is not None else weight.new_zeros(weight.shape[0])
        pooled = features.mean(dim=(2, 3))
        scale, shift = neck_affine(self.neck, pooled)
        full_bias = bias.expand(features.shape[0], -1)
        if shift is not None:
            full_bias = full_bias + shift @ weight.T
        return weight, scale, full_bias

    def class_index(self, key: int | str) -> int:
        """A class index from an index, a numeric string or a (case-insensitive) name."""
        if isinstance(key, int) or (isinstance(key, str) and key.strip().lstrip("-").isdigit()):
            index = int(key)
            if not 0 <= index < self.num_classes:
                raise ClassError(f"class index {index} out of range 0..{self.num_classes - 1}")
            return index
        wanted = key.strip().lower()
        for index, name in enumerate(self.class_names):
            if name.lower() == wanted:
                return index
        close = difflib.get_close_matches(wanted, [n.lower() for n in self.class_names], n=5, cutoff=0.6)
        contains = [n for n in self.class_names if wanted in n.lower()][:5]
        suggestions = list(dict.fromkeys(close + [c.lower() for c in contains]))
        hint = f"; did you mean: {', '.join(suggestions)}" if suggestions else ""
        raise ClassError(f"unknown class {key!r} for {self.name}{hint}")


def stage_input_layer(network: nn.Module) -> str | None:
    """The stage that feeds ``network``'s last stage: the sibling before the shallowest
    ancestor of the last stage's first convolution (its first dilated one, else its last
    strided one) that has a sibling with convolutions just before it; ``None`` when there is none.

    >>> import torchvision
    >>> stage_input_layer(torchvision.models.resnet18())
    'layer3'
    """
    convs = [(name, m) for name, m in network.named_modules() if isinstance(m, nn.Conv2d)]
    dilated = [name for name, m in convs if max(_pair(m.dilation)) > 1]
    strided = [name for name, m in convs if max(_pair(m.stride)) > 1]
    if not dilated and not strided:
        return None
    parts = (dilated[0] if dilated else strided[-1]).split(".")
    modules = dict(network.named_modules())
    for depth in range(1, len(parts)):
        parent = modules[".".join(parts[: depth - 1])] if depth > 1 else network
        names = [name for name, _ in parent.named_children()]
        position = names.index(parts[depth - 1])
        before = names[position - 1] if position > 0 else None
        if before is not None and any(isinstance(m, nn.Conv2d) for m in getattr(parent, before).modules()):
            return ".".join([*parts[: depth - 1], before])
    return None


def _pair(value: Any) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, tuple) else (int(value),)


@contextmanager
def inference_mode(model: nn.Module, grad: bool = False) -> Iterator[None]:
    """Eval mode and the chosen grad mode for the block; each module's mode is restored after.

    A model already in eval mode (as ``load_model`` returns it) costs one scan of its modules.
    """
    training = [module for module in model.modules() if module.training]
    if training:
        model.eval()
    try:
        with torch.set_grad_enabled(grad):
            yield
    finally:
        for module in training:
            module.training = True


# --------------------------------------------------------------------------- head discovery

_PASS_THROUGH = {
    "flatten", "view", "reshape", "squeeze", "unsqueeze", "permute", "contiguous", "dropout",
    "dropout1d", "dropout2d", "alpha_dropout", "feature_alpha_dropout", "clone", "float",
    "to", "type", "__getitem__", "identity", "detach",
}
_POINTWISE_PRE_POOL = {"relu", "relu_", "relu6", "hardtanh", "hardtanh_", "silu", "gelu", "elu"}


# one torch function call: (name, func, args, kwargs, output)
_Call = tuple[str, Callable[..., Any], tuple[Any, ...], dict[str, Any], Any]


class _Trace(TorchFunctionMode):
    """Records every torch function call of a forward: (name, func, args, kwargs, output)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[_Call] = []

    def __torch_function__(self, func: Callable[..., Any], types: Collection[type], args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        output = func(*args, **kwargs)
        name = getattr(func, "__name__", str(func))
        if isinstance(output, torch.Tensor):
            self.calls.append((name, func, args, kwargs, output))
        return output


def _is_global_pool(name: str, args: tuple, kwargs: dict, output: torch.Tensor) -> bool:
    source = args[0] if args else None
    if not isinstance(source, torch.Tensor) or source.dim() != 4:
        return False
    if name in ("adaptive_avg_pool2d", "avg_pool2d"):
        return output.shape[-2:] == (1, 1)
    if name == "mean":
        dims = args[1] if len(args) > 1 else kwargs.get("dim")
        if dims is None:
            return False
        dims = {d % 4 for d in ((dims,) if isinstance(dims, int) else dims)}
        return dims == {2, 3}
    return False


def find_head(model: nn.Module, example: torch.Tensor) -> dict[str, Any]:
    """Trace one forward and find feature layer, classifier and the steps between.

    Returns a dict with ``feature_layer``, ``weight``, ``bias``, ``neck``, ``pre_pool``,
    or ``head_error`` explaining why the head is not GAP + linear.
    """
    outputs_by_module: dict[int, str] = {}

    def record(name: str) -> Callable[[nn.Module, tuple[Any, ...], object], None]:
        def hook(_module: nn.Module, _inputs: tuple[Any, ...], output: object) -> None:
            if isinstance(output, torch.Tensor):
                outputs_by_module[id(output)] = name  # outer modules fire last and win

        return hook

    handles = [m.register_forward_hook(record(n)) for n, m in model.named_modules() if n]
    trace = _Trace()
    try:
        with inference_mode(model), trace:
            output = model(example)
    finally:
        for handle in handles:
            handle.remove()
    if not isinstance(output, torch.Tensor) or output.dim() != 2:
        return {"head_error": "its forward does not return a (batch, classes) tensor of logits"}
    producer: dict[int, _Call] = {}
    for traced in trace.calls:  # the first call that made a tensor; in-place/no-op calls skip
        producer.setdefault(id(traced[4]), traced)

    def producer_of(tensor: object) -> _Call | None:
        return producer.get(id(tensor))

    call = producer_of(output)
    while call is not None and call[0] in _PASS_THROUGH:
        call = producer_of(call[2][0])
    if call is None or call[0] != "linear":
        found = call[0] if call else "no traceable operation"
        return {"head_error": f"its output is not produced by a linear layer (found {found})"}
    _, _, args, kwargs, _ = call
    weight = args[1] if len(args) > 1 else kwargs["weight"]
    bias = args[2] if len(args) > 2 else kwargs.get("bias")
    value, neck = args[0], []
    while True:
        call = producer_of(value)
        if call is None:
            return {"head_error": "the classifier's input could not be traced to a feature map"}
        name, _, args, kwargs, out = call
        if _is_global_pool(name, args, kwargs, out):
            features = args[0]
            break
        if name in _PASS_THROUGH:
            value = args[0]
        elif name == "layer_norm" and tuple(args[1]) == (weight.shape[1],):
            neck.append(NeckStep("layer_norm", _arg(args, kwargs, 2, "weight"),
                                 _arg(args, kwargs, 3, "bias"), _arg(args, kwargs, 4, "eps", 1e-5)))
            value = args[0]
        elif name == "batch_norm" and args[0].dim() == 2:
            neck.append(NeckStep("batch_norm", _arg(args, kwargs, 3, "weight"),
                                 _arg(args, kwargs, 4, "bias"), _arg(args, kwargs, 7, "eps", 1e-5),
                                 running_mean=args[1], running_var=args[2]))
            value = args[0]
        else:
            pretty = name.strip("_")
            return {"head_error": f"its head applies '{pretty}' between the last feature map and "
                                  "the classifier, so the class score is not linear in the "
                                  "pooled features"}
    pre_pool: list[tuple[Callable, tuple, dict]] = []
    while id(features) not in outputs_by_module:
        call = producer_of(features)
        if call is None or call[0] not in _POINTWISE_PRE_POOL:
            what = call[0] if call else "an untraceable value"
            return {"head_error": f"the pooled feature map comes from '{what}', not from a layer"}
        pre_pool.insert(0, (call[1], tuple(call[2][1:]), dict(call[3])))
        features = call[2][0]
    return {
        "feature_layer": outputs_by_module[id(features)],
        "weight": weight,
        "bias": bias,
        "neck": neck,
        "pre_pool": pre_pool,
    }


def _arg(args: tuple[Any, ...], kwargs: dict[str, Any], position: int, name: str, default: Any = None) -> Any:
    if len(args) > position:
        return args[position]
    return kwargs.get(name, default)


# --------------------------------------------------------------------------- loading


def adapt(
    model: nn.Module,
    name: str | None = None,
    class_names: Sequence[str] | None = None,
    input_size: int | tuple[int, int] = 224,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    source: str = "module",
) -> ClassifierAdapter:
    """Wrap a user's ``nn.Module`` (a classifier returning logits) as an adapter.

    >>> import torchvision
    >>> adapter = adapt(torchvision.models.resnet18(num_classes=10))
    >>> adapter.feature_layer, adapter.weight.shape
    ('layer4', torch.Size([10, 512]))
    """
    if not isinstance(model, nn.Module):
        raise ModelError(f"expected a torch nn.Module, got {type(model).__name__}")
    size = (input_size, input_size) if isinstance(input_size, int) else (input_size[0], input_size[1])
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    key = head_key(model, size, device)
    cached = _head_from_record(model, read_record("heads", key))
    example = None
    if cached is not None:  # found before for this very network: no traced forward, no check
        found, num_classes = cached
    else:
        example = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0)).to(device)
        found = find_head(model, example)
        if found.get("weight") is not None:
            num_classes = found["weight"].shape[0]
        else:
            with inference_mode(model):
                num_classes = model(example[:1]).shape[-1]
    if class_names is None:
        class_names = imagenet_class_names() if num_classes == 1000 else [
            f"class_{i}" for i in range(num_classes)]
    if len(class_names) != num_classes:
        raise ModelError(f"{len(class_names)} class names given for a model with {num_classes} outputs")
    adapter = ClassifierAdapter(
        model=model,
        name=name or type(model).__name__,
        class_names=list(class_names),
        input_size=size,
        mean=per_channel(mean),
        std=per_channel(std),
        source=source,
        fingerprint=key,
        **found,
    )
    if example is not None:
        if adapter.head_error is None:
            check_identity(adapter, example)
        record = _head_record(model, adapter, num_classes)
        if record is not None:
            write_record("heads", key, record)
    return adapter


# --------------------------------------------------------------------------- the head cache


def fingerprint(model: nn.Module) -> str:
    """Digest of a network's class, structure (its ``repr``: layers, strides, dilations) and
    every parameter and buffer: equal digests, equal networks."""
    hasher = hashlib.blake2b(digest_size=16)
    hasher.update(f"{type(model).__module__}.{type(model).__qualname__}\n{model!r}".encode())
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach()
        hasher.update(f"{name} {tuple(tensor.shape)} {tensor.dtype}".encode())
        if tensor.numel():
            flat = tensor.cpu().contiguous().reshape(-1)
            hasher.update(flat.view(torch.uint8).numpy() if flat.dtype != torch.bool else flat.numpy())
    return hasher.hexdigest()


def head_key(model: nn.Module, size: tuple[int, int], device: torch.device) -> str:
    """The cache key of what :func:`adapt` finds in ``model`` at input ``size``."""
    return digest({"network": fingerprint(model), "size": list(size), "device": device.type,
                   "torch": torch.__version__})


class _Uncacheable(Exception):
    pass


def _head_record(model: nn.Module, adapter: ClassifierAdapter, num_classes: int) -> dict | None:
    """What :func:`find_head` found, by the names of the model's own tensors (``None``: not
    expressible that way, e.g. a weight computed in the forward pass)."""
    if adapter.head_error is not None:
        return {"head_error": adapter.head_error, "num_classes": num_classes}
    names = {id(t): n for n, t in model.named_parameters(remove_duplicate=False)}
    names.update({id(t): n for n, t in model.named_buffers(remove_duplicate=False)})

    def name_of(tensor: torch.Tensor | None) -> str | None:
        if tensor is None:
            return None
        if id(tensor) not in names:
            raise _Uncacheable
        return names[id(tensor)]

    try:
        neck = [{"kind": step.kind, "weight": name_of(step.weight), "bias": name_of(step.bias),
                 "eps": float(step.eps), "running_mean": name_of(step.running_mean),
                 "running_var": name_of(step.running_var)} for step in adapter.neck]
        pre_pool = []
        for func, args, kwargs in adapter.pre_pool:
            where = f"{getattr(func, '__module__', None)}:{getattr(func, '__qualname__', None)}"
            if _resolve(where) is not func:
                raise _Uncacheable
            json.dumps([args, kwargs])  # plain numbers and flags only
            pre_pool.append({"func": where, "args": list(args), "kwargs": kwargs})
        return {"feature_layer": adapter.feature_layer, "weight": name_of(adapter.weight),
                "bias": name_of(adapter.bias), "neck": neck, "pre_pool": pre_pool,
                "num_classes": num_classes}
    except (_Uncacheable, TypeError, ValueError):
        return None


def _resolve(where: str) -> Any:
    import importlib

    module, _, qualname = where.partition(":")
    try:
        value = importlib.import_module(module)
        for part in qualname.split("."):
            value = getattr(value, part)
    except (ImportError, AttributeError, ValueError):
        return None
    return value


def _head_from_record(model: nn.Module, record: dict | None) -> tuple[dict[str, Any], int] | None:
    """The ``find_head`` result rebuilt from a cache record without running the model."""
    if record is None:
        return None
    try:
        if record.get("head_error"):
            return {"head_error": record["head_error"]}, int(record["num_classes"])
        tensors: dict[str, torch.Tensor] = dict(model.named_parameters(remove_duplicate=False))
        tensors.update(model.named_buffers(remove_duplicate=False))
        get = lambda name: None if name is None else tensors[name]  # noqa: E731
        neck = [NeckStep(step["kind"], get(step["weight"]), get(step["bias"]), float(step["eps"]),
                         running_mean=get(step["running_mean"]), running_var=get(step["running_var"]))
                for step in record["neck"]]
        pre_pool = []
        for step in record["pre_pool"]:
            func = _resolve(step["func"])
            if func is None:
                return None
            pre_pool.append((func, tuple(step["args"]), dict(step["kwargs"])))
        model.get_submodule(record["feature_layer"])
        found = {"feature_layer": record["feature_layer"], "weight": get(record["weight"]),
                 "bias": get(record["bias"]), "neck": neck, "pre_pool": pre_pool}
        return found, int(record["num_classes"])
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def check_identity(adapter: ClassifierAdapter, example: torch.Tensor) -> None:
    """Refuse a decomposition that does not reproduce the model's logits."""
    with inference_mode(adapter.model):
        logits, features = adapter.forward_with_features(example)
        weight, scale, bias = adapter.head(features)
        effective = weight[None] if scale is None else weight[None] * scale[:, None, :]
        rebuilt = torch.einsum("nck,nk->nc", effective, features.mean(dim=(2, 3))) + bias
    tolerance = 1e-3 * (1 + logits.abs().max().item())
    if not torch.allclose(rebuilt, logits, atol=tolerance, rtol=1e-3):
        error = (rebuilt - logits).abs().max().item()
        adapter.head_error = (f"its logits are not reproduced by pooling layer "
                              f"'{adapter.feature_layer}' and the classifier (max error {error:.3g})")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"`` → cuda when available, else cpu."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise ModelError(f"unknown device {device!r}: {error}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ModelError("--device cuda asked for, but no CUDA device is available")
    return resolved
