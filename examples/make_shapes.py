"""Generate the three-shape data set: circles, squares and triangles on textured backgrounds.

Each image holds one filled shape whose side is a quarter to half of the image side, at a
random position, on a random texture (smooth colour noise plus stripes). The exact box of
every shape is written to ``boxes.csv`` (``image,label,xmin,ymin,xmax,ymax``, pixel edges,
``image`` relative to the output folder), so CAM boxes can be scored against the truth.

    python examples/make_shapes.py shapes --per-class 60 --size 128
    camloc train shapes --out shapes-model
    camloc run shapes --model shapes-model/model.pt --out shapes-run

>>> import tempfile
>>> rows = make_shapes(tempfile.mkdtemp(), per_class=2, size=64, seed=0)
>>> len(rows), sorted({row[1] for row in rows})
(6, ['circle', 'square', 'triangle'])
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("circle", "square", "triangle")


def texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """``(size, size, 3)`` uint8 background: smooth colour noise plus random stripes."""
    coarse = rng.uniform(0, 255, (4, 4, 3)).astype(np.float32)
    smooth = Image.fromarray(coarse.astype(np.uint8)).resize((size, size), Image.BICUBIC)
    smooth = np.asarray(smooth, dtype=np.float32)
    angle = rng.uniform(0, math.pi)
    period = rng.uniform(size / 12, size / 4)
    ys, xs = np.mgrid[0:size, 0:size]
    stripes = np.sin((xs * math.cos(angle) + ys * math.sin(angle)) * 2 * math.pi / period)
    stripe_color = rng.uniform(-60, 60, 3)
    grain = rng.normal(0, 12, (size, size, 3))
    image = smooth + stripes[..., None] * stripe_color + grain
    return np.clip(image, 0, 255).astype(np.uint8)


def shape_mask(rng: np.random.Generator, label: str, size: int) -> np.ndarray:
    """A boolean ``(size, size)`` mask of one shape, side 1/4 to 1/2 of ``size``, anywhere."""
    side = rng.uniform(size / 4, size / 2)
    x0 = rng.uniform(0, size - side)
    y0 = rng.uniform(0, size - side)
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    if label == "circle":
        draw.ellipse((x0, y0, x0 + side, y0 + side), fill=255)
    elif label == "square":
        draw.rectangle((x0, y0, x0 + side, y0 + side), fill=255)
    else:
        draw.polygon([(x0 + side / 2, y0), (x0 + side, y0 + side), (x0, y0 + side)], fill=255)
    return np.asarray(mask) > 0


def draw_sample(rng: np.random.Generator, label: str, size: int
                ) -> tuple[Image.Image, tuple[int, ...]]:
    """One image of ``label`` and its exact box ``(xmin, ymin, xmax, ymax)``."""
    image = texture(rng, size)
    mask = shape_mask(rng, label, size)
    color = rng.uniform(0, 255, 3)
    shading = rng.normal(0, 10, (size, size, 1))
    image[mask] = np.clip(color + shading[mask], 0, 255).astype(np.uint8)
    rows, cols = np.nonzero(mask)
    box = (int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1)
    return Image.fromarray(image), box


def make_shapes(out: str | Path, per_class: int = 60, size: int = 128, seed: int = 0
                ) -> list[tuple]:
    """Write ``out/<class>/<class>_NNNN.png`` and ``out/boxes.csv``; returns the CSV rows."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    rows = []
    for label in CLASSES:
        (out / label).mkdir(parents=True, exist_ok=True)
    for index in range(per_class):
        for label in CLASSES:
            image, box = draw_sample(rng, label, size)
            relative = f"{label}/{label}_{index:04d}.png"
            image.save(out / relative)
            rows.append((relative, label, *box))
    with open(out / "boxes.csv", "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["image", "label", "xmin", "ymin", "xmax", "ymax"])
        writer.writerows(rows)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="output folder")
    parser.add_argument("--per-class", type=int, default=60, help="images per class")
    parser.add_argument("--size", type=int, default=128, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rows = make_shapes(args.out, args.per_class, args.size, args.seed)
    print(f"wrote {len(rows)} images and {Path(args.out) / 'boxes.csv'}")


if __name__ == "__main__":
    main()
