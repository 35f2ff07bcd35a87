"""ONNX: export with in-graph CAMs, loading ONNX classifiers into onnxruntime, refusals."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
import torchvision
from torch import nn

import camloc
from camloc.errors import ModelError
from camloc.methods import CAMMethod, ClassSelection, class_maps
from camloc.models.onnx import OnnxAdapter, find_onnx_head
from camloc.onnx_export import export_onnx

IMAGES = Path(__file__).resolve().parent.parent / "examples" / "images"
TOPK = 3


def export_plain(module: nn.Module, path, size=(64, 64), dynamic: bool = True, channels_last=False):
    """A plain logits-only ONNX file, as a user would export it (legacy exporter)."""
    shape = (1, *size, 3) if channels_last else (1, 3, *size)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.zeros(shape),), str(path), dynamo=False,
                          opset_version=17, input_names=["image"], output_names=["scores"],
                          dynamic_axes={"image": {0: "n"}, "scores": {0: "n"}} if dynamic else None)
    return path


def check_cam_identity(adapter, batch: torch.Tensor, expected_logits: torch.Tensor) -> None:
    """Logits as expected, and mean_xy(CAM_c) + b_c == logit_c for every class."""
    logits, features = adapter.forward_with_features(batch)
    every_class = torch.arange(adapter.num_classes).expand(len(batch), -1)
    maps = class_maps(adapter, features, every_class)
    _, _, bias = adapter.head(features)
    scale = 1 + expected_logits.abs().max().item()
    torch.testing.assert_close(logits, expected_logits, atol=1e-4 * scale, rtol=1e-4)
    torch.testing.assert_close(maps.mean(dim=(2, 3)) + bias, expected_logits,
                               atol=1e-4 * scale, rtol=1e-4)


@pytest.mark.parametrize("name", ["default", "resnet18"])
def test_export_gives_logits_and_cams_like_pytorch(tmp_path, name):
    adapter = camloc.load_model() if name == "default" else camloc.load_model(
        "resnet18", weights="random", input_size=96)
    path = export_onnx(adapter, tmp_path / f"{name}.onnx", topk=TOPK)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logits", "classes", "cams"]
    image = camloc.load_image(str(IMAGES / "chelsea_cat.jpg"))
    real, _ = camloc.preprocess(image, adapter.input_size, "squash", adapter.mean, adapter.std)
    noise = torch.randn(2, 3, *adapter.input_size, generator=torch.Generator().manual_seed(0))
    batch = torch.cat([real[None], noise])  # batch of 3 through a graph exported with 1
    outputs = session.run(None, {"input": batch.numpy()})
    logits, classes, cams = (torch.from_numpy(array) for array in outputs)
    expected = CAMMethod(adapter)(batch, ClassSelection(topk=TOPK))
    scale = 1 + expected.logits.abs().max().item()
    torch.testing.assert_close(logits, expected.logits, atol=1e-4 * scale, rtol=1e-4)
    assert torch.equal(classes, expected.classes)
    side = adapter.input_size[0] // (16 if adapter.dilated else 32)  # the last stage dilated: 1/16
    assert cams.shape == expected.maps.shape == (3, TOPK, side, side)
    map_scale = 1 + expected.maps.abs().max().item()
    torch.testing.assert_close(cams, expected.maps, atol=1e-4 * map_scale, rtol=1e-4)
    if name == "default":  # real weights: the cat is a cat in onnxruntime too
        assert adapter.class_names[classes[0, 0]] in ("Egyptian cat", "tabby", "tiger cat")


def test_exported_file_loads_back_with_its_metadata(tmp_path):
    torch_adapter = camloc.load_model("resnet18", weights="random", input_size=(96, 128))
    path = export_onnx(torch_adapter, tmp_path / "r18.onnx", topk=2)
    adapter = camloc.load_model(path)
    assert isinstance(adapter, OnnxAdapter)
    assert adapter.name == "resnet18" and adapter.class_names == torch_adapter.class_names
    assert adapter.mean == torch_adapter.mean and adapter.input_size == (96, 128)
    batch = torch.randn(2, 3, 96, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = CAMMethod(torch_adapter)(batch, ClassSelection(topk=4))
    got = CAMMethod(adapter)(batch, ClassSelection(topk=4))  # top-4 from a top-2 file: any k
    torch.testing.assert_close(got.logits, expected.logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got.maps, expected.maps, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dynamic", [True, False])
def test_plain_onnx_classifier_gives_exact_cams(tmp_path, dynamic):
    network = torchvision.models.resnet18(num_classes=10).eval()
    path = export_plain(network, tmp_path / "plain.onnx", dynamic=dynamic)
    adapter = camloc.load_model(str(path))
    assert adapter.input_size == (64, 64) and adapter.num_classes == 10
    assert adapter.fixed_batch == (None if dynamic else 1)
    assert adapter.mean == camloc.models.IMAGENET_MEAN  # no metadata: torch convention
    batch = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        check_cam_identity(adapter, batch, network(batch))


class MeanPoolNet(nn.Module):
    """Conv → ReduceMean → MatMul + Add, optionally channels-last end to end, plus Softmax."""

    def __init__(self, channels_last: bool = False, softmax: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, stride=2)
        self.weight = nn.Parameter(torch.randn(6, 4))
        self.bias = nn.Parameter(torch.randn(4))
        self.channels_last, self.softmax = channels_last, softmax

    def features(self, x):
        if self.channels_last:
            x = x.permute(0, 3, 1, 2)
        return torch.relu(self.conv(x))

    def forward(self, x):
        features = self.features(x)
        if self.channels_last:
            pooled = features.permute(0, 2, 3, 1).mean(dim=(1, 2))
        else:
            pooled = features.mean(dim=(2, 3))
        logits = pooled @ self.weight + self.bias
        return logits.softmax(dim=1) if self.softmax else logits

    def logits(self, x):
        return self.features(x).mean(dim=(2, 3)) @ self.weight + self.bias


@pytest.mark.parametrize("channels_last, softmax", [(False, False), (True, False), (False, True)])
def test_reduce_mean_matmul_graphs(tmp_path, channels_last, softmax):
    network = MeanPoolNet(channels_last, softmax).eval()
    path = export_plain(network, tmp_path / "mean.onnx", size=(20, 24), channels_last=channels_last)
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert "ReduceMean" in ops and "MatMul" in ops and ("Softmax" in ops) == softmax
    adapter = camloc.load_model(path, preprocess="tf")
    assert adapter.channels_last == channels_last and adapter.input_size == (20, 24)
    batch = torch.randn(2, 3, 20, 24, generator=torch.Generator().manual_seed(3))
    network_input = batch.permute(0, 2, 3, 1) if channels_last else batch
    with torch.no_grad():
        check_cam_identity(adapter, batch, network.logits(network_input))


class NeckNet(nn.Module):
    """GAP → LayerNorm → BatchNorm1d → Linear: affine steps after pooling (exact CAM)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.norm, self.bn, self.fc = nn.LayerNorm(8), nn.BatchNorm1d(8), nn.Linear(8, 4)
        self.bn.running_mean.uniform_(-0.5, 0.5)
        self.bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        return self.fc(self.bn(self.norm(self.pool(torch.relu(self.conv(x))).flatten(1))))


