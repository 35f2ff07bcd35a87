"""Detection exports (issue 22) read back by the clients people use: pycocotools (COCO JSON,
COCOeval against exact ground truth), supervision (YOLO and Pascal VOC), camloc's own VOC
reader, Label Studio's task format; the command line as users run it."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import supervision as sv
from conftest import CAMLOC, EXAMPLES
from PIL import Image
from pycocotools import mask as mask_api  # noqa: E402
from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402
from test_evaluate import ColourNet  # noqa: E402

import camloc
from camloc.config import ExplainConfig
from camloc.evaluate.ground_truth import read_voc_folder
from camloc.exports import ExportOptions, export_set
from camloc.exports.coco import write_coco
from camloc.exports.yolo import write_yolo
from camloc.jobs import RunOptions, run
from camloc.jobs.exporting import convert

FORMATS = ("coco", "yolo", "voc", "labelstudio")
CLASSES = ["red", "blue"]
RED, BLUE = (230, 20, 20), (20, 20, 230)
# name: [(class, box)] on a grey 100x80 background; exact boxes in pixel edges
SCENES = {
    "r1.png": [("red", (10, 20, 50, 60))],
    "r2.png": [("red", (40, 8, 90, 40))],
    "r3.png": [("red", (55, 35, 95, 75))],
    "b1.png": [("blue", (5, 5, 35, 70))],
    "b2.png": [("blue", (60, 30, 95, 75))],
    "b3.png": [("blue", (20, 10, 70, 50))],
    "rb1.png": [("red", (5, 5, 35, 35)), ("blue", (60, 40, 95, 75))],
    "rb2.png": [("blue", (8, 40, 40, 76)), ("red", (55, 4, 92, 36))],
}


def draw_scenes(folder: Path) -> None:
    folder.mkdir(parents=True)
    for name, objects in SCENES.items():
        pixels = np.full((80, 100, 3), 128, np.uint8)
        for label, (x0, y0, x1, y1) in objects:
            pixels[y0:y1, x0:x1] = RED if label == "red" else BLUE
        Image.fromarray(pixels).save(folder / name)
    (folder / "broken.png").write_bytes(b"not an image")


def ground_truth_coco() -> dict:
    """COCO ground truth of the scenes, built independently of camloc (ids: class index + 1)."""
    images, annotations = [], []
    for image_id, name in enumerate(sorted(SCENES), start=100):
        images.append({"id": image_id, "file_name": name, "width": 100, "height": 80})
        for label, (x0, y0, x1, y1) in SCENES[name]:
            square = [x0, y0, x1, y0, x1, y1, x0, y1]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": CLASSES.index(label) + 1, "bbox": [x0, y0, x1 - x0, y1 - y0],
                                "area": (x1 - x0) * (y1 - y0), "iscrowd": 0, "segmentation": [square]})
    return {"images": images, "annotations": annotations,
            "categories": [{"id": i + 1, "name": name} for i, name in enumerate(CLASSES)]}


def quiet(function, *args):
    with contextlib.redirect_stdout(io.StringIO()):
        return function(*args)


@pytest.fixture(scope="module")
def colour_model():
    return camloc.adapt(ColourNet(), name="colours", class_names=CLASSES, input_size=64, mean=(0.0, 0.0, 0.0),
                        std=(1.0, 1.0, 1.0))


@pytest.fixture(scope="module")
def exported(colour_model, tmp_path_factory):
    """The scenes run with top-2 classes, all components, every format and masks."""
    root = tmp_path_factory.mktemp("exports")
    draw_scenes(root / "images")
    options = RunOptions(out=root / "out", config=ExplainConfig(topk=2, input_size=64, largest_only=False,
                                                                 min_area=0.02),
                         exports=ExportOptions(formats=FORMATS, masks=True), batch_size=4, workers=0)
    summary = run(colour_model, [root / "images"], options)
    records = [json.loads(line) for line in (root / "out" / "results.jsonl").read_text().splitlines()]
    return root, summary, {Path(r["image"]).name: r for r in records}


def record_boxes(record: dict) -> list[tuple[str, tuple[int, ...]]]:
    return sorted((cam["label"], tuple(box)) for cam in record["cams"] for box in cam["boxes"])


# --------------------------------------------------------------------------- COCO


def test_coco_loads_in_pycocotools_and_scores_against_exact_ground_truth(exported, tmp_path):
    root, summary, records = exported
    assert summary.done == 8 and summary.failed == 1
    assert summary.exports.failed and "broken.png" in summary.exports.failed[0]
    ours = quiet(COCO, str(root / "out" / "coco.json"))
    assert {image["file_name"] for image in ours.dataset["images"]} == set(SCENES)  # broken.png left out
    assert {c["id"]: c["name"] for c in ours.dataset["categories"]} == {1: "red", 2: "blue"}
    for note in ours.dataset["annotations"]:
        assert note["iscrowd"] == 0 and 0 < note["score"] <= 1 and len(note["bbox"]) == 4
    gt_path = tmp_path / "truth.json"
    gt_path.write_text(json.dumps(ground_truth_coco()))
    truth = quiet(COCO, str(gt_path))
    to_gt = {image["file_name"]: image["id"] for image in truth.dataset["images"]}
    name_of = {image["id"]: image["file_name"] for image in ours.dataset["images"]}
    detections = [{**note, "image_id": to_gt[name_of[note["image_id"]]]} for note in ours.dataset["annotations"]]
    figures = {}
    for kind in ("bbox", "segm"):
        results = quiet(truth.loadRes, [dict(d) for d in detections])
        scorer = COCOeval(truth, results, kind)
        quiet(scorer.evaluate)
        quiet(scorer.accumulate)
        quiet(scorer.summarize)
        figures[kind] = scorer.stats[:3]  # AP, AP50, AP75
    # every square found at IoU 0.5 and 0.75 (maps on a 16x16 grid: edges within a few pixels);
    # measured: box AP 0.727, mask AP 0.779 (AP averages IoU 0.5..0.95, where pixels count)
    assert figures["bbox"][1] == pytest.approx(1.0) and figures["bbox"][2] == pytest.approx(1.0)
    assert figures["bbox"][0] >= 0.7, figures
    assert figures["segm"][1] == pytest.approx(1.0) and figures["segm"][0] >= 0.75, figures


def test_coco_masks_are_the_thresholded_region_of_each_box(exported):
    root, _, records = exported
    data = json.loads((root / "out" / "coco.json").read_text())
    assert data["annotations"] and all("segmentation" in note for note in data["annotations"])
    for note in data["annotations"]:
        mask = mask_api.decode(note["segmentation"]).astype(bool)
        rows, columns = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        x, y, w, h = note["bbox"]
        # the mask's bounding box is the box: one component, in pixel edges
        assert [columns[0], rows[0], columns[-1] + 1, rows[-1] + 1] == [x, y, x + w, y + h]
        assert note["area"] == int(mask.sum()) <= w * h
    # the record carries them too (so a later camloc convert --masks can use them)
    assert all("masks" in cam for r in records.values() if not r["error"] for cam in r["cams"])


# --------------------------------------------------------------------------- YOLO, VOC, Label Studio


def test_yolo_loads_in_supervision_with_the_same_boxes(exported):
    root, _, records = exported
    yolo = root / "out" / "yolo"
    dataset = sv.DetectionDataset.from_yolo(images_directory_path=str(yolo / "images"),
                                            annotations_directory_path=str(yolo / "labels"),
                                            data_yaml_path=str(yolo / "data.yaml"))
    assert dataset.classes == CLASSES
    assert len(dataset) == len(SCENES)
    for path, _, detections in dataset:
        found = sorted((dataset.classes[c], tuple(box)) for c, box in zip(detections.class_id,
                                                                           detections.xyxy.tolist(), strict=True))
        expected = record_boxes(records[Path(path).name])
        assert [label for label, _ in found] == [label for label, _ in expected]
        assert np.allclose([box for _, box in found], [box for _, box in expected], atol=0.01)
    assert (yolo / "images" / "r1.png").is_symlink()
    text = (yolo / "data.yaml").read_text()
    assert f"path: \"{yolo.resolve()}\"" in text and "train: images" in text


def test_voc_reads_back_with_camloc_and_supervision(exported):
    root, _, records = exported
    truth = read_voc_folder(root / "out" / "voc")
    assert set(truth) == set(SCENES)
    for name, boxes in truth.items():
        assert sorted((b.label, tuple(int(v) for v in b.box)) for b in boxes) == record_boxes(records[name])
    # the images the export kept (broken.png is left out): the YOLO export's links, same names
    dataset = sv.DetectionDataset.from_pascal_voc(images_directory_path=str(root / "out" / "yolo" / "images"),
                                                  annotations_directory_path=str(root / "out" / "voc"))
    assert len(dataset) == len(SCENES)
    for path, _, detections in dataset:
        found = sorted((dataset.classes[c], tuple(int(round(v)) for v in box))
                       for c, box in zip(detections.class_id, detections.xyxy.tolist(), strict=True))
        assert found == record_boxes(records[Path(path).name])
    root_tag = (root / "out" / "voc" / "r1.xml").read_text()
    assert "<width>100</width>" in root_tag and "<height>80</height>" in root_tag


def test_label_studio_tasks_have_the_required_fields_and_round_trip(exported):
    root, _, records = exported
    tasks = json.loads((root / "out" / "labelstudio.json").read_text())
    config = (root / "out" / "labelstudio_config.xml").read_text()
    import xml.etree.ElementTree as ElementTree

    view = ElementTree.fromstring(config)
    image_tag, labels_tag = view.find("Image"), view.find("RectangleLabels")
    assert image_tag.get("value") == "$image" and labels_tag.get("toName") == image_tag.get("name")
    assert [label.get("value") for label in labels_tag] == CLASSES
    assert len(tasks) == len(SCENES)
    for task in tasks:
        url = task["data"]["image"]
        assert url.startswith("/data/local-files/?d=")
        name = url.rsplit("=", 1)[1]
        [prediction] = task["predictions"]
        assert isinstance(prediction["model_version"], str) and 0 < prediction["score"] <= 1
        found = []
        for region in prediction["result"]:
            assert region["from_name"] == labels_tag.get("name") and region["to_name"] == image_tag.get("name")
            assert region["type"] == "rectanglelabels"
            width, height = region["original_width"], region["original_height"]
            value = region["value"]
            [label] = value["rectanglelabels"]
            box = (value["x"] * width / 100, value["y"] * height / 100, (value["x"] + value["width"]) * width / 100,
                   (value["y"] + value["height"]) * height / 100)
            found.append((label, tuple(round(v, 6) for v in box)))
        assert sorted(found) == record_boxes(records[name])


# --------------------------------------------------------------------------- records, convert


def fake_records(folder: Path) -> list[dict]:
    """Records as results.jsonl holds them, for images that exist (and one that failed)."""
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for name, size, cams in [("a.jpg", (64, 48), [(3, "cat", 0.9, [[0, 0, 32, 24], [40, 30, 64, 48]])]),
                             ("b.jpg", (30, 20), [(0, "dog", 0.6, [[1, 2, 3, 4]]), (3, "cat", 0.3, [])])]:
        Image.new("RGB", size).save(folder / name)
        records.append({"image": str(folder / name), "width": size[0], "height": size[1], "method": "cam",
                        "predictions": [], "outputs": {}, "error": None,
                        "cams": [{"index": i, "label": label, "score": score, "boxes": boxes}
                                 for i, label, score, boxes in cams]})
    records.append({"image": str(folder / "bad.jpg"), "width": None, "height": None, "predictions": [],
                    "cams": [], "outputs": {}, "error": f"{folder / 'bad.jpg'}: not an image"})
    return records


def write_run(folder: Path, records: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def test_categories_and_numbering(tmp_path):
    data = export_set(fake_records(tmp_path / "img"))
    assert data.classes == [(0, "dog"), (3, "cat")]
    assert [data.coco_id(i) for i, _ in data.classes] == [1, 4]  # the model's index + 1
    assert [data.yolo_id(i) for i, _ in data.classes] == [0, 1]  # contiguous over the classes found
    assert [image.name for image in data.images] == ["a", "b"] and len(data.failed) == 1
    coco = json.loads(next(iter(dict(write_coco(data, ExportOptions())).values())))
    assert [a["bbox"] for a in coco["annotations"]] == [[0, 0, 32, 24], [40, 30, 24, 18], [1, 2, 2, 2]]
    labels = dict(write_yolo(data, ExportOptions(), str(tmp_path)))
    assert labels["yolo/labels/a.txt"].decode().splitlines() == ["1 0.25 0.25 0.5 0.5",
                                                                 "1 0.8125 0.8125 0.375 0.375"]


def test_convert_prunes_files_of_images_no_longer_in_the_run(tmp_path):
    records = fake_records(tmp_path / "img")
    out = write_run(tmp_path / "run", records)
    convert(out, "voc,yolo")
    assert sorted(p.name for p in (out / "voc").iterdir()) == ["a.xml", "b.xml"]
    write_run(out, records[1:])
    report = convert(out, ["voc", "yolo"])
    assert sorted(p.name for p in (out / "voc").iterdir()) == ["b.xml"]
    assert sorted(p.name for p in (out / "yolo" / "labels").iterdir()) == ["b.txt"]
    assert sorted(p.name for p in (out / "yolo" / "images").iterdir()) == ["b.jpg"]
    assert report.images == 1 and report.boxes == 1


def camloc_cli(*args, timeout=600):
    return subprocess.run([*CAMLOC, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def test_camloc_convert_command(tmp_path):
    out = write_run(tmp_path / "run", fake_records(tmp_path / "img"))
    done = camloc_cli("convert", out, "--to", "coco,yolo,voc,labelstudio", "--out", tmp_path / "sets")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert "exported 2 image(s), 3 box(es)" in done.stderr and "1 failed image(s) left out" in done.stderr
    assert "warning: left out" in done.stderr and "bad.jpg" in done.stderr
    for path in ("coco.json", "yolo/data.yaml", "yolo/labels/a.txt", "voc/b.xml", "labelstudio.json",
                 "labelstudio_config.xml"):
        assert (tmp_path / "sets" / path).is_file(), path
    assert not (out / "coco.json").exists()
    quiet(COCO, str(tmp_path / "sets" / "coco.json"))


@pytest.mark.parametrize("args, message", [
    (["--to", "coco,shapefile"], "unknown export format 'shapefile'; choose from coco, labelstudio, voc, yolo"),
    (["--to", "coco", "--masks"], "no masks in results.jsonl"),
    (["--to", "voc", "--masks"], "--masks adds segmentation to an export that carries masks (coco)"),
    ([], "camloc convert needs --to"),
])
def test_camloc_convert_errors_are_one_line(tmp_path, args, message):
    out = write_run(tmp_path / "run", fake_records(tmp_path / "img"))
    done = camloc_cli("convert", out, *args)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], done.stderr


def test_camloc_convert_without_a_run_is_one_line(tmp_path):
    done = camloc_cli("convert", tmp_path, "--to", "coco")
    assert done.returncode == 2 and "no results.jsonl here" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_camloc_run_unknown_export_fails_before_any_work(tmp_path):
    done = camloc_cli("run", EXAMPLES / "coffee.jpg", "--out", tmp_path / "out", "--export", "coco,pdf")
    assert done.returncode == 2
    assert done.stderr.strip() == "error: unknown export format 'pdf'; choose from coco, labelstudio, voc, yolo"
    assert not (tmp_path / "out" / "results.jsonl").exists()


def test_camloc_run_exports_every_format_with_masks(tmp_path):
    """The command as users run it: the default model on a real photo and a broken file."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(EXAMPLES / "chelsea_cat.jpg", inputs / "cat.jpg")
    (inputs / "broken.jpg").write_bytes(b"")
    out = tmp_path / "out"
    done = camloc_cli("run", inputs, "--out", out, "--export", "coco,yolo,voc,labelstudio", "--masks")
    assert done.returncode == 1, done.stderr  # one input failed: exported without it
    assert "Traceback" not in done.stderr
    assert "1 done, 1 failed" in done.stderr and "exported 1 image(s)" in done.stderr
    coco = quiet(COCO, str(out / "coco.json"))
    [image] = coco.dataset["images"]
    assert image["file_name"] == "cat.jpg" and (image["width"], image["height"]) == (451, 300)
    [note] = coco.dataset["annotations"]
    assert coco.cats[note["category_id"]]["name"] in ("tabby", "tiger cat", "Egyptian cat")
    assert mask_api.decode(note["segmentation"]).shape == (300, 451)
    assert (out / "yolo" / "labels" / "cat.txt").read_text().count("\n") == 1
    assert read_voc_folder(out / "voc")["cat.jpg"][0].label == coco.cats[note["category_id"]]["name"]
    assert json.loads((out / "labelstudio.json").read_text())[0]["data"]["image"].endswith("?d=cat.jpg")
    # converting the finished run again gives the same boxes, masks included
    again = camloc_cli("convert", out, "--to", "coco", "--masks", "--out", tmp_path / "again")
    assert again.returncode == 0, again.stderr
    copy = json.loads((tmp_path / "again" / "coco.json").read_text())
    assert copy["annotations"] == coco.dataset["annotations"]


