"""``camloc export``: a PyTorch model as ONNX whose outputs include its top-k CAMs.

``export_onnx(adapter, "out.onnx", topk=5)`` writes ``logits (N, C)``, ``classes (N, k)``
and ``cams (N, k, h, w)``: the CAMs are computed inside the graph, so a deployment gets maps
for free; class names, input size and normalisation are stored as ``camloc.*`` metadata.

>>> import camloc, tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "r18.onnx")
>>> export_onnx(camloc.load_model("resnet18", weights="random"), path, topk=3).suffix
'.onnx'
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from .errors import ModelError
from .methods.cam import class_maps
from .models.adapter import ClassifierAdapter
from .models.external import ExternalAdapter
from .models.onnx import META_PREFIX, _NoTorchNetwork, import_onnx


class CAMExport(nn.Module):
    """A PyTorch adapter as one module: ``x → (logits, top-k classes, top-k CAMs)``.

    >>> import camloc, torch
    >>> wrapper = CAMExport(camloc.load_model("resnet18", weights="random"), topk=2)
    >>> [tuple(t.shape) for t in wrapper(torch.randn(1, 3, 224, 224))]
    [(1, 1000), (1, 2), (1, 2, 7, 7)]
    """

    def __init__(self, adapter: ClassifierAdapter, topk: int = 5):
        super().__init__()
        self.adapter = adapter
        self.network = adapter.model  # registered, so the exporter sees its parameters
        self.topk = topk

    def forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits, features = self.adapter.forward_with_features(batch)
        classes = logits.topk(self.topk, dim=1).indices
        return logits, classes, class_maps(self.adapter, features, classes)


def export_onnx(
    adapter: ClassifierAdapter,
    path: str | os.PathLike,
    topk: int = 5,
    opset: int = 17,
) -> Path:
    """Write ``adapter`` as ONNX with outputs ``logits``, ``classes`` and ``cams`` (top-k).

    The input is camloc's normalised ``(N, 3, H, W)`` batch (dynamic N); class names, input
    size and normalisation are stored as ``camloc.*`` metadata, so ``load_onnx_model`` and
    ``camloc run --model OUT.onnx`` need nothing else.
    """
    onnx, _ = import_onnx()
    if isinstance(adapter, ExternalAdapter) or type(adapter.model) is _NoTorchNetwork:
        raise ModelError("camloc export writes PyTorch models; this model is already external")
    adapter.require_cam()
    if not 1 <= topk <= adapter.num_classes:
        raise ModelError(f"--topk must be in 1..{adapter.num_classes}, got {topk}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = CAMExport(adapter, topk).cpu().eval()
    example = torch.zeros(1, 3, *adapter.input_size)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter announces its deprecation
        torch.onnx.export(
            wrapper, (example,), str(path), dynamo=False, opset_version=opset,
            input_names=["input"], output_names=["logits", "classes", "cams"],
            dynamic_axes={name: {0: "batch"} for name in ("input", "logits", "classes", "cams")},
        )
    model = onnx.load(str(path))
    meta = {"name": adapter.name, "class_names": adapter.class_names, "mean": list(adapter.mean),
            "std": list(adapter.std), "input_size": list(adapter.input_size), "topk": topk}
    for key, value in meta.items():
        prop = model.metadata_props.add()
        prop.key, prop.value = META_PREFIX + key, json.dumps(value)
    onnx.save(model, str(path))
    return path
