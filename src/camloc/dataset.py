"""Images in batches for the network: decoded by threads ahead of the model, failures kept as items.

Used by the folder job (``camloc run``), ``camloc eval`` and the Ray engine alike, so a bad
file gives the same error from every door.

>>> import camloc
>>> model = camloc.load_model("resnet18", weights="random")
>>> [item] = ImageDataset(["examples/images/coffee.jpg"], model, "squash", 10**8)
>>> tuple(item.tensor.shape), item.error
((3, 224, 224), None)
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from .errors import ImageError
from .images import Geometry, load_image, preprocess


class Loaded(NamedTuple):
    """The parts of an item that loaded."""

    tensor: torch.Tensor
    geometry: Geometry
    image: torch.Tensor


@dataclass
class Item:
    index: int
    path: str
    tensor: torch.Tensor | None = None
    geometry: Geometry | None = None
    image: torch.Tensor | None = None  # (H, W, 3) uint8 original, for rendering
    error: str | None = None

    def loaded(self) -> Loaded:
        """Tensor, geometry and image of an item that loaded (``error`` is None)."""
        if self.tensor is None or self.geometry is None or self.image is None:
            raise ValueError(f"{self.path} did not load: {self.error}")
        return Loaded(self.tensor, self.geometry, self.image)


class ImageDataset:
    """Loads and preprocesses one image per item; failures become an ``Item`` with an error."""

    def __init__(self, paths: Sequence[str | os.PathLike], model: Any, policy: str,
                 max_pixels: int, input_size: tuple[int, int] | None = None):
        """``model``: anything with ``input_size``, ``mean`` and ``std`` (an adapter)."""
        self.paths, self.policy, self.max_pixels = list(paths), policy, max_pixels
        self.input_size, self.mean, self.std = input_size or model.input_size, model.mean, model.std

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Item:
        path = self.paths[index]
        try:
            image = load_image(path, self.max_pixels)
            tensor, geometry = preprocess(image, self.input_size, self.policy, self.mean, self.std)
            original = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())
            return Item(index, str(path), tensor, geometry, original)
        except ImageError as error:
            return Item(index, str(path), error=str(error))
        except Exception as error:  # noqa: BLE001 - one bad file never stops the run
            return Item(index, str(path), error=unexpected_error_line(path, error))


def unexpected_error_line(path: str | os.PathLike, error: Exception) -> str:
    """One line naming the file and an error camloc did not raise itself.

    >>> unexpected_error_line("a.png", OSError("broken\\nmore"))
    'a.png: OSError: broken'
    """
    return f"{path}: {type(error).__name__}: {error}".splitlines()[0]


PREFETCH_BATCHES = 2  # batches decoded ahead of the one the model is on: memory stays flat


def decoding_threads(images: int, few: int) -> int:
    """The automatic number of decoding threads: none for ``few`` images or fewer (starting
    threads costs more than it saves), else up to 4.

    >>> decoding_threads(10, few=32), decoding_threads(100, few=32) >= 1
    (0, True)
    """
    return 0 if images <= few else min(4, os.cpu_count() or 1)


def batches(paths: Sequence[Path], preprocessing: Any, policy: str, max_pixels: int,
            input_size: tuple[int, int], batch_size: int, workers: int | None = None) -> Iterator[list[Item]]:
    """``paths`` loaded and preprocessed in lists of ``batch_size`` items, in order.

    ``workers`` threads decode up to :data:`PREFETCH_BATCHES` batches ahead while the caller
    runs the model (``None``: none for a handful of images, else up to 4; ``0``: each batch
    is decoded when it is asked for). Threads, not processes: Pillow's decoders and resizing
    and torch's arithmetic release the GIL, and nothing is copied between processes or
    competes with the forward pass's own threads as worker processes do (on a 2-core CPU a
    run is 1.1-1.15x faster than with DataLoader workers, ``benchmarks/bench_runtime.py``).
    Leaving the loop early cancels the decoding not yet started.

    >>> import camloc
    >>> model = camloc.load_model("resnet18", weights="random")
    >>> paths = [Path("examples/images/coffee.jpg")] * 5
    >>> [len(items) for items in batches(paths, model, "squash", 10**8, (224, 224), 2, workers=2)]
    [2, 2, 1]
    """
    dataset = ImageDataset(paths, preprocessing, policy, max_pixels, input_size)
    if workers is None:
        workers = decoding_threads(len(paths), few=2 * batch_size)
    groups = [range(start, min(start + batch_size, len(paths))) for start in range(0, len(paths), batch_size)]
    if workers == 0:
        for group in groups:
            yield [dataset[index] for index in group]
        return
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="camloc-decode")
    ahead: deque[list[Future[Item]]] = deque()
    try:
        for group in groups:
            ahead.append([pool.submit(dataset.__getitem__, index) for index in group])
            if len(ahead) > PREFETCH_BATCHES:
                yield [future.result() for future in ahead.popleft()]
        while ahead:
            yield [future.result() for future in ahead.popleft()]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
