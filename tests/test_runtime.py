"""Runtimes (camloc.models.runtime): the CAM identity on each, agreement with eager PyTorch,
auto's choice cached on disk, its one-line fallback, `--runtime` on the installed command,
and the start-up cache (a second load traces nothing)."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch
from conftest import CAMLOC, EXAMPLES
from torch import nn

import camloc
from camloc.models import adapter as adapter_module
from camloc.models import dilation as dilation_module
from camloc.models import runtime as runtime_module
from camloc.models.adapter import ClassifierAdapter, inference_mode

# the test install has both (the onnx and openvino extras): each is tested, none skipped
EXTERNAL = list(runtime_module.EXTERNAL_RUNTIMES)


class Tiny(nn.Module):
    """Conv → ReLU → GAP → Linear: small enough to export and probe in a second."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                                      nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        return self.fc(self.features(x).mean(dim=(2, 3)))


def tiny() -> Tiny:
    torch.manual_seed(0)
    return Tiny().eval()


def eager(model: ClassifierAdapter, batch: torch.Tensor):
    with inference_mode(model.model):
        return ClassifierAdapter.forward_with_features(model, batch)


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CAMLOC_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.mark.parametrize("runtime", EXTERNAL)
def test_identity_and_agreement_on_each_runtime(runtime):
    torch.manual_seed(0)
    model = camloc.load_model("resnet18", weights="random", runtime=runtime)
    assert model.runtime == runtime
    batch = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    logits, features = model.forward_with_features(batch)
    weight, scale, bias = model.head(features)  # the identity on the runtime's own logits
    rebuilt = torch.einsum("ck,nkhw->nchw", weight, features).mean(dim=(2, 3)) + bias
    assert torch.allclose(rebuilt, logits, atol=1e-4 * (1 + logits.abs().max().item()))
    ref_logits, ref_features = eager(model, batch)  # and the answers of eager PyTorch
    assert torch.equal(logits.argmax(1), ref_logits.argmax(1))
    assert torch.allclose(logits, ref_logits, atol=1e-3) and torch.allclose(features, ref_features, atol=1e-3)
    # the pipeline uses the runtime, for plain CAM and the default (walkcam, its guided graph)
    eager_model = camloc.load_model(model.model, dilate=False)
    for method in ("cam", "auto"):
        [result] = camloc.explain(model, EXAMPLES / "coffee.jpg", method=method)
        [reference] = camloc.explain(eager_model, EXAMPLES / "coffee.jpg", method=method)
        assert result.targets[0].index == reference.targets[0].index
        assert max(abs(a - b) for a, b in zip(result.boxes[0][0], reference.boxes[0][0], strict=True)) <= 1


def test_auto_probes_once_then_reads_its_choice(fresh_cache, monkeypatch):
    probes = []
    real_probe = runtime_module.probe
    monkeypatch.setattr(runtime_module, "probe", lambda *a: probes.append(1) or real_probe(*a))
    first = camloc.load_model(tiny(), runtime="auto")
    second = camloc.load_model(tiny(), runtime="auto")
    assert len(probes) == 1 and first.runtime == second.runtime
    [record] = (fresh_cache / "runtime").glob("*.json")
    assert json.loads(record.read_text())["runtime"] == first.runtime


def test_auto_says_why_it_keeps_torch(fresh_cache, monkeypatch):
    lines = []
    monkeypatch.setattr(runtime_module, "available", lambda name: name == "torch")
    model = camloc.load_model(tiny(), runtime="auto", log=lines.append)
    assert model.runtime == "torch" and len(lines) == 1 and "neither onnxruntime nor openvino is installed" in lines[0]


def test_auto_refuses_a_runtime_that_disagrees(fresh_cache, monkeypatch):
    lines = []
    monkeypatch.setattr(runtime_module, "agreement", lambda *a: "its top-1 class differs from eager PyTorch's")
    model = camloc.load_model(tiny(), runtime="auto", log=lines.append)
    assert model.runtime == "torch"
    assert len(lines) == 1 and lines[0].startswith("runtime: eager PyTorch") and "top-1" in lines[0]


def test_unknown_or_unavailable_runtime_is_one_error(monkeypatch):
    with pytest.raises(camloc.ModelError, match="unknown runtime"):
        camloc.load_model(tiny(), runtime="tensorrt")
    monkeypatch.setattr(runtime_module, "available", lambda name: name == "torch")
    with pytest.raises(camloc.ModelError, match="needs"):
        camloc.load_model(tiny(), runtime="onnxruntime")


