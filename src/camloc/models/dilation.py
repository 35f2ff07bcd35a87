"""The network's last stage at twice the resolution (stride replaced by dilation).

>>> from camloc.models import load_model
>>> adapter = load_model("resnet18", weights="random", dilate=False)
>>> dilate_last_stage(adapter), adapter.dilated
(True, True)
"""

from __future__ import annotations

import torch
from torch import nn

from .adapter import ClassifierAdapter, inference_mode
from .cache import digest, read_record, write_record

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

    >>> from camloc.models import load_model
    >>> adapter = load_model("resnet18", weights="random", dilate=False)
    >>> dilate_last_stage(adapter), adapter.dilated
    (True, True)
    >>> adapter.forward_with_features(torch.zeros(1, 3, 224, 224))[1].shape[-2:]
    torch.Size([14, 14])
    """
    if adapter.dilated or adapter.feature_layer is None or not isinstance(adapter.model, nn.Module):
        return adapter.dilated
    key = digest({"head": adapter.fingerprint, "size": list(adapter.input_size)}) if adapter.fingerprint else None
    record = read_record("dilation", key) if key else None
    if record is not None and _apply_record(adapter, record):
        return adapter.dilated
    done = _dilate(adapter)
    if key:
        names = {m: n for n, m in adapter.model.named_modules()}
        changes = [[names[m], list(m.stride), list(m.dilation), m.padding if isinstance(m.padding, str)
                    else list(m.padding)] for m in done if isinstance(m, nn.Conv2d)] if done else None
        write_record("dilation", key, {"changes": changes})
    return adapter.dilated


def _apply_record(adapter: ClassifierAdapter, record: dict) -> bool:
    """Dilate as recorded for this network before (no forward pass); ``False``: unusable."""
    changes = record.get("changes")
    if changes is None:
        return "changes" in record  # recorded as not dilatable
    try:
        modules = [(_conv(adapter.model.get_submodule(name)), stride, dilation, padding)
                   for name, stride, dilation, padding in changes]
    except (AttributeError, ValueError, TypeError):
        return False
    for module, stride, dilation, padding in modules:
        module.stride, module.dilation = tuple(stride), tuple(dilation)
        module.padding = padding if isinstance(padding, str) else tuple(padding)
    adapter.dilated = True
    return True


def _conv(module: nn.Module) -> nn.Conv2d:
    """``module``, a convolution (the only modules a dilation record changes)."""
    if not isinstance(module, nn.Conv2d):
        raise TypeError(f"{type(module).__name__} is not a convolution")
    return module


def _dilate(adapter: ClassifierAdapter) -> list[nn.Module] | None:
    """Dilate by measuring the network (two forward passes); the modules changed, or ``None``."""
    example = torch.zeros(1, 3, *adapter.input_size, device=adapter.device)
    calls = _spatial_calls(adapter, example)
    final = calls.pop()[2]  # the feature map's (h, w)
    downsamplers = [m for m, (h, w), out in calls if out == final and (h, w) != final]
    later = [m for m, size, _ in calls if size == final]
    if not downsamplers or any(not _can_dilate(m, downsampling=True) for m in downsamplers) \
            or any(not _can_dilate(m, downsampling=False) for m in later):
        return None
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
        return None
    adapter.dilated = True
    return downsamplers + later


def _spatial_calls(adapter: ClassifierAdapter, example: torch.Tensor) -> list:
    """``(module, input (h, w), output (h, w))`` of every conv/pool call in order, then the
    feature layer's output as the last entry."""
    calls: list = []
    assert adapter.feature_layer is not None  # dilate_last_stage checked it

    def record(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
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
    (kernel_h, kernel_w), (dilation_h, dilation_w) = module.kernel_size, module.dilation
    return (kernel_h - 1) // 2 * dilation_h, (kernel_w - 1) // 2 * dilation_w
