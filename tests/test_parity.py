"""Every door gives the same answer: the Python API, `camloc run` (the installed command), the
Ray engine, the serve API and `camloc eval`'s per-image records, over a matrix of options.

Same top-k, scores within 1e-4 and boxes within 1 px, for each photo and option set."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import CAMLOC, EXAMPLES

import camloc
from camloc.config import ExplainConfig

PHOTOS = [EXAMPLES / "coffee.jpg", EXAMPLES / "chelsea_cat.jpg"]

# name → (CLI arguments, the same as an ExplainConfig, which model)
MATRIX = {
    "default": ([], {}, "default"),
    "gradcam-layer": (["--method", "gradcam", "--layer", "blocks.5"], {"method": "gradcam", "layer": "blocks.5"},
                      "default"),
    "views": (["--flip", "--scales", "1,2"], {"flip": True, "scales": (1.0, 2.0)}, "default"),
    "crop-256": (["--policy", "center-crop", "--input-size", "256"], {"policy": "center-crop", "input_size": 256},
                 "default"),
    "topk-3": (["--topk", "3"], {"topk": 3}, "default"),
    "class-name": (["--class", "Egyptian cat"], {"classes": ("Egyptian cat",)}, "default"),
    "rule-otsu": (["--threshold", "otsu", "--all-components", "--min-area", "0.01"],
                  {"threshold": "otsu", "largest_only": False, "min_area": 0.01}, "default"),
    "checkpoint": ([], {}, "checkpoint"),  # its stored box rule (mean) applies in every door
}
SERVE_FIELDS = ("topk", "classes", "method", "policy", "threshold")  # what a request may choose


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A camloc checkpoint (ResNet-18, 3 classes, random weights) that stores the box rule "mean"."""
    import torchvision

    from camloc.models.checkpoint import checkpoint_payload, save_atomic

    torch.manual_seed(0)
    network = torchvision.models.resnet18(num_classes=3)
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    payload = checkpoint_payload(network, "torchvision/resnet18", "fc", ["cat", "cup", "rocket"], (224, 224),
                                 (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "mean", {})
    save_atomic(payload, path)
    return path


@pytest.fixture(scope="module")
def models(default_model, checkpoint):
    return {"default": default_model, "checkpoint": camloc.load_model(str(checkpoint))}


def model_args(name: str, checkpoint: Path) -> list[str]:
    return ["--model", str(checkpoint)] if name == "checkpoint" else []


def same(reference: list[dict], other: list[dict], door: str) -> None:
    """Records of the same photos: same predictions, explained classes, scores and boxes."""
    assert len(reference) == len(other), door
    for ref, got in zip(reference, other, strict=True):
        assert got["error"] is None, (door, got["error"])
        assert [p["index"] for p in got["predictions"]] == [p["index"] for p in ref["predictions"]], door
        for a, b in zip(ref["predictions"], got["predictions"], strict=True):
            assert abs(a["score"] - b["score"]) <= 1e-4, door
        assert [c["index"] for c in got["cams"]] == [c["index"] for c in ref["cams"]], door
        for a, b in zip(ref["cams"], got["cams"], strict=True):
            assert abs(a["score"] - b["score"]) <= 1e-4, door
            assert len(a["boxes"]) == len(b["boxes"]), (door, a["boxes"], b["boxes"])
            for box_a, box_b in zip(a["boxes"], b["boxes"], strict=True):
                assert max(abs(x - y) for x, y in zip(box_a, box_b, strict=True)) <= 1, (door, box_a, box_b)


def api_records(model, config: ExplainConfig) -> list[dict]:
    return [r.to_record() for r in camloc.explain(model, [str(p) for p in PHOTOS], config)]


def by_image(records: list[dict]) -> list[dict]:
    names = {str(p): i for i, p in enumerate(PHOTOS)}
    return sorted(records, key=lambda r: names[r["image"]])


@pytest.mark.parametrize("name", list(MATRIX))
def test_api_run_and_serve_agree(name, models, checkpoint, tmp_path):
    from fastapi.testclient import TestClient

    from camloc.serve import create_app

    args, fields, which = MATRIX[name]
    model, config = models[which], ExplainConfig(**fields)
    reference = api_records(model, config)
    if which == "checkpoint":
        assert model.box_threshold == "mean" and reference[0]["cams"][0]["boxes"]

    out = tmp_path / "run"
    done = subprocess.run([*CAMLOC, "run", *map(str, PHOTOS), "--out", str(out), *model_args(which, checkpoint), *args],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    same(reference, by_image([json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]),
         "camloc run")

    server = {k: v for k, v in fields.items() if k not in SERVE_FIELDS}
    client = TestClient(create_app(model, config=ExplainConfig(**server)), base_url="http://localhost")
    answers = []
    for photo in PHOTOS:
        form = {key: str(value) for key, value in fields.items() if key in SERVE_FIELDS and key != "classes"}
        form["overlay"] = "false"
        form["class"] = list(fields.get("classes", ()))
        with open(photo, "rb") as stream:
            response = client.post("/api/explain", files={"file": (photo.name, stream, "image/jpeg")}, data=form)
        assert response.status_code == 200, response.text
        answers.append({**response.json(), "image": str(photo)})
    same(reference, answers, "camloc serve")


@pytest.mark.parametrize("name", ["default", "views", "crop-256", "checkpoint"])
def test_eval_explains_as_the_api(name, models, tmp_path):
    """`camloc eval` explains each photo's ground-truth class: its box and top-5 are the API's."""
    from camloc.evaluate import evaluate

    _, fields, which = MATRIX[name]
    model, config = models[which], ExplainConfig(**fields)
    reference = api_records(model, config)
    rows = ["image,label,xmin,ymin,xmax,ymax"]
    for photo, record in zip(PHOTOS, reference, strict=True):
        rows.append(f"{photo.name},{record['predictions'][0]['index']},10,10,100,100")
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("\n".join(rows) + "\n")
    result = evaluate(model, EXAMPLES, boxes, config)
    found = {Path(r.path).name: r for r in result.images}
    for photo, record in zip(PHOTOS, reference, strict=True):
        image = found[photo.name]
        assert image.predicted == [p["index"] for p in record["predictions"]]
        own = record["cams"][0]["boxes"][0] if record["cams"][0]["index"] == image.gt_classes[0] else None
        if own is None:  # the API explained another class (a fixed class): explain the GT class
            [again] = camloc.explain(model, [str(photo)], config.replace(classes=(image.gt_classes[0],)))
            own = list(again.boxes[0][0])
        assert max(abs(a - b) for a, b in zip(image.box, own, strict=True)) <= 1


@pytest.mark.parametrize("name", ["default", "views", "gradcam-layer", "checkpoint"])
def test_ray_engine_agrees(name, models, tmp_path, ray_session):
    from camloc.jobs import RunOptions
    from camloc.jobs.ray import RayOptions
    from camloc.jobs.ray import run as run_ray

    _, fields, which = MATRIX[name]
    model, config = models[which], ExplainConfig(**fields)
    reference = api_records(model, config)
    out = tmp_path / "ray"
    summary = run_ray(model, [str(p) for p in PHOTOS], RunOptions(out=out, config=config), RayOptions(workers=1),
                      device="cpu")
    assert summary.done == len(PHOTOS)
    same(reference, by_image([json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]),
         "camloc run --engine ray")


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray for the module (each run would otherwise start and stop its own)."""
    import logging

    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.WARNING,
             log_to_driver=False)
    yield
    ray.shutdown()