def test_gradient_methods_run_the_eager_network():
    model = camloc.load_model(tiny(), runtime=EXTERNAL[0])
    [result] = camloc.explain(model, EXAMPLES / "coffee.jpg", method="gradcam")
    assert result.method == "gradcam"
    with pytest.raises(camloc.CamlocError, match="amp"):
        camloc.explain(model, EXAMPLES / "coffee.jpg", amp=True)


def test_second_load_traces_nothing(fresh_cache, monkeypatch):
    """What find_head and the dilation found is cached by the network's fingerprint."""
    traced, dilated = [], []
    real_find, real_dilate = adapter_module.find_head, dilation_module._dilate
    monkeypatch.setattr(adapter_module, "find_head", lambda *a: traced.append(1) or real_find(*a))
    monkeypatch.setattr(dilation_module, "_dilate", lambda *a: dilated.append(1) or real_dilate(*a))
    loads = []
    for _ in range(2):
        torch.manual_seed(0)
        loads.append(camloc.load_model("resnet18", weights="random"))
    assert traced == [1] and dilated == [1]
    first, second = loads
    assert second.feature_layer == first.feature_layer == "layer4" and second.dilated
    batch = torch.randn(2, 3, 224, 224)
    assert torch.allclose(first.forward_with_features(batch)[0], second.forward_with_features(batch)[0])
    assert second.weight is second.model.fc.weight  # the second model's own tensors


def test_cached_runtime_choice_builds_no_network(monkeypatch):
    """The default model in onnxruntime: the second load neither probes, traces nor builds
    PyTorch, for the default method (walkcam, whose guide layer and graph the first run cached)."""
    camloc.explain(camloc.load_model(runtime="onnxruntime"), EXAMPLES / "coffee.jpg")
    events = []
    monkeypatch.setattr(runtime_module, "probe", lambda *a: events.append("probe"))
    monkeypatch.setattr(adapter_module, "find_head", lambda *a: events.append("trace"))
    model = camloc.load_model(runtime="onnxruntime")
    assert model.runtime == "onnxruntime"
    assert events == [] and not isinstance(model._network, nn.Module)
    [result] = camloc.explain(model, EXAMPLES / "coffee.jpg")
    assert result.targets[0].label == "espresso" and not isinstance(model._network, nn.Module)


def test_runtime_option_of_the_installed_command(tmp_path):
    answers = {}
    for runtime in ("torch", "onnxruntime"):
        out = tmp_path / runtime
        done = subprocess.run([*CAMLOC, "run", str(EXAMPLES / "coffee.jpg"), str(EXAMPLES / "chelsea_cat.jpg"),
                               "--out", str(out), "--runtime", runtime], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        answers[runtime] = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    for ref, got in zip(answers["torch"], answers["onnxruntime"], strict=True):
        assert ref["predictions"][0]["index"] == got["predictions"][0]["index"]
        box_a, box_b = ref["cams"][0]["boxes"][0], got["cams"][0]["boxes"][0]
        assert max(abs(a - b) for a, b in zip(box_a, box_b, strict=True)) <= 1
    refused = subprocess.run([*CAMLOC, "run", str(EXAMPLES / "coffee.jpg"), "--out", str(tmp_path / "g"),
                              "--method", "gradcam", "--runtime", "onnxruntime"],
                             capture_output=True, text=True, timeout=600)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "--runtime torch" in refused.stderr
    info = subprocess.run([*CAMLOC, "info", "--runtime", "onnxruntime"], capture_output=True, text=True, timeout=600)
    assert info.returncode == 0 and "runtime:       onnxruntime" in info.stdout


def test_a_runtime_model_pickles_with_its_graph(tmp_path):
    """Ray ships the model to actors, maybe on machines without this cache: the graph travels."""
    import pickle

    model = camloc.load_model(tiny(), runtime=EXTERNAL[0])
    batch = torch.randn(2, 3, 224, 224)
    state = model.runner.__getstate__()
    state["onnx_path"] = str(tmp_path / "elsewhere" / "model.onnx")  # not on the other machine
    runner = type(model.runner).__new__(type(model.runner))
    runner.__dict__.update(pickle.loads(pickle.dumps(state)))
    assert torch.allclose(runner(batch)[0], model.forward_with_features(batch)[0], atol=1e-5)
    again = pickle.loads(pickle.dumps(model))
    assert again.runtime == model.runtime and torch.allclose(again.forward_with_features(batch)[0],
                                                             model.forward_with_features(batch)[0], atol=1e-5)
