"""Split a folder of images with boxes into two halves (even / odd positions of the sorted
file list), as folders of symbolic links, so each half can be measured with `camloc eval`.

    python benchmarks/dev_halves.py IMAGES_DIR OUT_DIR      # → OUT_DIR/even, OUT_DIR/odd
    camloc eval --images OUT_DIR/even --boxes boxes.csv --json even.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

from camloc.images import collect_images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    paths = sorted(collect_images([str(args.images)]), key=lambda p: p.name)
    for half, chosen in (("even", paths[0::2]), ("odd", paths[1::2])):
        folder = args.out / half
        folder.mkdir(parents=True, exist_ok=True)
        for path in chosen:
            link = folder / path.name
            if not link.exists():
                link.symlink_to(path.resolve())
        print(f"{folder}: {len(chosen)} images")


if __name__ == "__main__":
    main()