# --------------------------------------------------------------------------- camloc eval: COCO AP


def test_eval_reports_coco_ap_of_the_ground_truth_class_boxes(colour_model, tmp_path):
    from camloc.evaluate import evaluate
    from camloc.evaluate.coco_ap import coco_ap

    draw_scenes(tmp_path / "images")
    rows = ["image,label,xmin,ymin,xmax,ymax"]
    rows += [f"{name},{label},{x0},{y0},{x1},{y1}" for name, objects in SCENES.items()
             for label, (x0, y0, x1, y1) in objects]
    (tmp_path / "boxes.csv").write_text("\n".join(rows) + "\n")
    result = evaluate(colour_model, tmp_path / "images", tmp_path / "boxes.csv", ExplainConfig(input_size=64))
    metrics = result.metrics()
    assert metrics["gt_known_loc"] == 1.0
    assert metrics["coco_ap50"] == 1.0 and metrics["coco_ap75"] == 1.0
    assert 0.7 <= metrics["coco_ap"] < 1.0  # IoU 0.85-0.95 are not all met at 16x16 resolution
    # a box that misses, scored above all others, costs precision; no detections at all: AP 0
    first = result.images[0]
    x0, y0, x1, y1 = first.gt_boxes[0]
    wrong = [int(x1), int(y1), int(x1) + 5, int(y1) + 5]
    worse = coco_ap([*result.images[1:], type(first)(**{**first.__dict__, "boxes": [wrong], "score": 1.0})])
    assert worse["coco_ap50"] < 1.0
    assert coco_ap([type(first)(**{**first.__dict__, "boxes": []})])["coco_ap"] == 0.0


