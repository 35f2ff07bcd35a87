"""The ``camloc eval --out`` report: metrics against τ (PNG), a Markdown page with the
figures, settings and per-class accuracy, and galleries of the best and worst localized
images (camloc's box in white, ground truth in green).

>>> import camloc, numpy as np
>>> from camloc.evaluate.report import plot_curves
>>> thresholds = np.linspace(0, 0.99, 100)
>>> picture = plot_curves({"gt_known_loc": np.sin(thresholds * 3).clip(0)}, thresholds, 0.2)
>>> picture.size[0] > 300
True
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .. import render
from ..images import load_image
from ..models import ClassifierAdapter
from ..pipeline import ExplainConfig, Pipeline
from .metrics import EvalResult, ImageResult

GALLERY_SIZE = 8
THUMBNAIL = 256
CURVE_LABELS = {
    "top1_loc": "top-1 loc (largest box)",
    "gt_known_loc": "GT-known loc (largest box)",
    "box_acc@0.3": "box acc. δ=0.3 (any box)",
    "box_acc@0.5": "box acc. δ=0.5 (any box)",
    "box_acc@0.7": "box acc. δ=0.7 (any box)",
}


def plot_curves(
    curves: dict[str, np.ndarray], thresholds: np.ndarray, default_tau: float | str | None
) -> Image.Image:
    """Metrics against the CAM threshold τ, with the default τ marked."""
    from matplotlib.figure import Figure  # no pyplot: no backend chosen for the program

    figure = Figure(figsize=(7, 4.2), dpi=110)
    axes = figure.add_subplot()
    for name, values in curves.items():
        style = "--" if name.startswith("box_acc") else "-"
        axes.plot(thresholds, values, style, label=CURVE_LABELS.get(name, name), linewidth=1.6)
    if isinstance(default_tau, (int, float)):
        axes.axvline(default_tau, color="0.3", linestyle=":", label=f"default τ = {default_tau:g}")
    axes.set_xlabel("CAM threshold τ (fraction of the normalised map)")
    axes.set_ylabel("fraction of images")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="upper right")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def gallery(model: ClassifierAdapter, results: list[ImageResult], config: ExplainConfig) -> Image.Image | None:
    """Overlays of ``results`` (their ground-truth class's map, explained by the same
    pipeline as the figures), boxes drawn, in a grid."""
    tiles = []
    for result in results:
        image = load_image(result.path)
        own_class = config.replace(topk=1, rank=None, classes=(result.gt_classes[0],))
        [explanation] = Pipeline(model, own_class).explain([image])
        picture = render.overlay(
            image,
            explanation,
            0,
            ground_truth=result.gt_boxes,
        )
        picture.thumbnail((THUMBNAIL, THUMBNAIL))
        canvas = Image.new("RGB", (THUMBNAIL, THUMBNAIL), (255, 255, 255))
        canvas.paste(picture, ((THUMBNAIL - picture.width) // 2, (THUMBNAIL - picture.height) // 2))
        verdict = "right" if result.top1_correct else "wrong"
        tiles.append(render.titled(canvas, f"IoU {result.iou:.2f} · top-1 {verdict}", 13))
    return render.tile(tiles, columns=min(4, len(tiles))) if tiles else None


def tau_text(threshold: float | str | None) -> str:
    """A box threshold for people: ``0.25``, or a rule's name (``otsu``)."""
    return f"{threshold:g}" if isinstance(threshold, (int, float)) else str(threshold)


def markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [f"{row[c]:.3f}" if isinstance(row[c], float) else str(row[c]) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(
    result: EvalResult, out: str | Path, model: ClassifierAdapter, config: ExplainConfig
) -> dict[str, Path]:
    """Write ``curves.png``, ``gallery_best.png``, ``gallery_worst.png``, ``metrics.json``,
    ``per_class.json`` and ``report.md`` into ``out``; returns their paths by kind."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    metrics = result.metrics()
    written: dict[str, Path] = {}
    plot_curves(result.curves(), result.thresholds, metrics["default_tau"]).save(out / "curves.png")
    written["plot"] = out / "curves.png"
    ranked = sorted(result.images, key=lambda r: (-r.iou, r.path))
    count = min(GALLERY_SIZE, len(ranked) // 2 or len(ranked))
    for kind, chosen in (("best", ranked[:count]), ("worst", ranked[::-1][:count])):
        picture = gallery(model, chosen, config)
        if picture is not None:
            picture.save(out / f"gallery_{kind}.png")
            written[f"gallery_{kind}"] = out / f"gallery_{kind}.png"
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    written["metrics"] = out / "metrics.json"
    per_class = result.per_class()
    (out / "per_class.json").write_text(json.dumps(per_class, indent=2) + "\n", encoding="utf-8")
    (out / "report.md").write_text(report_markdown(metrics, per_class, result), encoding="utf-8")
    written["report"] = out / "report.md"
    return written


def report_markdown(
    metrics: dict[str, Any], per_class: list[dict[str, Any]], result: EvalResult
) -> str:
    figures = [
        {"metric": "top-1 classification", "value": metrics["top1_cls"]},
        {"metric": "top-5 classification", "value": metrics["top5_cls"]},
        {"metric": f"top-1 loc (τ = {tau_text(metrics['default_tau'])})", "value": metrics["top1_loc"]},
        {
            "metric": f"GT-known loc (τ = {tau_text(metrics['default_tau'])})",
            "value": metrics["gt_known_loc"],
        },
        {"metric": "MaxBoxAccV2 (mean of δ = 0.3, 0.5, 0.7)", "value": metrics["maxboxacc_v2"]},
        *(
            {
                "metric": f"  box accuracy δ = {d} (τ = {metrics['maxboxacc_v2_best_tau'][d]:g})",
                "value": v,
            }
            for d, v in metrics["maxboxacc_v2_per_iou"].items()
        ),
        {
            "metric": f"top-1 loc at best τ = {metrics['best_tau']:g}",
            "value": metrics["top1_loc_at_best_tau"],
        },
        {
            "metric": f"GT-known loc at best τ = {metrics['best_tau']:g}",
            "value": metrics["gt_known_loc_at_best_tau"],
        },
        {"metric": "mean IoU of the box", "value": metrics["mean_iou"]},
        *(
            {"metric": name, "value": metrics[key]}
            for name, key in (("COCO AP (IoU 0.5:0.95)", "coco_ap"), ("COCO AP50", "coco_ap50"),
                              ("COCO AP75", "coco_ap75"))
            if metrics.get(key) is not None
        ),
    ]
    settings = "\n".join(f"- {key}: `{value}`" for key, value in metrics["settings"].items())
    counts = "\n".join(
        f"- {key.replace('_', ' ')}: {value}" for key, value in metrics["counts"].items()
    )
    problems = "\n".join(f"- {line}" for line in result.counts.errors[:50]) or "- none"
    return f"""# camloc eval

{metrics["num_images"]} images evaluated in {metrics["seconds"]:.1f} s.

{markdown_table(figures, ["metric", "value"])}

Localization counts an image when the box of the map of its ground-truth class has IoU ≥ 0.5
with a ground-truth box of that class (top-1 loc: and the top-1 class is right). MaxBoxAccV2
(Choe et al., CVPR 2020): for each δ, the best over τ of the fraction of images for which some
box of some connected component of the thresholded map has IoU ≥ δ. COCO AP (pycocotools'
COCOeval): camloc's boxes of the map of the ground-truth class, scored by the model's
probability of that class, against the ground-truth boxes of that class.

![metrics against τ](curves.png)

## Settings

{settings}

## Images

{counts}

Skipped or unreadable:

{problems}

## Best localized (white: camloc's box, green: ground truth)

![best](gallery_best.png)

## Worst localized

![worst](gallery_worst.png)

## Per class

{markdown_table(per_class, ["class", "index", "images", "top1_cls", "top1_loc", "gt_known_loc"])}
"""
