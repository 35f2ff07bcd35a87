"""ONNX classifiers as camloc adapters, run in onnxruntime.

**Loading.** ``load_onnx_model("model.onnx")`` walks the graph back from its first output:
an optional final Softmax/LogSoftmax/Sigmoid, then ``Gemm`` (or ``MatMul`` [+ ``Add``]) with
constant weights, pass-through ops (Flatten, Reshape, Squeeze, Identity, Dropout), then
``GlobalAveragePool`` or ``ReduceMean`` over the two spatial axes. The tensor entering the
pooling is the feature map: an in-memory copy of the graph lists it (and the pre-softmax
logits) as extra outputs, so one onnxruntime run gives logits and features; the classifier's
weight and bias are read from the initializers. The network never runs in PyTorch; torch
only holds the numpy results for camloc's shared CAM code (a matmul at feature resolution).

Input convention: ``preprocess`` (caffe | tf | torch | none, see :mod:`camloc.models.external`),
else the file's ``camloc.*`` metadata (written by :func:`export_onnx`), else
``model.onnx.json`` next to it, else ``torch`` (ImageNet mean/std, what most ONNX
classifiers exported from PyTorch expect). NCHW and NHWC inputs are both handled.

Files written by ``camloc export`` (:mod:`camloc.onnx_export`) load with their metadata.

>>> import camloc, tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "r18.onnx")
>>> from camloc.onnx_export import export_onnx
>>> _ = export_onnx(camloc.load_model("resnet18", weights="random"), path, topk=3)
>>> adapter = load_onnx_model(path)                    # onnxruntime runs the network
>>> adapter.name, tuple(adapter.weight.shape)
('resnet18', (1000, 512))
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ..errors import ModelError
from .adapter import NeckStep, check_identity, per_channel
from .external import (
    ExternalAdapter,
    default_class_names,
    preprocessing,
    sidecar,
    size_pair,
)

if TYPE_CHECKING:
    from onnx import ModelProto, NodeProto

ONNX_SUFFIXES = (".onnx",)
_PASS_THROUGH = {"Identity", "Flatten", "Reshape", "Squeeze", "Dropout", "Cast"}
_FINAL_ACTIVATIONS = {"Softmax", "LogSoftmax", "Sigmoid"}
_NECK = {"BatchNormalization", "LayerNormalization"}
META_PREFIX = "camloc."


def import_onnx() -> tuple[ModuleType, ModuleType]:
    try:
        import onnx
        import onnxruntime
    except ImportError:
        raise ModelError("ONNX models need onnx and onnxruntime "
                         "(pip install 'camloc[onnx]')") from None
    return onnx, onnxruntime


# --------------------------------------------------------------------------- graph walking


class Graph:
    """Lookups over an ONNX graph: producers of tensors, constants, shapes."""

    def __init__(self, model: ModelProto) -> None:
        onnx, _ = import_onnx()
        self.model = model
        graph = model.graph
        self.producer = {out: node for node in graph.node for out in node.output}
        self.constants: dict[str, np.ndarray] = {
            init.name: onnx.numpy_helper.to_array(init) for init in graph.initializer}
        for node in graph.node:
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                self.constants[node.output[0]] = onnx.numpy_helper.to_array(node.attribute[0].t)
        self.ranks: dict[str, int] = {}
        try:
            inferred = onnx.shape_inference.infer_shapes(model).graph
            for info in [*inferred.value_info, *inferred.input, *inferred.output]:
                if info.type.tensor_type.HasField("shape"):
                    self.ranks[info.name] = len(info.type.tensor_type.shape.dim)
        except Exception:  # noqa: BLE001 - shape inference is a help, not a need
            pass

    def constant(self, name: str) -> np.ndarray | None:
        """The value of ``name`` if it is constant (also through Identity/Transpose/Cast)."""
        if name in self.constants:
            return self.constants[name]
        node = self.producer.get(name)
        if node is None or node.op_type not in ("Identity", "Transpose", "Cast"):
            return None
        value = self.constant(node.input[0])
        if value is None or node.op_type != "Transpose":
            return value
        perm = attribute(node, "perm")
        return value.transpose(perm) if perm is not None else value.T

    def describe(self, name: str, count: int = 6) -> str:
        """The last ops before tensor ``name``, oldest first: ``op 'node' → ...``."""
        found: list[str] = []
        node = self.producer.get(name)
        while node is not None and len(found) < count:
            found.append(f"{node.op_type} {node.name!r}" if node.name else node.op_type)
            inputs = [i for i in node.input if i and self.constant(i) is None]
            node = self.producer.get(inputs[0]) if inputs else None
        return " → ".join(reversed(found)) or "no operations"


def attribute(node: NodeProto, name: str, default: Any = None) -> Any:
    import onnx

    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default


@dataclass
class OnnxHead:
    logits: str  # tensor holding the (pre-activation) class scores
    features: str  # tensor entering the global average pooling
    weight: np.ndarray  # (C, K)
    bias: np.ndarray  # (C,)
    pool: str  # op type of the pooling
    channels_last: bool  # features are (N, h, w, K)
    neck: list[NeckStep]  # BatchNormalization / LayerNormalization after pooling, last first


def _classifier(graph: Graph, name: str) -> tuple[str, np.ndarray, np.ndarray] | None:
    """``(input, weight (C, K), bias (C,))`` when ``name`` comes from a linear layer."""
    node = graph.producer.get(name)
    if node is None:
        return None
    if node.op_type == "Gemm" and not attribute(node, "transA", 0):
        b = graph.constant(node.input[1])
        if b is None:
            return None
        weight = (b if attribute(node, "transB", 0) else b.T) * attribute(node, "alpha", 1.0)
        c = graph.constant(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        bias = (np.zeros(weight.shape[0]) if c is None
                else np.broadcast_to(c * attribute(node, "beta", 1.0), (weight.shape[0],)))
        return node.input[0], weight, bias
    if node.op_type == "Add":
        for side in (0, 1):
            c = graph.constant(node.input[1 - side])
            inner = graph.producer.get(node.input[side])
            if c is not None and inner is not None and inner.op_type == "MatMul":
                found = _classifier(graph, node.input[side])
                if found is None:
                    return None
                source, weight, bias = found
                return source, weight, bias + np.broadcast_to(c, bias.shape)
        return None
    if node.op_type == "MatMul":
        w = graph.constant(node.input[1])
        if w is None or w.ndim != 2:
            return None
        return node.input[0], w.T, np.zeros(w.shape[1])
    return None


def _spatial_axes(graph: Graph, node: NodeProto) -> set[int] | None:
    axes = attribute(node, "axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        value = graph.constant(node.input[1])
        axes = value.tolist() if value is not None else None
    if axes is None:
        return None
    return {a % 4 for a in axes}


def find_onnx_head(model: ModelProto, label: str = "ONNX model") -> OnnxHead:
    """Find ``pool → (flatten) → Gemm | MatMul + Add`` before the first output, or refuse."""
    graph = Graph(model)
    output = model.graph.output[0].name

    def refuse(why: str) -> ModelError:
        return ModelError(f"{label}: plain CAM needs GlobalAveragePool (or ReduceMean over H, W) "
                          f"→ Gemm/MatMul at the end of the graph, but {why}; found: "
                          f"{graph.describe(output)}")

    logits = output
    node = graph.producer.get(logits)
    while node is not None and node.op_type in _PASS_THROUGH | _FINAL_ACTIVATIONS:
        if node.op_type in _FINAL_ACTIVATIONS:
            logits = node.input[0]
        node = graph.producer.get(node.input[0])
    scores = node.output[0] if node is not None else logits
    found = _classifier(graph, scores)
    if found is None:
        what = node.op_type if node is not None else "a graph input"
        raise refuse(f"its output comes from {what}, not from a linear layer with constant weights")
    pooled, weight, bias = found
    node, neck = graph.producer.get(pooled), []
    while node is not None and node.op_type in _PASS_THROUGH | _NECK:
        if node.op_type in _NECK:
            step = _neck_step(graph, node, weight.shape[1])
            if step is None:
                raise refuse(f"its {node.op_type} after pooling is not a per-channel step on "
                             "the pooled vector with constant parameters")
            neck.append(step)
        node = graph.producer.get(node.input[0])
    if node is None or node.op_type not in ("GlobalAveragePool", "ReduceMean"):
        what = node.op_type if node is not None else "a graph input"
        raise refuse(f"the classifier is fed by {what}, not by global average pooling")
    channels_last = False
    if node.op_type == "ReduceMean":
        axes = _spatial_axes(graph, node)
        if graph.ranks.get(node.input[0], 4) != 4 or axes not in ({2, 3}, {1, 2}):
            raise refuse("its ReduceMean does not average a 4-d feature map over height and width")
        channels_last = axes == {1, 2}
    return OnnxHead(logits, node.input[0], weight.astype(np.float32), bias.astype(np.float32),
                    node.op_type, channels_last, neck)


def _neck_step(graph: Graph, node: NodeProto, channels: int) -> NeckStep | None:
    """A BatchNormalization / LayerNormalization over the channels of pooled ``(N, K)``."""
    if graph.ranks.get(node.input[0], 2) != 2:
        return None
    values = [graph.constant(name) if name else None for name in node.input[1:]]
    tensor = lambda v: None if v is None else torch.tensor(np.array(v, np.float32))  # noqa: E731
    if any(v is not None and v.size != channels for v in values):
        return None
    if node.op_type == "BatchNormalization":
        if len(values) < 4 or any(v is None for v in values[:4]):
            return None
        scale, shift, mean, var = (tensor(v) for v in values[:4])
        return NeckStep("batch_norm", scale, shift, float(attribute(node, "epsilon", 1e-5)),
                        running_mean=mean, running_var=var)
    if attribute(node, "axis", -1) not in (-1, 1) or not values or values[0] is None:
        return None
    beta = values[1] if len(values) > 1 else None
    return NeckStep("layer_norm", tensor(values[0]), tensor(beta),
                    float(attribute(node, "epsilon", 1e-5)))


# --------------------------------------------------------------------------- the adapter


@dataclass
class OnnxAdapter(ExternalAdapter):
    """An ONNX GAP + linear classifier run by onnxruntime; ``model`` is an empty Module."""

    session: Any = None  # onnxruntime.InferenceSession
    input_name: str = "input"
    output_names: tuple[str, str] = ("logits", "features")
    features_channels_last: bool = False
    fixed_batch: int | None = None  # the graph's batch size when it is not dynamic
    onnx_bytes: bytes = b""
    run_device: str = "cpu"

    @property
    def device(self) -> torch.device:
        return torch.device(self.run_device)

    def to(self, device: str | torch.device) -> OnnxAdapter:
        """Run on CUDA when onnxruntime has its CUDA provider; otherwise stay on the CPU."""
        import onnxruntime

        wanted = torch.device(device)
        cuda = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
        if wanted.type == "cuda" and cuda and self.run_device == "cpu":
            self.session = _session(self.onnx_bytes, cuda=True)
            self.run_device = str(wanted)
        elif wanted.type == "cpu" and self.run_device != "cpu":
            self.session = _session(self.onnx_bytes, cuda=False)
            self.run_device = "cpu"
        self.place_head(self.device)
        return self

    def run_network(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        array = batch.detach().cpu().numpy().astype(np.float32, copy=False)
        step = self.fixed_batch or len(array)
        results = [self._run(array[start : start + step], step)
                   for start in range(0, len(array), step)]
        logits = np.concatenate([r[0] for r in results])
        features = np.concatenate([r[1] for r in results])
        if self.features_channels_last:
            features = features.transpose(0, 3, 1, 2)
        to_torch = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(self.device)  # noqa: E731
        return to_torch(logits.reshape(len(array), -1)), to_torch(features)

    def _run(self, chunk: np.ndarray, step: int) -> tuple[np.ndarray, np.ndarray]:
        count = len(chunk)
        if self.fixed_batch and count < step:  # pad a short last chunk for a fixed-batch graph
            chunk = np.concatenate([chunk, np.zeros((step - count, *chunk.shape[1:]), chunk.dtype)])
        logits, features = self.session.run(list(self.output_names), {self.input_name: chunk})
        return logits[:count], features[:count]


class _NoTorchNetwork(nn.Module):
    """Stands in for ``adapter.model``: the network lives in onnxruntime, not in torch."""


def _session(onnx_bytes: bytes, cuda: bool = False) -> Any:
    _, onnxruntime = import_onnx()
    providers = (["CUDAExecutionProvider"] if cuda else []) + ["CPUExecutionProvider"]
    return onnxruntime.InferenceSession(onnx_bytes, providers=providers)


def _input_layout(model: ModelProto, label: str) -> tuple[str, bool, tuple[int | None, int | None], int | None]:
    """``(name, channels_last, (h, w), fixed batch size)`` of the graph's image input."""
    initializers = {init.name for init in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise ModelError(f"{label} has {len(inputs)} inputs; camloc needs one image input")
    dims = [d.dim_value if d.HasField("dim_value") else None
            for d in inputs[0].type.tensor_type.shape.dim]
    if len(dims) != 4:
        raise ModelError(f"{label} takes inputs of rank {len(dims)}, not (N, 3, H, W) images")
    if dims[1] == 3 or dims[3] != 3:
        return inputs[0].name, False, (dims[2], dims[3]), dims[0]
    return inputs[0].name, True, (dims[1], dims[2]), dims[0]


def _metadata(model: ModelProto) -> dict[str, Any]:
    """camloc metadata stored in the file by :func:`export_onnx` (JSON values)."""
    found: dict[str, Any] = {}
    for prop in model.metadata_props:
        if prop.key.startswith(META_PREFIX):
            try:
                found[prop.key.removeprefix(META_PREFIX)] = json.loads(prop.value)
            except ValueError:
                continue
    return found


def onnx_adapter(
    model: ModelProto,
    *,
    name: str = "onnx",
    class_names: Sequence[str] | None = None,
    input_size: int | tuple[int, int] | None = None,
    preprocess: str | None = None,
    source: str = "onnx",
) -> OnnxAdapter:
    """Adapt an in-memory ``onnx.ModelProto`` (see :func:`load_onnx_model` for the options)."""
    onnx, _ = import_onnx()
    head = find_onnx_head(model, f"ONNX model {name}")
    input_name, channels_last, (height, width), batch = _input_layout(model, f"ONNX model {name}")
    meta = _metadata(model)
    size = size_pair(input_size or meta.get("input_size") or (height or 224, width or 224))
    if preprocess is None and "mean" in meta and "std" in meta:
        mean, std, bgr, convention = tuple(meta["mean"]), tuple(meta["std"]), False, "file metadata"
    else:
        chosen = preprocessing(preprocess or meta.get("preprocess") or "torch")
        mean, std, bgr, convention = chosen.mean, chosen.std, chosen.bgr, chosen.name
    runnable = onnx.ModelProto()
    runnable.CopyFrom(model)
    listed = {out.name for out in runnable.graph.output}
    for tensor in (head.logits, head.features):
        if tensor not in listed:
            runnable.graph.output.append(onnx.ValueInfoProto(name=tensor))
    onnx_bytes = runnable.SerializeToString()
    try:
        session = _session(onnx_bytes)
    except Exception as error:  # noqa: BLE001 - onnxruntime's own error types
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise ModelError(f"onnxruntime cannot run ONNX model {name}: {first}") from None
    names = default_class_names(head.weight.shape[0], class_names or meta.get("class_names"))
    adapter = OnnxAdapter(
        model=_NoTorchNetwork(),
        name=meta.get("name") or name,
        class_names=names,
        input_size=size,
        mean=per_channel(mean),
        std=per_channel(std),
        feature_layer=head.features,
        weight=torch.from_numpy(head.weight.copy()),
        bias=torch.tensor(np.array(head.bias, np.float32)),
        neck=head.neck,
        source=f"{source}, preprocess={convention}",
        bgr=bgr,
        channels_last=channels_last,
        session=session,
        input_name=input_name,
        output_names=(head.logits, head.features),
        features_channels_last=head.channels_last,
        fixed_batch=batch if batch and batch > 0 else None,
        onnx_bytes=onnx_bytes,
    )
    example = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0))
    check_identity(adapter, example)
    if adapter.head_error:
        raise ModelError(f"ONNX model {name}: {adapter.head_error}")
    return adapter


def load_onnx_model(
    path: str | os.PathLike,
    *,
    class_names: Sequence[str] | None = None,
    input_size: int | tuple[int, int] | None = None,
    preprocess: str | None = None,
) -> OnnxAdapter:
    """Load an ``.onnx`` classifier and find its GAP + linear head (onnxruntime runs it).

    ``preprocess``: caffe | tf | torch | none; default from the file's camloc metadata,
    then ``PATH.json`` (keys ``preprocess``, ``class_names``, ``input_size``), then torch.
    """
    onnx, _ = import_onnx()
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file {path} not found")
    meta = sidecar(path)
    try:
        model = onnx.load(str(path))
    except Exception as error:  # noqa: BLE001 - protobuf decode errors and the like
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise ModelError(f"cannot read ONNX model {path}: {first}") from None
    return onnx_adapter(
        model,
        name=path.stem,
        class_names=class_names or meta.get("class_names"),
        input_size=input_size or meta.get("input_size"),
        preprocess=preprocess or meta.get("preprocess"),
        source=f"onnx {path.name}",
    )
