"""Pictures at the end of ``camloc train``: curves, confusion matrix, validation CAMs.

>>> import tempfile, numpy as np
>>> from camloc.train import EpochRecord
>>> history = [EpochRecord(1, 1.0, 0.5, 0.9, 0.6, 1.0), EpochRecord(2, 0.5, 0.8, 0.4, 0.9, 1.0)]
>>> [p.name for p in write_plots(tempfile.mkdtemp(), history, np.eye(2, dtype=int), ["a", "b"])]
['curves.png', 'confusion.png']
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import numpy as np

from .. import render
from ..images import load_image
from ..models import ClassifierAdapter
from ..pipeline import explain


def _pyplot() -> ModuleType:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def write_plots(out: str | os.PathLike, history: Sequence, confusion: np.ndarray,
                names: Sequence[str], augmented: bool = False) -> list[Path]:
    """``curves.png`` (loss and accuracy per epoch) and ``confusion.png`` in ``out``."""
    plt = _pyplot()
    out = Path(out)
    epochs = [r.epoch for r in history]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(epochs, [r.train_loss for r in history], "o-", label="train")
    left.plot(epochs, [r.val_loss for r in history], "o-", label="validation")
    left.set(title="loss", xlabel="epoch")
    train_label = "train (augmented)" if augmented else "train"
    right.plot(epochs, [r.train_accuracy for r in history], "o-", label=train_label)
    right.plot(epochs, [r.val_accuracy for r in history], "o-", label="validation")
    right.set(title="accuracy", xlabel="epoch", ylim=(0, 1.02))
    for axis in (left, right):
        axis.legend()
        axis.grid(alpha=0.3)
    figure.tight_layout()
    curves = out / "curves.png"
    figure.savefig(curves, dpi=100)
    plt.close(figure)

    size = max(4, 0.6 * len(names) + 2)
    figure, axis = plt.subplots(figsize=(size + 1, size))
    image = axis.imshow(confusion, cmap="Blues")
    accuracy = np.trace(confusion) / max(1, confusion.sum())
    axis.set(xticks=range(len(names)), yticks=range(len(names)), xlabel="predicted", ylabel="true",
             title=f"validation confusion (accuracy {accuracy:.3f})")
    axis.set_xticklabels(names, rotation=45, ha="right")
    axis.set_yticklabels(names)
    limit = confusion.max() / 2 if confusion.size else 0
    for (row, col), count in np.ndenumerate(confusion):
        axis.text(col, row, str(count), ha="center", va="center",
                  color="white" if count > limit else "black")
    figure.colorbar(image, ax=axis, fraction=0.046)
    figure.tight_layout()
    matrix = out / "confusion.png"
    figure.savefig(matrix, dpi=100)
    plt.close(figure)
    return [curves, matrix]


def spread(paths: Sequence[str], count: int) -> list[str]:
    """Up to ``count`` paths taken in turn from each class folder.

    >>> spread(["a/1", "a/2", "a/3", "b/1"], 3)
    ['a/1', 'b/1', 'a/2']
    """
    by_class: dict[str, list[str]] = {}
    for path in paths:
        by_class.setdefault(Path(path).parent.name, []).append(path)
    chosen: list[str] = []
    while len(chosen) < min(count, len(paths)):
        for members in by_class.values():
            if members and len(chosen) < count:
                chosen.append(members.pop(0))
    return chosen


def write_examples(out: str | os.PathLike, model: ClassifierAdapter, paths: Sequence[str],
                   count: int) -> list[Path]:
    """``val_cams.png``: the first ``count`` validation images with their CAMs and boxes."""
    from PIL import ImageOps

    chosen = spread(paths, count)
    if not chosen:
        return []
    thumbs = [ImageOps.contain(load_image(path), (256, 256)) for path in chosen]
    results = explain(model, thumbs)  # the model's box rule, as every door uses it
    white = (255, 255, 255)
    pictures = [
        render.titled(ImageOps.pad(render.overlay(thumb, result), (256, 256), color=white),
                      f"{Path(path).parent.name}/{Path(path).name}", 12)
        for path, thumb, result in zip(chosen, thumbs, results, strict=True)
    ]
    target = Path(out) / "val_cams.png"
    render.tile(pictures, columns=min(len(pictures), 3)).save(target)
    return [target]
