"""walkcam: plain CAM walked over the affinities of a mid-level layer's features."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import torch
from conftest import CAMLOC, EXAMPLES, ROOT

import camloc
from camloc.evaluate import settings_of
from camloc.methods import ClassSelection, feature_walk, get_method, guide_layer, resolve_method
from camloc.methods.cam import class_maps

PHOTO = str(EXAMPLES / "coffee.jpg")


def two_regions(height: int = 8, width: int = 8, split: int = 5) -> torch.Tensor:
    """(1, 2, h, w) features: one direction left of column ``split``, an orthogonal one right."""
    guide = torch.zeros(1, 2, height, width)
    guide[0, 0, :, :split] = 1.0
    guide[0, 1, :, split:] = 1.0
    return guide


def test_the_walk_spreads_a_peak_over_its_region_and_nowhere_else():
    cam = torch.zeros(1, 1, 8, 8)
    cam[0, 0, 3, 1] = 10.0  # the most discriminative cell of the object (left region)
    walked = feature_walk(cam, two_regions(), steps=8)[0, 0]
    left, right = walked[:, :5], walked[:, 5:]
    assert torch.allclose(left, torch.full_like(left, 10.0 / 40))  # the region's mean, everywhere in it
    assert torch.all(right == 0)
    # thresholded at a quarter of its max, the plain CAM boxes one cell, the walked map the region
    assert int((cam[0, 0] >= 0.25 * cam.max()).sum()) == 1
    assert int((walked >= 0.25 * walked.max()).sum()) == 40


def test_the_walk_keeps_a_constant_map_and_each_class_separate():
    guide = torch.randn(2, 16, 7, 7)
    maps = torch.stack([torch.full((7, 7), 3.0), torch.rand(7, 7)])[None].expand(2, -1, -1, -1)
    walked = feature_walk(maps, guide)
    assert walked.shape == (2, 2, 7, 7)
    assert torch.allclose(walked[:, 0], torch.full((2, 7, 7), 3.0))  # rows of T sum to one
    one_class = feature_walk(maps[:, 1:], guide)
    assert torch.allclose(one_class[:, 0], walked[:, 1], atol=1e-6)


def test_maps_on_a_coarser_grid_are_resampled_to_the_guide():
    assert feature_walk(torch.rand(1, 3, 7, 7), torch.rand(1, 4, 14, 14)).shape == (1, 3, 14, 14)


def test_the_guide_is_the_stage_before_the_last_dilated_or_not():
    assert guide_layer(camloc.load_model()) == "blocks.4"
    assert guide_layer(camloc.load_model(dilate=False)) == "blocks.4"
    assert guide_layer(camloc.load_model("resnet18", weights="random")) == "layer3"


def test_walkcam_is_the_cam_walked_over_the_guide_layer_features():
    model = camloc.load_model(runtime="torch")
    batch = torch.randn(2, 3, 224, 224)
    captured = {}
    handle = model.module("blocks.4").register_forward_hook(lambda _m, _i, out: captured.update(guide=out))
    try:
        with torch.no_grad():
            logits, features = model.forward_with_features(batch)
    finally:
        handle.remove()
    classes = logits.topk(2, dim=1).indices
    expected = feature_walk(class_maps(model, features, classes), captured["guide"])
    output = get_method("walkcam", model)(batch, ClassSelection(topk=2))
    assert torch.equal(output.classes, classes) and output.method == "walkcam"
    assert torch.allclose(output.maps, expected, atol=1e-5)
    assert not model.module("blocks.4")._forward_hooks  # the hook is gone


@pytest.mark.parametrize("runtime", ["openvino", "onnxruntime"])
def test_walkcam_runs_in_the_models_runtime(runtime):
    """The runtime's graph gets the guide layer as a third output (exported once, kept when
    it agrees with eager PyTorch); other input sizes run the eager network."""
    model = camloc.load_model(runtime=runtime)
    reference_model = camloc.load_model(runtime="torch")
    [result] = camloc.explain(model, PHOTO, method="walkcam")
    assert model.runtime == runtime and model.guided["blocks.4"] is not None
    assert model.guided["blocks.4"].outputs == ("logits", "features", "guide")
    [reference] = camloc.explain(reference_model, PHOTO, method="walkcam")
    assert result.method == "walkcam" and result.targets[0].index == reference.targets[0].index
    assert torch.allclose(result.normalized, reference.normalized, atol=1e-3)
    assert np.abs(np.array(result.boxes[0]) - np.array(reference.boxes[0])).max() <= 1
    [larger] = camloc.explain(model, PHOTO, method="walkcam", input_size=256)
    [larger_reference] = camloc.explain(reference_model, PHOTO, method="walkcam", input_size=256)
    assert torch.allclose(larger.normalized, larger_reference.normalized, atol=1e-4)


def test_the_command_runs_walkcam_and_refuses_an_unknown_guide_layer(tmp_path):
    done = subprocess.run([*CAMLOC, "run", PHOTO, "--method", "walkcam", "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    [record] = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert record["method"] == "walkcam" and record["cams"][0]["boxes"]
    bad = subprocess.run([*CAMLOC, "run", PHOTO, "--method", "walkcam", "--layer", "blocks.99",
                          "--out", str(tmp_path / "bad")], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and "blocks.99" in bad.stderr


@pytest.mark.parametrize("layer", ["blocks.2", "blocks.4"])
def test_another_guide_layer_can_be_given(layer):
    method = get_method("walkcam", camloc.load_model(runtime="torch"), layer=layer)
    assert method.layer == layer
    maps = method(torch.randn(1, 3, 224, 224), ClassSelection()).maps
    assert maps.shape[-2:] == ((28, 28) if layer == "blocks.2" else (14, 14))


def test_walkcam_boxes_by_otsu_unless_another_rule_is_given():
    model = camloc.load_model(runtime="torch")
    [default] = camloc.explain(model, PHOTO, method="walkcam")
    [otsu] = camloc.explain(model, PHOTO, method="walkcam", threshold="otsu")
    assert default.boxes == otsu.boxes
    assert camloc.ExplainConfig(method="walkcam").box_threshold(model) == "otsu"
    assert camloc.ExplainConfig(method="walkcam", threshold=0.25).box_threshold(model) == 0.25
    assert camloc.ExplainConfig(method="cam").box_threshold(model) == 0.25


def test_a_guided_graph_that_disagrees_is_dropped_and_the_eager_network_runs(monkeypatch, tmp_path):
    from camloc.models import runtime as runtimes

    model = camloc.load_model(runtime="openvino")
    monkeypatch.setattr(runtimes, "agreement", lambda *_args: "its logits differ")
    monkeypatch.setattr(model.runner, "onnx_path", str(tmp_path / "model.onnx"))  # a fresh folder
    [result] = camloc.explain(model, PHOTO, method="walkcam")
    assert model.guided["blocks.4"] is None and not list(tmp_path.glob("guide-*.onnx"))
    [reference] = camloc.explain(camloc.load_model(runtime="torch"), PHOTO, method="walkcam")
    assert torch.allclose(result.normalized, reference.normalized, atol=1e-5)


def test_walkcam_on_a_network_outside_pytorch_is_one_clear_error_and_not_the_default(tmp_path):
    onnx = tmp_path / "lite0.onnx"
    exported = subprocess.run([*CAMLOC, "export", "--onnx", str(onnx)], capture_output=True, text=True,
                              timeout=300, cwd=ROOT)
    assert exported.returncode == 0, exported.stderr
    done = subprocess.run([*CAMLOC, "run", PHOTO, "--model", str(onnx), "--method", "walkcam",
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert "walkcam need a PyTorch model" in done.stderr
    # the default method on an ONNX model is the plain CAM, boxed at 0.25
    model = camloc.load_model(str(onnx))
    assert resolve_method("auto", model) == "cam"
    [result] = camloc.explain(model, PHOTO)
    [plain] = camloc.explain(model, PHOTO, method="cam", threshold=0.25)
    assert result.method == "cam" and result.boxes == plain.boxes


def test_the_default_is_walkcam_boxed_by_otsu_in_every_door(tmp_path):
    model = camloc.load_model(runtime="torch")
    assert resolve_method("auto", model) == "walkcam"
    assert resolve_method("auto", model, layer=model.feature_layer) == "cam"
    assert resolve_method("auto", model, layer="blocks.5") == "gradcam"
    [default] = camloc.explain(model, PHOTO)
    [walked] = camloc.explain(model, PHOTO, method="walkcam", threshold="otsu")
    [plain] = camloc.explain(model, PHOTO, method="cam")
    assert default.method == "walkcam" and default.boxes == walked.boxes
    assert not torch.allclose(default.normalized, plain.normalized, atol=1e-2)  # not the plain CAM
    done = subprocess.run([*CAMLOC, "run", PHOTO, "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    [record] = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert record["method"] == "walkcam"
    got, want = record["cams"][0]["boxes"][0], walked.boxes[0][0]
    assert max(abs(a - b) for a, b in zip(got, want, strict=True)) <= 1
    settings = settings_of(model, camloc.ExplainConfig())
    assert settings["method"] == "walkcam" and settings["threshold"] == "otsu"


def test_a_walked_map_flat_to_rounding_is_flat_not_noise():
    """A random network's features are alike everywhere: its walked map is constant up to
    float rounding (1e-6 of its values), which must not decide a box."""
    maps = torch.full((1, 1, 14, 14), 1.1765) + torch.randn(1, 1, 14, 14) * 1e-6
    assert float(camloc.normalize_maps(maps).abs().max()) == 0.0
    tilted = torch.full((1, 1, 14, 14), 1.1765) + torch.linspace(0, 0.01, 14)  # a real slope stays
    assert float(camloc.normalize_maps(tilted).max()) == pytest.approx(1.0)
