"""camloc eval: metrics against hand-computed cases, ground-truth readers, end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

import camloc
from camloc.boxes import box_iou
from camloc.config import ExplainConfig
from camloc.evaluate import GroundTruthError, evaluate, max_box_acc, read_ground_truth, sweep_ious
from camloc.evaluate.ground_truth import match_images
from camloc.evaluate.metrics import component_boxes, sweep_thresholds, working_resolution
from camloc.methods import ClassSelection, explain_batch, get_method
from camloc.pipeline import network_size

# --------------------------------------------------------------------------- metrics


def test_iou_hand_computed():
    ious = box_iou([[0, 0, 10, 10], [0, 0, 4, 4]], [[5, 0, 15, 10], [0, 0, 10, 10], [2, 2, 4, 4]])
    # [0,0,10,10] vs [5,0,15,10]: 50 / 150; vs itself: 1; vs [2,2,4,4]: 4 / 100
    # [0,0,4,4] vs [5,0,15,10]: 0; vs [0,0,10,10]: 16 / 100; vs [2,2,4,4]: 4 / 16
    assert np.allclose(ious, [[1 / 3, 1.0, 0.04], [0.0, 0.16, 0.25]])


def two_blobs() -> torch.Tensor:
    """A 20x40 map: a big blob (value 0.6) on the left, a small bright one (1.0) on the right."""
    heat = torch.zeros(20, 40)
    heat[2:18, 2:18] = 0.6  # 16 x 16
    heat[5:9, 30:34] = 1.0  # 4 x 4
    return heat


def test_components_of_several_thresholds_in_one_labelling():
    masks = (two_blobs()[None] >= torch.tensor([0.5, 0.8])[:, None, None]).numpy()
    layer, boxes, areas = component_boxes(masks)
    found = sorted(zip(layer.tolist(), boxes.tolist(), areas.tolist(), strict=True))
    assert found == [(0, [2, 2, 18, 18], 256), (0, [30, 5, 34, 9], 16), (1, [30, 5, 34, 9], 16)]


def test_sweep_best_box_among_contours_and_largest_box():
    gt_small = np.array([[30, 5, 34, 9]])
    sweep = sweep_ious(two_blobs(), gt_small, torch.tensor([0.5, 0.8, 0.0, 1.5]))
    # τ=0.5: two components; the best box is the small one (IoU 1), the largest is the big one (0)
    # τ=0.8: only the small one; τ=0: the whole map (20x40 box, IoU 16/800); τ=1.5: nothing
    assert sweep.best.tolist() == pytest.approx([1.0, 1.0, 16 / 800, 0.0])
    assert sweep.largest.tolist() == pytest.approx([0.0, 1.0, 16 / 800, 0.0])


def test_sweep_several_ground_truth_boxes_takes_the_best_match():
    gt = np.array([[0, 0, 5, 5], [2, 2, 18, 20]])  # the second covers 16x18 around the big blob
    sweep = sweep_ious(two_blobs(), gt, torch.tensor([0.5]))
    assert sweep.largest[0] == pytest.approx(256 / 288)


def test_sweep_matches_per_threshold_labelling():
    rng = np.random.default_rng(0)
    heat = torch.from_numpy(rng.random((6, 8))).float()
    heat = torch.nn.functional.interpolate(heat[None, None], size=(60, 80), mode="bilinear")[0, 0]
    heat = camloc.normalize_maps(heat)
    gt = np.array([[10, 5, 40, 30], [50, 30, 78, 58]])
    thresholds = sweep_thresholds(0.05)
    sweep = sweep_ious(heat, gt, thresholds)
    for t, tau in enumerate(thresholds.tolist()):
        boxes = camloc.boxes_from_map(heat, tau, largest_only=False)
        best = box_iou(boxes, gt).max() if boxes else 0.0
        assert sweep.best[t] == pytest.approx(best)
        assert sweep.largest[t] == pytest.approx(box_iou(boxes[:1], gt).max() if boxes else 0.0)


@pytest.mark.parametrize("seed", range(3))
def test_sweep_matches_scipy_labelling_on_maps_with_ties(seed):
    """Against an independent reference: ``ndimage.label`` of ``map >= τ`` for every τ, on
    maps quantised so that many pixels sit exactly on a threshold, τ's given unsorted."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    heat = torch.from_numpy(rng.random((5, 7))).float()
    heat = torch.nn.functional.interpolate(heat[None, None], size=(47, 71), mode="bilinear")[0, 0]
    heat = (camloc.normalize_maps(heat) * 20).round() / 20  # values on the 0.05 grid
    gt = np.array([[5, 3, 30, 25], [40, 20, 70, 46]])
    thresholds = sweep_thresholds(0.05)[torch.from_numpy(rng.permutation(20))]
    sweep = sweep_ious(heat, gt, thresholds)
    for t, tau in enumerate(thresholds.tolist()):
        labels, count = ndimage.label((heat >= tau).numpy(), structure=np.ones((3, 3)))
        boxes = [(s[1].start, s[0].start, s[1].stop, s[0].stop) for s in ndimage.find_objects(labels)]
        areas = np.bincount(labels.ravel())[1:]
        best = box_iou(boxes, gt).max() if count else 0.0
        largest = box_iou([boxes[int(np.argmax(areas))]], gt).max() if count else 0.0
        assert sweep.best[t] == pytest.approx(best) and sweep.largest[t] == pytest.approx(largest)


