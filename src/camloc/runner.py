"""The streaming folder job behind ``camloc run``: load → explain → render → write.

Images stream through a DataLoader (decoding in worker processes) in batches, so memory
does not grow with the folder. Each image gets its rendered files (written atomically)
and one line in ``results.jsonl``; an unreadable file gets a record with its error and
the run goes on. ``resume=True`` skips images already done.

>>> import camloc, tempfile
>>> from camloc.runner import RunOptions, run
>>> out = tempfile.mkdtemp()
>>> summary = run(camloc.load_model(), ["examples/images/coffee.jpg"], RunOptions(out=out))
>>> summary.done, summary.failed
(1, 0)
"""

from __future__ import annotations

import io
import json
import os
import re
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from . import render
from .cam import (
    DEFAULT_BOX_THRESHOLD,
    DEFAULT_FLIP,
    DEFAULT_NORMALIZATION,
    DEFAULT_SCALES,
    BoxOptions,
    ClassSelection,
    Explanation,
    MethodOutput,
    explain_batch,
    finish,
    get_method,
    network_size,
)
from .errors import CamlocError, ImageError
from .images import DEFAULT_MAX_PIXELS, Geometry, collect_images, load_image, preprocess
from .models import ClassifierAdapter

RESULTS_FILE = "results.jsonl"
WRITER_THREADS = max(2, min(8, (os.cpu_count() or 2) // 2))
MAX_PENDING_BATCHES = 2


@dataclass
class RunOptions:
    """Everything ``camloc run`` can be told, with its defaults."""

    out: str | os.PathLike = "camloc-out"
    topk: int = 1
    rank: int | None = None
    classes: Sequence[int | str] = ()
    method: str = "auto"
    layer: str | None = None  # target layer of gradient methods (None: automatic)
    policy: str = "squash"
    threshold: float = DEFAULT_BOX_THRESHOLD
    largest_only: bool = True
    min_area: float = 0.0
    colormap: str = render.DEFAULT_COLORMAP
    alpha: float = render.DEFAULT_ALPHA
    image_format: str = "png"
    overlay: bool = True
    panels: bool = False
    grid: bool | None = None  # None: a grid when more than one class is explained
    save_maps: bool = False
    batch_size: int = 16
    workers: int | None = None  # decoding processes; None: automatic (0 for small runs)
    amp: bool = False  # bfloat16 autocast for the model (mostly for GPUs)
    resume: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    input_size: int | None = None  # network input side; None: DEFAULT_INPUT_SCALE x the model's
    flip: bool = DEFAULT_FLIP  # test-time horizontal flip, maps and logits averaged
    scales: tuple[float, ...] = DEFAULT_SCALES  # test-time views resized by these factors
    normalization: str = DEFAULT_NORMALIZATION  # maps to [0, 1]: "max" or "minmax" (paper)

    def network_size(self, model: ClassifierAdapter) -> tuple[int, int]:
        """The ``(height, width)`` images are resized to for the network."""
        return network_size(model, self.input_size)

    def selection(self) -> ClassSelection:
        return ClassSelection(topk=self.topk, rank=self.rank, classes=tuple(self.classes))

    def box_options(self) -> BoxOptions:
        return BoxOptions(self.threshold, self.largest_only, self.min_area, self.normalization)


@dataclass
class RunSummary:
    found: int = 0
    done: int = 0
    failed: int = 0
    skipped: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    def count(self, record: dict[str, Any]) -> None:
        """Count one finished record (done, or failed with its error)."""
        if record["error"] is None:
            self.done += 1
        else:
            self.failed += 1
            self.errors.append(record["error"])

    @property
    def images_per_second(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        parts = [f"{self.done} done", f"{self.failed} failed"]
        if self.skipped:
            parts.append(f"{self.skipped} skipped (already done)")
        return ", ".join(parts) + f" in {self.seconds:.1f}s ({self.images_per_second:.1f} images/s)"


# --------------------------------------------------------------------------- atomic writes


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_read_umask()  # what open() would give (mkstemp's files are 0600)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename (the file gets the
    usual permissions of the user's umask)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            if hasattr(os, "fchmod"):
                os.fchmod(stream.fileno(), FILE_MODE)
            stream.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def save_image(picture: Image.Image, path: Path) -> None:
    """``picture`` as JPEG (by the suffix) or PNG (camloc's fast encoder), atomically."""
    if path.suffix.lower() in (".jpg", ".jpeg"):
        buffer = io.BytesIO()
        picture.convert("RGB").save(buffer, format="JPEG", quality=92)
        data = buffer.getvalue()
    else:
        data = render.encode_png(picture)
    write_atomic(path, data)


def save_array(array: np.ndarray, path: Path) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array)
    write_atomic(path, buffer.getvalue())


# --------------------------------------------------------------------------- inputs


def output_stems(paths: Sequence[Path], inputs: Sequence[str]) -> list[str]:
    """A unique output name stem per input: its path inside the folder given, else its name."""
    roots = [Path(item) for item in inputs if Path(item).is_dir()]
    stems, used = [], set()
    for path in paths:
        stem = path.with_suffix("").name
        for root in roots:
            try:
                stem = path.relative_to(root).with_suffix("").as_posix()
                break
            except ValueError:
                continue
        stem = re.sub(r"[^\w\-./]", "_", stem).lstrip("./") or "image"
        unique, n = stem, 2
        while unique in used:
            unique, n = f"{stem}-{n}", n + 1
        used.add(unique)
        stems.append(unique)
    return stems


@dataclass
class Item:
    index: int
    path: str
    tensor: torch.Tensor | None = None
    geometry: Geometry | None = None
    image: torch.Tensor | None = None  # (H, W, 3) uint8 original, for rendering
    error: str | None = None


class ImageDataset(Dataset):
    """Loads and preprocesses one image per item; failures become an ``Item`` with an error."""

    def __init__(self, paths: Sequence[Path], model: ClassifierAdapter, policy: str,
                 max_pixels: int, input_size: tuple[int, int] | None = None):
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
            return Item(index, str(path), error=f"{path}: {type(error).__name__}: {error}".splitlines()[0])


def _keep_items(items: list[Item]) -> list[Item]:
    return items


def batches(paths: Sequence[Path], model: ClassifierAdapter, options: RunOptions) -> Iterator[list[Item]]:
    dataset = ImageDataset(paths, model, options.policy, options.max_pixels,
                           options.network_size(model))
    workers = options.workers
    if workers is None:  # worker start-up costs more than it saves on a handful of images
        workers = 0 if len(paths) <= 2 * options.batch_size else min(4, os.cpu_count() or 1)
    loader = DataLoader(dataset, batch_size=options.batch_size, num_workers=workers,
                        collate_fn=_keep_items, prefetch_factor=2 if workers else None)
    yield from loader


# --------------------------------------------------------------------------- results file


def read_results(path: Path) -> list[dict[str, Any]]:
    """Records of an existing results.jsonl; a torn last line (interrupted run) is dropped."""
    records = []
    if not path.exists():
        return records
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "image" in record:
            records.append(record)
    return records


def prepare_results(out: Path, resume: bool) -> set[str]:
    """Start results.jsonl afresh, or keep its successful records when resuming.

    Returns the images already done. Failed records are dropped so they are retried.
    """
    path = out / RESULTS_FILE
    kept = [r for r in read_results(path) if r.get("error") is None] if resume else []
    write_atomic(path, "".join(json.dumps(r) + "\n" for r in kept).encode())
    return {r["image"] for r in kept}


# --------------------------------------------------------------------------- rendering


def write_outputs(
    explanation: Explanation, image: Image.Image, stem: str, out: Path, options: RunOptions
) -> dict[str, str]:
    """Write the rendered files of one image; returns their paths relative to ``out``."""
    extension = "jpg" if options.image_format.lower() in ("jpg", "jpeg") else "png"
    written: dict[str, str] = {}

    def put(kind: str, picture: Image.Image) -> None:
        relative = f"{stem}_{kind}.{extension}"
        save_image(picture, out / relative)
        written[kind] = relative

    style = {"alpha": options.alpha, "colormap": options.colormap}
    if options.overlay:
        put("overlay", render.overlay(image, explanation, 0, **style))
    if options.panels:
        put("panels", render.panels(image, explanation, 0, **style))
    if options.grid or (options.grid is None and len(explanation.targets) > 1):
        put("grid", render.grid(image, explanation, **style))
    if options.save_maps:
        relative = f"{stem}_maps.npy"
        save_array(explanation.normalized.cpu().numpy().astype(np.float32), out / relative)
        written["maps"] = relative
    return written


def error_record(path: str, message: str) -> dict[str, Any]:
    return {"image": path, "width": None, "height": None, "predictions": [], "cams": [],
            "outputs": {}, "error": message}


def run(
    model: ClassifierAdapter,
    inputs: Sequence[str | os.PathLike],
    options: RunOptions,
    on_start: Callable[[int], None] | None = None,
    on_image: Callable[[dict[str, Any]], None] | None = None,
) -> RunSummary:
    """Explain every image under ``inputs`` into ``options.out``; returns the counts.

    Decoding (DataLoader workers), the model (main thread) and rendering/writing (a small
    thread pool, which Pillow's encoders and torch release the GIL for) overlap; at most
    two batches wait for writing, so memory stays flat however large the folder.
    ``on_start(total)`` is called once with the number of images to process,
    ``on_image(record)`` after each image (the CLI's progress bar and warnings).
    """
    started = time.perf_counter()
    inputs = [str(item) for item in inputs]
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    paths = collect_images(inputs)
    summary = RunSummary(found=len(paths))
    if not paths:
        raise CamlocError(f"no images found in {', '.join(inputs)}")
    stems = dict(zip(map(str, paths), output_stems(paths, inputs), strict=True))
    selection, box_options = options.selection(), options.box_options()
    selection.resolve(model)
    method = get_method(options.method, model, layer=options.layer)
    done_before = prepare_results(out, options.resume)
    todo = [p for p in paths if str(p) not in done_before]
    summary.skipped = len(paths) - len(todo)
    if on_start:
        on_start(len(todo))
    pending: deque[list[Future]] = deque()

    def record(futures: list[Future], results) -> None:
        for future in futures:
            entry = future.result()
            results.write(json.dumps(entry) + "\n")
            summary.count(entry)
            if on_image:
                on_image(entry)
        results.flush()

    with open(out / RESULTS_FILE, "a", encoding="utf-8") as results, \
            ThreadPoolExecutor(max_workers=WRITER_THREADS, thread_name_prefix="camloc-write") as writers:
        for items in batches(todo, model, options):
            explanations = explain_items(items, model, method, selection, box_options, options)
            pending.append([writers.submit(_finish_lazy, item, explanations.get(item.index), stems, out, options)
                            for item in items])
            while len(pending) > MAX_PENDING_BATCHES:
                record(pending.popleft(), results)
        while pending:
            record(pending.popleft(), results)
    summary.seconds = time.perf_counter() - started
    return summary


def explain_items(items: list[Item], model: ClassifierAdapter, method, selection: ClassSelection,
                  box_options: BoxOptions, options: RunOptions) -> dict[int, Callable[[], Explanation]]:
    """Run the method on the readable items of a batch.

    Returns ``{item.index: make}`` where ``make()`` finishes one image (upsampling to the
    original size, normalising, boxes): cheap per image, so it runs in the writer threads,
    in parallel, while the main thread feeds the model the next batch.
    """
    good = [item for item in items if item.error is None]
    if not good:
        return {}
    device = model.device
    batch = torch.stack([item.tensor for item in good])
    if device.type == "cuda":
        batch = batch.pin_memory().to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
    else:
        batch = batch.to(device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=options.amp):
        output = explain_batch(method, batch, selection, options.flip, options.scales)
    logits, maps = output.logits.float(), output.maps.float()

    def maker(i: int, item: Item) -> Callable[[], Explanation]:
        part = MethodOutput(logits[i : i + 1], output.classes[i : i + 1], maps[i : i + 1], output.method)
        return lambda: finish(part, [item.geometry], model, box_options, [item.path])[0]

    return {item.index: maker(i, item) for i, item in enumerate(good)}


def _finish_lazy(item: Item, make: Callable[[], Explanation] | None, stems: dict[str, str], out: Path,
                 options: RunOptions) -> dict[str, Any]:
    return _finish_item(item, make() if make is not None else None, stems, out, options)


def _finish_item(item: Item, explanation: Explanation | None, stems: dict[str, str], out: Path,
                 options: RunOptions) -> dict[str, Any]:
    if item.error is not None or explanation is None:
        return error_record(item.path, item.error or f"{item.path}: not processed")
    try:
        image = Image.fromarray(item.image.numpy())
        outputs = write_outputs(explanation, image, stems[item.path], out, options)
    except OSError as error:
        return error_record(item.path, f"{item.path}: could not write outputs ({error})")
    record = explanation.to_record()
    record["outputs"] = outputs
    return record
