"""Keras 3 classifiers (``.keras``, ``.h5``) as camloc adapters, on Keras' PyTorch backend.

Keras is imported with ``KERAS_BACKEND=torch`` (set here before the first import; if Keras
was already imported on another backend, loading is refused with that advice). The model's
graph is walked back from its output: an optional final ``Activation``/``Softmax`` layer,
a ``Dense`` layer (linear, softmax or sigmoid activation), pass-through layers (Dropout,
Flatten, Reshape, ...), then ``GlobalAveragePooling2D``; the tensor entering the pooling is
the feature map. One sub-model returns feature map, pooled vector and output in a single
pass; logits are ``pooled @ kernel + bias`` (the Dense layer's own output when it is
linear), so ``mean_xy(CAM_c) + b_c == logit_c`` holds exactly, and it is checked at load.

The input convention comes from ``preprocess`` (caffe | tf | torch | none, see
:mod:`camloc.models.external`), else ``model.keras.json`` next to the file, else the known
``keras.applications`` families (resnet/vgg: caffe; mobilenet/inception/xception: tf;
densenet: torch; efficientnet/convnext/regnet and anything else: none, raw 0..255).

>>> adapter = load_keras_model("model.keras", preprocess="caffe")  # doctest: +SKIP
>>> adapter.feature_layer, tuple(adapter.weight.shape)             # doctest: +SKIP
('conv5_block3_out', (1000, 2048))
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from ..errors import ModelError
from .adapter import NeckStep
from .external import (
    ExternalAdapter,
    default_class_names,
    preprocessing,
    sidecar,
    size_pair,
)

KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")
_PASS_THROUGH = {
    "Dropout", "SpatialDropout1D", "GaussianDropout", "GaussianNoise", "AlphaDropout",
    "Flatten", "Reshape", "Identity", "ActivityRegularization",
}
_FINAL_ACTIVATIONS = {"linear", "softmax", "sigmoid"}
_NECK = {"BatchNormalization", "LayerNormalization"}
_APPLICATION_PREPROCESS = (  # keras.applications model names → their preprocess_input mode
    ("resnet50v2", "tf"), ("resnet101v2", "tf"), ("resnet152v2", "tf"), ("resnet", "caffe"),
    ("vgg", "caffe"), ("mobilenetv3", "none"), ("mobilenet", "tf"), ("inception", "tf"),
    ("xception", "tf"), ("nasnet", "tf"), ("densenet", "torch"), ("efficientnet", "none"),
    ("convnext", "none"), ("regnet", "none"),
)


def import_keras() -> ModuleType:
    """Keras on its PyTorch backend (``KERAS_BACKEND=torch`` is set before the import when
    the user has not set it; another backend asked for is one clear error)."""
    wanted = os.environ.get("KERAS_BACKEND", "").strip()
    if wanted and wanted != "torch":
        raise ModelError(f"KERAS_BACKEND is set to {wanted!r}; camloc runs Keras models on the "
                         "torch backend: unset it or set KERAS_BACKEND=torch")
    if "keras" not in sys.modules and not wanted:
        os.environ["KERAS_BACKEND"] = "torch"
    try:
        import keras
    except ImportError:
        raise ModelError("Keras models need Keras 3 (pip install 'camloc[keras]')") from None
    if keras.backend.backend() != "torch":
        raise ModelError(f"Keras is running on its {keras.backend.backend()!r} backend; camloc "
                         "needs KERAS_BACKEND=torch set before Keras is first imported")
    return keras


@dataclass
class KerasAdapter(ExternalAdapter):
    """A Keras GAP + Dense classifier; ``model`` is the Keras model (a torch Module)."""

    runner: Any = None  # keras.Model: input → (features, pooled, output)
    data_format: str = "channels_last"
    logits_from_output: bool = False  # the model's output already is the logits

    def to(self, device: str | torch.device) -> KerasAdapter:
        """Keras chooses its own device (``KERAS_TORCH_DEVICE``); inputs follow it."""
        return self

    def run_network(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features, pooled, output = self.runner(batch.to(self.device), training=False)
        if self.data_format == "channels_last":
            features = features.permute(0, 3, 1, 2)
        if self.logits_from_output:
            logits = output
        else:
            assert self.weight is not None  # set by keras_adapter
            pooled = pooled.reshape(pooled.shape[0], -1)
            logits = pooled @ self.weight.T + self.bias
        return logits, features


def _producer(tensor: Any) -> tuple[Any, list[Any]]:
    """The layer that made a KerasTensor and that call's input tensors."""
    history = getattr(tensor, "_keras_history", None)
    if history is None or history.operation is None:
        return None, []
    node = history.operation._inbound_nodes[history.node_index]
    return history.operation, list(node.input_tensors)