def test_max_box_acc_hand_computed():
    # 3 images x 4 thresholds of best IoUs
    ious = np.array([[0.2, 0.55, 0.75, 0.1], [0.35, 0.5, 0.45, 0.0], [0.8, 0.6, 0.2, 0.0]])
    thresholds = np.array([0.1, 0.2, 0.3, 0.4])
    result = max_box_acc(ious, thresholds)
    # δ=0.3: τ=0.2 gives 3/3; δ=0.5: τ=0.2 gives 3/3; δ=0.7: τ=0.1 gives 1/3 (first best)
    assert result["per_iou"] == pytest.approx({"0.3": 1.0, "0.5": 1.0, "0.7": 1 / 3})
    assert result["best_tau"] == {"0.3": 0.2, "0.5": 0.2, "0.7": 0.1}
    assert result["value"] == pytest.approx((1 + 1 + 1 / 3) / 3)


def test_working_resolution_keeps_iou():
    heat = torch.zeros(900, 600)
    heat[100:500, 150:450] = 1.0
    gt = np.array([[150, 100, 450, 500]])
    small, boxes = working_resolution(heat, gt, 300)
    assert tuple(small.shape) == (300, 200)
    assert sweep_ious(small, boxes, torch.tensor([0.5])).best[0] > 0.97


# --------------------------------------------------------------------------- ground truth


def test_csv_ground_truth_several_boxes(tmp_path):
    path = tmp_path / "boxes.csv"
    path.write_text(
        "image,label,xmin,ymin,xmax,ymax\n"
        "a.jpg,7,1,2,30,40\n"
        "a.jpg,cock,5,5,9,9\n"
        "sub/b.png,tabby,0,0,10,10\n"
    )
    truth = read_ground_truth(path)
    assert [(b.label, b.box) for b in truth["a.jpg"]] == [
        ("7", (1, 2, 30, 40)),
        ("cock", (5, 5, 9, 9)),
    ]
    assert truth["sub/b.png"][0].label == "tabby"


def test_csv_missing_column_is_a_clear_error(tmp_path):
    path = tmp_path / "boxes.csv"
    path.write_text("image,xmin,ymin,xmax,ymax\na.jpg,1,2,3,4\n")
    with pytest.raises(GroundTruthError, match="missing label"):
        read_ground_truth(path)


def test_voc_folder(tmp_path):
    (tmp_path / "voc").mkdir()
    (tmp_path / "voc" / "cat1.xml").write_text("""<annotation><filename>cat1.jpg</filename>
      <object><name>tabby</name><bndbox><xmin>11</xmin><ymin>21</ymin><xmax>50</xmax><ymax>60</ymax>
      </bndbox></object>
      <object><name>dog</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax>
      </bndbox></object></annotation>""")
    truth = read_ground_truth(tmp_path / "voc")
    # VOC pixels are 1-based and inclusive: 11..50 covers the edges 10..50
    assert [(b.label, b.box) for b in truth["cat1.jpg"]] == [
        ("tabby", (10, 20, 50, 60)),
        ("dog", (0, 0, 5, 5)),
    ]


def test_coco_json(tmp_path):
    path = tmp_path / "instances.json"
    path.write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "x.jpg"}, {"id": 2, "file_name": "y.jpg"}],
                "categories": [{"id": 18, "name": "dog"}],
                "annotations": [{"image_id": 1, "category_id": 18, "bbox": [10, 20, 30, 40]}],
            }
        )
    )
    truth = read_ground_truth(path)
    assert [(b.label, b.box) for b in truth["x.jpg"]] == [("dog", (10, 20, 40, 60))]
    assert truth["y.jpg"] == []


