"""Draw docs/images/detection-export.jpg: camloc's overlay of a bundled photo next to what
its COCO export (boxes, RLE masks, category names) holds, read back with pycocotools.

    python docs/images/detection_export.py      # from the repository root
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_api

import camloc
from camloc import render
from camloc.exports import ExportOptions
from camloc.jobs import RunOptions, run

ROOT = Path(__file__).resolve().parents[2]
PHOTO = ROOT / "examples" / "images" / "coffee.jpg"
COLOURS = [(0, 220, 255), (255, 170, 0), (120, 255, 80)]


def main() -> None:
    model = camloc.load_model()
    out = Path(tempfile.mkdtemp())
    run(model, [PHOTO], RunOptions.build(out=out, topk=1, exports=ExportOptions(formats=("coco",), masks=True)))
    coco = json.loads((out / "coco.json").read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    image = camloc.load_image(PHOTO)
    [result] = camloc.explain(model, PHOTO)
    left = render.titled(render.overlay(image, result, 0, caption=False), "camloc run: map and box", 22)
    picture = image.convert("RGB")
    pixels = np.asarray(picture).astype(np.float32)
    draw_later = []
    for i, note in enumerate(coco["annotations"]):
        colour = COLOURS[i % len(COLOURS)]
        region = mask_api.decode(note["segmentation"]).astype(bool)
        pixels[region] = 0.6 * pixels[region] + 0.4 * np.array(colour)
        draw_later.append((note, colour))
    picture = Image.fromarray(pixels.round().astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    face = render.font(18)
    for note, colour in draw_later:
        x, y, w, h = note["bbox"]
        render.draw_boxes(picture, [[x, y, x + w, y + h]], colour)
        text = f"{names[note['category_id']]} {note['score']:.2f}"
        left_top = (x + 6, y + 6)
        box = draw.textbbox(left_top, text, font=face)
        draw.rectangle((box[0] - 3, box[1] - 3, box[2] + 3, box[3] + 3), fill=(0, 0, 0))
        draw.text(left_top, text, font=face, fill=colour)
    right = render.titled(picture, "coco.json: box, mask, category, score", 22)
    target = ROOT / "docs" / "images" / "detection-export.jpg"
    render.tile([left, right], columns=2).save(target, quality=88)
    print(target)


if __name__ == "__main__":
    main()
