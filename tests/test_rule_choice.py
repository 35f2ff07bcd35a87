"""The box rule chosen from evidence: on synthetic maps whose best rule is known it is found,
and from the command line it is stored with the model and used by every door."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import torch
from conftest import CAMLOC, EXAMPLES

import camloc
from camloc.evaluate.rules import choose_box_rule, rule_ious, score_rules


def halo_maps(count: int, seed: int = 0):
    """A bright core (the object) inside a dim halo at 0.3: rules above 0.3 box the core."""
    rng = np.random.default_rng(seed)
    maps, boxes = [], []
    for _ in range(count):
        heat = torch.zeros(64, 80)
        x0, y0 = rng.integers(8, 30), rng.integers(8, 20)
        w, h = rng.integers(12, 30), rng.integers(12, 30)
        heat[max(0, y0 - 6): y0 + h + 6, max(0, x0 - 6): x0 + w + 6] = 0.3
        heat[y0: y0 + h, x0: x0 + w] = 1.0
        maps.append(heat)
        boxes.append(np.array([[x0, y0, x0 + w, y0 + h]]))
    return maps, boxes


def cone_maps(count: int, seed: int = 1):
    """Linear cones whose true box is where the map is at least 0.25 of its peak."""
    rng = np.random.default_rng(seed)
    maps, boxes = [], []
    ys, xs = torch.meshgrid(torch.arange(96.0), torch.arange(96.0), indexing="ij")
    for _ in range(count):
        cy, cx, radius = rng.integers(30, 66), rng.integers(30, 66), rng.integers(16, 28)
        heat = (1 - torch.maximum((ys + 0.5 - cy).abs(), (xs + 0.5 - cx).abs()) / radius).clamp(min=0)
        inside = (heat >= 0.25).nonzero()
        boxes.append(np.array([[inside[:, 1].min().item(), inside[:, 0].min().item(),
                                inside[:, 1].max().item() + 1, inside[:, 0].max().item() + 1]]))
        maps.append(heat)
    return maps, boxes


def test_the_known_best_rule_is_chosen():
    best, scores = choose_box_rule(*halo_maps(12))
    assert best.rule in (0.35, 0.5, 0.6) and best.hits == 1.0
    assert next(s for s in scores if s.rule == 0.25).hits < 1.0  # the halo spoils the paper-like rule
    best, _ = choose_box_rule(*cone_maps(12))
    assert best.rule == 0.25 and best.mean_iou > 0.95


def test_scores_count_hits_and_ties_go_to_the_better_mean():
    ious = np.array([[0.9, 0.6], [0.4, 0.55]])
    first, second = score_rules(ious, [0.25, 0.5])
    assert (first.hits, second.hits) == (0.5, 1.0)
    assert rule_ious([torch.zeros(10, 10)], [np.array([[0, 0, 5, 5]])], [0.25]).tolist() == [[0.0]]


@pytest.fixture
def checkpoint(tmp_path):
    import torchvision

    from camloc.models.checkpoint import checkpoint_payload, save_atomic

    torch.manual_seed(0)
    network = torchvision.models.resnet18(num_classes=3)
    path = tmp_path / "model.pt"
    save_atomic(checkpoint_payload(network, "torchvision/resnet18", "fc", ["a", "b", "c"], (224, 224),
                                   (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), None, {}), path)
    return path


def test_eval_chooses_stores_and_every_door_uses_the_rule(checkpoint, tmp_path):
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("image,label,xmin,ymin,xmax,ymax\ncoffee.jpg,a,100,40,480,350\n"
                     "chelsea_cat.jpg,b,60,20,420,300\nrocket.jpg,c,200,10,330,420\n")
    done = subprocess.run([*CAMLOC, "eval", "--images", str(EXAMPLES), "--boxes", str(boxes), "--model",
                           str(checkpoint), "--choose-rule", "--save-rule", "--json", str(tmp_path / "m.json")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "<- chosen" in done.stdout and "stored in" in done.stderr
    chosen = json.loads((tmp_path / "m.json").read_text())["box_rules"]["chosen"]
    model = camloc.load_model(str(checkpoint))
    assert model.box_threshold == chosen
    out = tmp_path / "run"
    ran = subprocess.run([*CAMLOC, "run", str(EXAMPLES / "coffee.jpg"), "--model", str(checkpoint), "--out", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert ran.returncode == 0, ran.stderr
    record = json.loads((out / "results.jsonl").read_text())
    [expected] = camloc.explain(model, EXAMPLES / "coffee.jpg", threshold=chosen)
    assert record["cams"][0]["boxes"] == [list(b) for b in expected.boxes[0]]


def test_save_rule_needs_a_model_file():
    done = subprocess.run([*CAMLOC, "eval", "--images", str(EXAMPLES), "--boxes", "b.csv", "--choose-rule",
                           "--save-rule"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "--save-rule stores the rule with a model file" in done.stderr