def test_bad_coco_is_a_clear_error(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"annotations": []}')
    with pytest.raises(GroundTruthError, match="not a COCO"):
        read_ground_truth(path)


def test_images_match_by_relative_path_then_name(tmp_path):
    truth = {"sub/a.jpg": [], "b.jpg": [], "c": []}
    paths = [
        tmp_path / "sub" / "a.jpg",
        tmp_path / "other" / "b.jpg",
        tmp_path / "c.png",
        tmp_path / "d.jpg",
    ]
    found = match_images(paths, tmp_path, truth)
    assert found == {paths[0]: "sub/a.jpg", paths[1]: "b.jpg", paths[2]: "c"}


# --------------------------------------------------------------------------- flip TTA


def test_flip_averages_a_view_and_its_mirror():
    model = camloc.load_model("resnet18", weights="random")
    batch = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    method = get_method("cam", model)
    both = explain_batch(method, batch, ClassSelection(classes=(3,)), flip=True)
    plain = method(batch, ClassSelection(classes=(3,)))
    mirrored = method(batch.flip(-1), ClassSelection(classes=(3,)))
    assert torch.allclose(both.maps, (plain.maps + mirrored.maps.flip(-1)) / 2, atol=1e-5)
    assert torch.allclose(both.logits, (plain.logits + mirrored.logits) / 2, atol=1e-5)
    # the CAM identity holds for the averaged view: mean of the map + bias == averaged logit
    bias = model.bias[3]
    assert torch.allclose(both.maps[:, 0].mean((1, 2)) + bias, both.logits[:, 3], atol=1e-4)


def test_scales_average_views_and_choose_classes_on_the_mean_logits():
    model = camloc.load_model("resnet18", weights="random", dilate=False)
    batch = torch.randn(3, 3, 128, 128, generator=torch.Generator().manual_seed(2))
    method = get_method("cam", model)
    out = explain_batch(method, batch, ClassSelection(topk=2), flip=False, scales=(1.0, 0.5))
    small = torch.nn.functional.interpolate(batch, size=(64, 64), mode="bilinear", antialias=True)
    big_view, small_view = (
        method(batch, ClassSelection(classes=(0,))),
        method(small, ClassSelection()),
    )
    mean_logits = (big_view.logits + small_view.logits) / 2
    assert torch.allclose(out.logits, mean_logits, atol=1e-5)
    assert torch.equal(out.classes, mean_logits.topk(2, dim=1).indices)
    fixed = explain_batch(method, batch, ClassSelection(classes=(7,)), scales=(1.0, 0.5))
    small_map = method(small, ClassSelection(classes=(7,))).maps
    expected = (
        method(batch, ClassSelection(classes=(7,))).maps
        + torch.nn.functional.interpolate(
            small_map, size=(4, 4), mode="bilinear", align_corners=False
        )
    ) / 2
    assert torch.allclose(fixed.maps, expected, atol=1e-5)
    finer = explain_batch(method, batch, ClassSelection(classes=(7,)), scales=(1.0, 2.0))
    assert tuple(finer.maps.shape) == (3, 1, 8, 8)  # the 256-pixel view's grid


def test_max_normalisation_drops_negative_evidence():
    maps = torch.tensor([[[-2.0, 0.0], [1.0, 4.0]]])
    assert camloc.normalize_maps(maps, mode="max").tolist() == [[[0.0, 0.0], [0.25, 1.0]]]
    assert camloc.normalize_maps(maps).flatten().tolist() == pytest.approx([0.0, 1 / 3, 0.5, 1.0])


def test_network_size_default_and_explicit():
    model = camloc.load_model("resnet18", weights="random")
    assert network_size(model) == (224, 224)
    assert network_size(model, 320) == (320, 320)


# --------------------------------------------------------------------------- end to end