def _describe_tail(output: Any, count: int = 6) -> str:
    """The last layers before ``output``, oldest first: ``name (Class) → ...``."""
    found: list[str] = []
    tensor = output
    while len(found) < count:
        layer, inputs = _producer(tensor)
        if layer is None:
            break
        found.append(f"{layer.name} ({type(layer).__name__})")
        if not inputs:
            break
        tensor = inputs[0]
    return " → ".join(reversed(found)) or "no layers"


def _activation_name(layer: Any) -> str:
    activation = getattr(layer, "activation", None)
    return getattr(activation, "__name__", str(activation)) if activation is not None else "linear"


def find_keras_head(model: Any, label: str | None = None) -> dict[str, Any]:
    """Walk back from the output to ``GlobalAveragePooling2D → Dense``.

    Returns the feature tensor, the pooling layer, the pooled tensor, the Dense layer and
    whether the output is the Dense's linear output; raises :class:`ModelError` naming the
    layers found when the head is something else.
    """
    label = label or f"Keras model {model.name}"
    outputs = list(model.outputs)
    if len(outputs) != 1:
        raise ModelError(f"{label} has {len(outputs)} outputs; camloc needs one")
    output = outputs[0]

    def refuse(why: str) -> ModelError:
        return ModelError(f"{label}: plain CAM needs GlobalAveragePooling2D → "
                          f"Dense at the end, but {why}; layers found: {_describe_tail(output)}")

    layer, inputs = _producer(output)
    linear_output, final = True, None
    kind = type(layer).__name__
    if kind in ("Activation", "Softmax"):
        if kind == "Activation" and _activation_name(layer) not in _FINAL_ACTIVATIONS:
            raise refuse(f"the output activation is {_activation_name(layer)!r}")
        linear_output = kind == "Activation" and _activation_name(layer) == "linear"
        final = layer
        layer, inputs = _producer(inputs[0])
    if type(layer).__name__ != "Dense":
        raise refuse(f"the output comes from {type(layer).__name__} {getattr(layer, 'name', '')!r}")
    dense = layer
    if _activation_name(dense) not in _FINAL_ACTIVATIONS:
        raise refuse(f"Dense {dense.name!r} has activation {_activation_name(dense)!r}")
    linear_output = linear_output and _activation_name(dense) == "linear"
    pooled = inputs[0]
    layer, inputs = _producer(pooled)
    neck = []
    while layer is not None and type(layer).__name__ in _PASS_THROUGH | _NECK:
        if type(layer).__name__ in _NECK:
            step = _neck_step(layer)
            if step is None:
                raise refuse(f"{type(layer).__name__} {layer.name!r} after the pooling is not a "
                             "plain per-channel step")
            neck.append(step)
        layer, inputs = _producer(inputs[0])
    if type(layer).__name__ != "GlobalAveragePooling2D":
        what = f"{type(layer).__name__} {layer.name!r}" if layer is not None else "the input"
        raise refuse(f"Dense {dense.name!r} is fed by {what}")
    return {"features": inputs[0], "pool": layer, "pooled": pooled, "dense": dense,
            "linear_output": linear_output, "final": final, "neck": neck}


def _neck_step(layer: Any) -> NeckStep | None:
    """A Keras BatchNormalization / LayerNormalization on the pooled vector as a NeckStep."""
    import keras

    def tensor(variable: Any) -> torch.Tensor | None:
        return None if variable is None else torch.as_tensor(
            keras.ops.convert_to_numpy(variable)).float()

    axis = layer.axis if isinstance(layer.axis, int) else list(layer.axis)
    if axis not in (-1, 1, [-1], [1]):
        return None
    if type(layer).__name__ == "BatchNormalization":
        return NeckStep("batch_norm", tensor(layer.gamma), tensor(layer.beta), float(layer.epsilon),
                        running_mean=tensor(layer.moving_mean),
                        running_var=tensor(layer.moving_variance))
    if getattr(layer, "rms_scaling", False):
        return None
    return NeckStep("layer_norm", tensor(layer.gamma), tensor(layer.beta), float(layer.epsilon))


def _input_layout(model: Any) -> tuple[bool, tuple[int | None, int | None]]:
    """``(channels_last, (h, w))`` of the model's single image input."""
    if len(model.inputs) != 1:
        raise ModelError(f"Keras model {model.name} has {len(model.inputs)} inputs; "
                         "camloc needs one")
    shape = tuple(model.inputs[0].shape)
    if len(shape) != 4:
        raise ModelError(f"Keras model {model.name} takes inputs of shape {shape}, not images")
    if shape[-1] == 3:
        return True, (shape[1], shape[2])
    if shape[1] == 3:
        return False, (shape[2], shape[3])
    raise ModelError(f"Keras model {model.name} takes inputs of shape {shape}, not RGB images")


