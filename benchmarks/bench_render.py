"""camloc's finishing steps against the straightforward ways, on the bundled photos.

    python benchmarks/bench_render.py [--topk 5] [--repeats 20]

- PNG: Pillow's writer (zlib level 1, run-length strategy, what camloc used before) vs
  ``render.encode_png`` (up filter, ISA-L deflate), on real overlays: time and size;
- blend: a colour lookup per pixel then a float mix (camloc's earlier ``blend``) vs
  ``render.blend`` (lookup in a table pre-scaled by the opacity);
- boxes: ``scipy.ndimage.label`` + ``bincount`` + ``find_objects`` per map (camloc's earlier
  ``boxes_from_mask``) vs ``boxes.boxes_from_maps`` (row runs joined by csgraph, the k maps
  of an image at once), on the top-k CAMs of the default model; the boxes are checked equal.

Single-threaded (``torch.set_num_threads(1)``), so the figures are per core.
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import ndimage
from timing import best_times

import camloc
from camloc import render
from camloc.boxes import boxes_from_maps

ROOT = Path(__file__).resolve().parents[1]


def pillow_png(picture: Image.Image) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", compress_level=1, compress_type=3)
    return buffer.getvalue()


def lookup_blend(image: torch.Tensor, normalized: torch.Tensor, alpha: float) -> torch.Tensor:
    colors = render.colormap_lut()[(normalized.clamp(0, 1) * 255).round().long()].float()
    return (image.float() * (1 - alpha) + colors * alpha).round().clamp(0, 255).to(torch.uint8)


def label_boxes(normalized: torch.Tensor, threshold: float) -> list[list[tuple]]:
    result = []
    for heat in normalized:
        labels, count = ndimage.label((heat >= threshold).numpy(), structure=np.ones((3, 3), bool))
        if count == 0:
            result.append([])
            continue
        areas = np.bincount(labels.ravel(), minlength=count + 1)[1:]
        rows, cols = ndimage.find_objects(labels)[int(np.argmax(areas))]
        result.append([(cols.start, rows.start, cols.stop, rows.stop)])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--topk", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = camloc.load_model()
    paths = sorted((ROOT / "examples" / "images").glob("*.jpg"))
    results = camloc.explain(model, paths, topk=args.topk)
    images = [camloc.load_image(path) for path in paths]
    overlays = [render.overlay(image, result) for image, result in zip(images, results, strict=True)]
    tensors = [render.image_tensor(image) for image in images]
    for result in results:  # the same boxes both ways
        assert label_boxes(result.normalized, 0.25) == boxes_from_maps(result.normalized, 0.25)
    pairs = {
        "PNG": (lambda: [pillow_png(o) for o in overlays], lambda: [render.encode_png(o) for o in overlays]),
        "blend": (lambda: [lookup_blend(t, r.normalized[0], 0.5) for t, r in zip(tensors, results, strict=True)],
                  lambda: [render.blend(t, r.normalized[0], 0.5) for t, r in zip(tensors, results, strict=True)]),
        f"boxes (top-{args.topk})": (lambda: [label_boxes(r.normalized, 0.25) for r in results],
                                     lambda: [boxes_from_maps(r.normalized, 0.25) for r in results]),
    }
    report = {}
    pixels = sum(image.width * image.height for image in images) / 1e6
    print(f"{len(images)} photos ({pixels:.2f} megapixels in all), 1 thread")
    print(f"{'step':16s} {'before ms':>10s} {'camloc ms':>10s} {'speed-up':>9s}")
    for step, (before, after) in pairs.items():
        (slow, slow_out), (fast, fast_out) = best_times([before, after], args.repeats)
        report[step] = {"before_ms": slow * 1e3, "camloc_ms": fast * 1e3, "speedup": slow / fast}
        print(f"{step:16s} {slow * 1e3:10.2f} {fast * 1e3:10.2f} {slow / fast:8.1f}×")
        if step == "PNG":
            before_size, after_size = sum(map(len, slow_out)), sum(map(len, fast_out))
            for data, overlay in zip(fast_out, overlays, strict=True):  # decodes to the same pixels
                assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), np.asarray(overlay))
            report[step]["size_ratio"] = after_size / before_size
            print(f"{'':16s} files: {before_size / 1e6:.2f} MB vs {after_size / 1e6:.2f} MB "
                  f"({after_size / before_size:.2f}×)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