# --------------------------------------------------------------------------- docstrings, layering


@pytest.mark.parametrize("name", ["camloc.exports.registry", "camloc.exports.coco", "camloc.exports.yolo",
                                  "camloc.exports.voc", "camloc.exports.labelstudio", "camloc.exports.masks",
                                  "camloc.jobs.exporting", "camloc.evaluate.coco_ap"])
def test_docstring_examples(name):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_exports_import_only_lower_layers():
    """exports sit above render and below jobs/evaluate/cli: they never import those (not
    even inside functions), and importing them loads no torch (camloc convert stays light)."""
    import ast
    import sys

    folder = Path(camloc.__file__).parent / "exports"
    for path in folder.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                target = (node.module or "").split(".")[0]
                top = target if node.level == 2 else "exports"
                assert top not in {"jobs", "evaluate", "train", "serve", "cli"}, (path.name, node.module)
    probe = ("import sys, camloc.exports, camloc.exports.coco; "
             "print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "False", done.stderr


def test_resumed_run_exports_every_image_of_its_results(colour_model, tmp_path):
    draw_scenes(tmp_path / "images")
    out = tmp_path / "out"
    config = ExplainConfig(input_size=64)
    first = run(colour_model, [tmp_path / "images" / "r1.png"], RunOptions(out=out, config=config, workers=0))
    assert first.exports is None and not (out / "yolo").exists()
    again = run(colour_model, [tmp_path / "images"], RunOptions(out=out, config=config, resume=True, workers=0,
                                                                exports=ExportOptions(formats=("yolo",))))
    assert again.skipped == 1 and again.done == 7  # the new ones; the export has all 8
    assert sorted(p.stem for p in (out / "yolo" / "labels").iterdir()) == sorted(Path(n).stem for n in SCENES)
    assert again.exports.images == 8 and len(again.exports.failed) == 1


@pytest.mark.parametrize("rule", [0.6, "otsu", "otsu2"])
def test_masks_follow_the_box_rule(rule):
    from camloc.boxes import boxes_from_map
    from camloc.exports.masks import component_masks

    rng = np.random.default_rng(3)
    import torch

    heat = torch.nn.functional.interpolate(torch.from_numpy(rng.random((1, 1, 6, 8))).float(), size=(60, 80),
                                           mode="bilinear")[0, 0]
    heat = (heat - heat.min()) / (heat.max() - heat.min())
    boxes = boxes_from_map(heat, rule, largest_only=False)
    assert len(boxes) > 1
    for box, mask in zip(boxes, component_masks(heat, rule, boxes), strict=True):
        rows, columns = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        assert (columns[0], rows[0], columns[-1] + 1, rows[-1] + 1) == box


def test_without_pycocotools_masks_are_one_line_naming_the_extra(tmp_path):
    """A missing extra, as a user without it sees it (the module made unimportable)."""
    import sys

    script = ("import sys; sys.modules['pycocotools'] = None; from camloc.cli import main; "
              f"sys.argv = ['camloc', 'run', {str(EXAMPLES / 'coffee.jpg')!r}, '--out', {str(tmp_path / 'o')!r}, "
              "'--export', 'coco', '--masks']; main()")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip() == "error: --masks needs the export extra: pip install 'camloc[export]'"


def test_without_pycocotools_eval_says_ap_is_not_available(monkeypatch):
    import sys

    from camloc.cli import print_metrics
    from camloc.evaluate.coco_ap import coco_ap
    from camloc.evaluate.metrics import ImageResult

    monkeypatch.setitem(sys.modules, "pycocotools.cocoeval", None)
    image = ImageResult("a.png", "a.png", [0], [[0, 0, 10, 10]], [0], [0, 0, 10, 10], 1.0, True, True,
                        boxes=[[0, 0, 10, 10]], score=0.9)
    assert coco_ap([image]) == {"coco_ap": None, "coco_ap50": None, "coco_ap75": None}
    metrics = {"counts": {"images": 1, "without_ground_truth": 0, "unknown_labels": 0, "unreadable": 0},
               "num_images": 1, "top1_cls": 1.0, "top5_cls": 1.0, "top1_loc": 1.0, "gt_known_loc": 1.0,
               "maxboxacc_v2": 1.0, "maxboxacc_v2_per_iou": {}, "maxboxacc_v2_best_tau": {}, "default_tau": 0.25,
               "best_tau": 0.25, "top1_loc_at_best_tau": 1.0, "gt_known_loc_at_best_tau": 1.0,
               **coco_ap([image])}
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        print_metrics(metrics)
    assert "coco AP:       n/a (needs pycocotools: pip install 'camloc[export]')" in output.getvalue()