def default_preprocess(model_name: str) -> str:
    """The ``keras.applications`` convention for a model name; ``none`` when unknown."""
    name = model_name.lower()
    for prefix, mode in _APPLICATION_PREPROCESS:
        if name.startswith(prefix):
            return mode
    return "none"


def read_keras_model(path: Path) -> Any:
    keras = import_keras()
    if not path.is_file():
        raise ModelError(f"model file {path} not found")
    try:
        return keras.saving.load_model(str(path), compile=False)
    except Exception as error:  # noqa: BLE001 - Keras raises many types for one bad file
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise ModelError(f"cannot load Keras model {path}: {first}") from None


def keras_adapter(
    model: Any,
    *,
    name: str | None = None,
    class_names: Sequence[str] | None = None,
    input_size: int | tuple[int, int] | None = None,
    preprocess: str | None = None,
    source: str = "keras",
) -> KerasAdapter:
    """Adapt an in-memory Keras model (see :func:`load_keras_model` for the options)."""
    keras = import_keras()
    head = find_keras_head(model, f"Keras model {name or model.name}")
    channels_last, (height, width) = _input_layout(model)
    if input_size is not None:
        size = size_pair(input_size)
    elif height and width:
        size = (int(height), int(width))
    else:
        size = (224, 224)
    convention = preprocessing(preprocess or default_preprocess(model.name))
    dense = head["dense"]
    kernel = torch.as_tensor(keras.ops.convert_to_numpy(dense.kernel)).float()  # (K, C)
    bias = (torch.as_tensor(keras.ops.convert_to_numpy(dense.bias)).float() if dense.use_bias
            else kernel.new_zeros(kernel.shape[1]))
    runner = keras.Model(model.inputs, [head["features"], head["pooled"], model.outputs[0]])
    adapter = KerasAdapter(
        model=model,
        name=name or model.name,
        class_names=default_class_names(kernel.shape[1], class_names),
        input_size=size,
        mean=convention.mean,
        std=convention.std,
        feature_layer=_producer(head["features"])[0].name,
        weight=kernel.T.contiguous(),
        bias=bias,
        neck=head["neck"],
        source=f"{source}, preprocess={convention.name}",
        bgr=convention.bgr,
        channels_last=channels_last,
        runner=runner,
        data_format=getattr(head["pool"], "data_format", "channels_last"),
        logits_from_output=head["linear_output"],
    )
    adapter.place_head(adapter.device)
    _check_keras(adapter, head["dense"], head["final"])
    return adapter


def _check_keras(adapter: KerasAdapter, dense: Any, final: Any) -> None:
    """Check at load, in one forward pass: the pooling is the mean of the feature map (so
    ``mean_xy(CAM_c) + b_c == logit_c``) and the model's output is activation(logits)."""
    example = torch.randn(2, 3, *adapter.input_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        network_input = adapter.network_input(example).to(adapter.device)
        features, pooled, output = adapter.runner(network_input, training=False)
        if adapter.data_format == "channels_last":
            features = features.permute(0, 3, 1, 2)
        assert adapter.weight is not None  # set by keras_adapter
        logits = pooled.reshape(2, -1) @ adapter.weight.T + adapter.bias
        weight, scale, bias = adapter.head(features)  # what CAM uses: neck included
        mean_features = features.mean(dim=(2, 3))
        if scale is not None:
            mean_features = mean_features * scale
        from_cams = mean_features @ weight.T + bias
        expected = dense.activation(logits)
        if final is not None:
            expected = final(expected)
    tolerance = 1e-4 * (1 + logits.abs().max().item())
    if not torch.allclose(from_cams, logits, atol=tolerance, rtol=1e-3):
        error = (from_cams - logits).abs().max().item()
        raise ModelError(f"Keras model {adapter.name}: its logits are not reproduced by averaging "
                         f"'{adapter.feature_layer}' (max error {error:.3g})")
    if not torch.allclose(expected, output, atol=tolerance, rtol=1e-3):
        raise ModelError(f"Keras model {adapter.name}: its output is not {dense.name}'s activation "
                         "of the pooled features (an extra step hides in the head)")


def load_keras_model(
    path: str | os.PathLike,
    *,
    class_names: Sequence[str] | None = None,
    input_size: int | tuple[int, int] | None = None,
    preprocess: str | None = None,
) -> KerasAdapter:
    """Load a ``.keras`` / ``.h5`` classifier and find its GAP + Dense head.

    ``preprocess``: caffe | tf | torch | none; default from ``PATH.json`` (keys
    ``preprocess``, ``class_names``, ``input_size``), else from the model's name.
    """
    path = Path(path)
    meta = sidecar(path)
    model = read_keras_model(path)
    return keras_adapter(
        model,
        name=path.stem,
        class_names=class_names or meta.get("class_names"),
        input_size=input_size or meta.get("input_size"),
        preprocess=preprocess or meta.get("preprocess"),
        source=f"keras {path.name}",
    )