class ColourNet(nn.Module):
    """Features that respond to red and to blue, average pooling, a linear head."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 2, 1), nn.ReLU(), nn.AvgPool2d(4))
        with torch.no_grad():
            self.features[0].weight.copy_(
                torch.tensor([[2.0, -1.0, -1.0], [-1.0, -1.0, 2.0]])[..., None, None]
            )
            self.features[0].bias.zero_()
        self.fc = nn.Linear(2, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.eye(2) * 4)
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


SYNTHETIC = {  # name: (colour class, box)
    "red1.png": ("red", (10, 20, 50, 60)),
    "red2.png": ("red", (40, 8, 90, 40)),
    "blue1.png": ("blue", (5, 5, 35, 70)),
    "blue2.png": ("blue", (60, 30, 95, 75)),
}


@pytest.fixture(scope="module")
def colour_model():
    return camloc.adapt(
        ColourNet(),
        name="colours",
        class_names=["red", "blue"],
        input_size=64,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
    )


@pytest.fixture
def synthetic_set(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rows = ["image,label,xmin,ymin,xmax,ymax"]
    for name, (label, (x0, y0, x1, y1)) in SYNTHETIC.items():
        pixels = np.full((80, 100, 3), 128, np.uint8)
        pixels[y0:y1, x0:x1] = (230, 20, 20) if label == "red" else (20, 20, 230)
        Image.fromarray(pixels).save(folder / name)
        rows.append(f"{name},{label},{x0},{y0},{x1},{y1}")
    (folder / "broken.png").write_bytes(b"not an image")
    (folder / "no_truth.png").write_bytes((folder / "red1.png").read_bytes())
    rows.append("broken.png,red,0,0,5,5")  # ground truth, but the file is not an image
    rows.append("ghost.png,red,0,0,5,5")  # ground truth of an image that is not there
    rows.append("red1.png,zebra,0,0,5,5")  # a second box with a label the model does not know
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("\n".join(rows) + "\n")
    return folder, boxes


def test_evaluate_synthetic_set(colour_model, synthetic_set):
    folder, boxes = synthetic_set
    result = evaluate(
        colour_model, folder, boxes, ExplainConfig(input_size=64, scales=(1.0,)), batch_size=2
    )
    metrics = result.metrics()
    assert metrics["num_images"] == 3  # red1 has an unknown label: counted, not evaluated
    assert metrics["counts"] == {
        "images": 6,
        "evaluated": 3,
        "without_ground_truth": 1,
        "unknown_labels": 1,
        "unreadable": 1,
        "ground_truth_without_image": 1,
        "boxes_outside_image": 0,
    }
    assert metrics["top1_cls"] == 1.0 and metrics["top1_loc"] == 1.0
    assert metrics["gt_known_loc"] == 1.0
    assert metrics["maxboxacc_v2_per_iou"]["0.7"] == 1.0
    assert all(r.iou > 0.7 for r in result.images)  # boxes at τ=0.2 are a few pixels wide
    assert result.best_ious.shape == (3, 100)


def test_camloc_eval_command_end_to_end(colour_model, synthetic_set, tmp_path, monkeypatch):
    from camloc import cli

    folder, boxes = synthetic_set
    monkeypatch.setattr(cli, "load", lambda *args, **kwargs: colour_model)
    report, json_path = tmp_path / "report", tmp_path / "metrics.json"
    outcome = CliRunner().invoke(
        cli.app,
        [
            "eval",
            "--images",
            str(folder),
            "--boxes",
            str(boxes),
            "--out",
            str(report),
            "--json",
            str(json_path),
            "--input-size",
            "64",
            "--threshold",
            "0.3",
        ],
    )
    assert outcome.exit_code == 0, outcome.output
    metrics = json.loads(json_path.read_text())
    for key in (
        "top1_cls",
        "top5_cls",
        "top1_loc",
        "gt_known_loc",
        "maxboxacc_v2",
        "top1_loc_at_best_tau",
        "gt_known_loc_at_best_tau",
        "best_tau",
    ):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["gt_known_loc"] == 1.0
    assert metrics["default_tau"] == 0.3
    assert metrics["settings"]["input_size"] == [64, 64] and metrics["settings"]["flip"] is False
    assert metrics["settings"]["scales"] == [1.0]
    assert "gt_known_loc:" in outcome.stdout
    with Image.open(report / "curves.png") as plot:
        assert plot.size[0] > 300 and plot.getextrema() != ((255, 255),) * 3
    with Image.open(report / "gallery_worst.png") as gallery:
        colours = np.asarray(gallery.convert("RGB")).reshape(-1, 3)
    green = (colours == (0, 255, 0)).all(1).any()  # ground-truth boxes drawn in green...
    exact = metrics["mean_iou"] > 0.85  # ...unless camloc's white box (nearly) covers them
    assert green or exact
    text = (report / "report.md").read_text()
    assert "MaxBoxAccV2" in text and "| red |" in text and "broken.png" in text


def test_camloc_eval_bad_ground_truth_is_one_line(tmp_path):
    from camloc import cli

    (tmp_path / "images").mkdir()
    outcome = CliRunner().invoke(
        cli.app,
        ["eval", "--images", str(tmp_path / "images"), "--boxes", str(tmp_path / "nope.csv")],
    )
    assert outcome.exit_code != 0