@pytest.mark.parametrize("exported_by", ["camloc", "user"])
def test_normalisation_after_pooling_stays_exact(tmp_path, exported_by):
    network = NeckNet().eval()
    if exported_by == "camloc":
        path = export_onnx(camloc.adapt(network, input_size=32), tmp_path / "neck.onnx", topk=2)
    else:
        path = export_plain(network, tmp_path / "neck.onnx", size=(32, 32))
    adapter = camloc.load_model(path)
    assert [step.kind for step in adapter.neck] == ["batch_norm", "layer_norm"]
    batch = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        check_cam_identity(adapter, batch, network(batch))


def test_graph_without_the_pattern_is_refused(tmp_path):
    flat = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 14 * 14, 5))
    path = export_plain(flat, tmp_path / "flat.onnx", size=(16, 16))
    with pytest.raises(ModelError, match=r"GlobalAveragePool .*fed by Relu.*found: .*Conv.*Gemm"):
        camloc.load_model(path)
    mlp = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 8), nn.Hardswish(), nn.Linear(8, 5))
    path = export_plain(mlp, tmp_path / "mlp.onnx", size=(16, 16))
    with pytest.raises(ModelError, match=r"fed by HardSwish.*GlobalAveragePool"):
        camloc.load_model(path)


def test_unreadable_onnx_file_is_one_clear_error(tmp_path):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"\x00not protobuf at all")
    with pytest.raises(ModelError, match="cannot read ONNX model"):
        camloc.load_model(bad)


def test_head_finder_reads_gemm_attributes():
    """A hand-written graph: GAP → Flatten → Gemm(transB=0, alpha, beta) → Softmax."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight, bias = rng.normal(size=(4, 3)).astype("float32"), rng.normal(size=3).astype("float32")
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["f"]),
         helper.make_node("GlobalAveragePool", ["f"], ["p"]),
         helper.make_node("Flatten", ["p"], ["v"]),
         helper.make_node("Gemm", ["v", "W", "B"], ["s"], alpha=2.0, beta=0.5, transB=0),
         helper.make_node("Softmax", ["s"], ["y"], axis=1)],
        "hand", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
        [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "B")])
    head = find_onnx_head(helper.make_model(graph))
    assert (head.logits, head.features, head.pool) == ("s", "f", "GlobalAveragePool")
    np.testing.assert_allclose(head.weight, 2.0 * weight.T)
    np.testing.assert_allclose(head.bias, 0.5 * bias)


def test_cli_export_then_run_with_the_onnx_file(tmp_path):
    from typer.testing import CliRunner

    from camloc.cli import app

    path = tmp_path / "r18.onnx"
    runner = CliRunner()
    done = runner.invoke(app, ["export", "--onnx", str(path), "--model", "resnet18", "--weights",
                               "random", "--topk", "2"])
    assert done.exit_code == 0, done.output
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(meta["camloc.topk"]) == 2
    out = tmp_path / "out"
    done = runner.invoke(app, ["run", str(IMAGES / "rocket.jpg"), "--model", str(path),
                               "-o", str(out), "-k", "2", "--device", "cpu"])
    assert done.exit_code == 0, done.output
    [record] = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert record["error"] is None and len(record["cams"]) == 2
    assert (out / "rocket_grid.png").is_file()
