"""The streaming folder job behind ``camloc run``: load → explain → render → write.

Images stream in batches (decoded by threads ahead of the model), so memory
does not grow with the folder. Each image gets its rendered files (written atomically)
and one line in ``results.jsonl``; an unreadable file gets a record with its error and
the run goes on. ``resume=True`` skips images already done. The explanation itself is the
one :class:`camloc.pipeline.Pipeline` every door uses.

>>> import camloc, tempfile
>>> from camloc.jobs import RunOptions, run
>>> out = tempfile.mkdtemp()
>>> summary = run(camloc.load_model(), ["examples/images/coffee.jpg"], RunOptions(out=out))
>>> summary.done, summary.failed
(1, 0)
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from PIL import Image

from .. import render
from ..config import Threshold
from ..dataset import Item, batches
from ..errors import CamlocError
from ..exports import ExportOptions
from ..images import DEFAULT_MAX_PIXELS, collect_images, stack_images
from ..models import ClassifierAdapter
from ..pipeline import ExplainConfig, Explanation, MethodOutput, Pipeline
from .exporting import ExportReport, write_exports
from .files import (
    RESULTS_FILE,
    OutputLock,
    check_out_dir,
    error_record,
    file_identity,
    identity_key,
    output_stems,
    prepare_results,
    read_results,
    save_array,
    save_image,
)

WRITER_THREADS = max(2, min(8, (os.cpu_count() or 2) // 2))
MAX_PENDING_BATCHES = 2


@dataclass(frozen=True)
class OutputOptions:
    """Which files a run writes per image and how they look."""

    colormap: str = render.DEFAULT_COLORMAP
    alpha: float = render.DEFAULT_ALPHA
    image_format: str = "png"
    overlay: bool = True
    panels: bool = False
    grid: bool | None = None  # None: a grid when more than one class is explained
    save_maps: bool = False

    def __post_init__(self) -> None:
        render.colormap_lut(self.colormap)  # an unknown colormap fails before any work
        if not 0.0 <= self.alpha <= 1.0:
            raise CamlocError(f"--alpha must be in [0, 1], got {self.alpha}")
        if self.image_format.lower() not in ("png", "jpg", "jpeg"):
            raise CamlocError(f"--format must be png or jpg, got {self.image_format!r}")


@dataclass(frozen=True)
class RunOptions:
    """A folder job: where it writes (``out``), what decides the answers (``config``), which
    files it writes (``outputs``), which detection sets it exports at the end (``exports``:
    COCO, YOLO, VOC, Label Studio, over every record of results.jsonl), and how it runs
    (batches, decoding threads, resume, the pixel limit of inputs).

    >>> RunOptions.build(out="x", topk=3, panels=True).config.topk
    3
    >>> RunOptions.build(out="x", formats="coco,yolo", masks=True).exports.formats
    ('coco', 'yolo')
    """

    out: str | os.PathLike = "camloc-out"
    config: ExplainConfig = ExplainConfig()
    outputs: OutputOptions = OutputOptions()
    batch_size: int = 16
    workers: int | None = None  # decoding threads; None: automatic (0 for small runs)
    resume: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    exports: ExportOptions = ExportOptions()

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise CamlocError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.max_pixels < 1:
            raise CamlocError(f"--max-pixels must be at least 1, got {self.max_pixels}")

    @classmethod
    def build(cls, **options: Any) -> RunOptions:
        """Options by keyword, each routed to the config, the outputs, the exports or the job."""
        groups: dict[type, dict[str, Any]] = {ExplainConfig: {}, OutputOptions: {}, ExportOptions: {}, cls: {}}
        for name, value in options.items():
            owner = next((kind for kind in groups if name in {f.name for f in dataclasses.fields(kind)}), None)
            if owner is None:
                raise TypeError(f"unknown run option {name!r}")
            groups[owner][name] = value
        job = groups[cls]
        job.setdefault("config", ExplainConfig(**groups[ExplainConfig]))
        job.setdefault("outputs", OutputOptions(**groups[OutputOptions]))
        job.setdefault("exports", ExportOptions(**groups[ExportOptions]))
        return cls(**job)


@dataclass
class RunSummary:
    found: int = 0
    done: int = 0
    failed: int = 0
    skipped: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)
    exports: ExportReport | None = None  # what --export wrote (failed images are left out)

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


# --------------------------------------------------------------------------- writing


def write_outputs(
    explanation: Explanation, image: Image.Image, stem: str, out: Path, options: OutputOptions
) -> dict[str, str]:
    """Write the rendered files of one image; returns their paths relative to ``out``."""
    extension = "jpg" if options.image_format.lower() in ("jpg", "jpeg") else "png"
    written: dict[str, str] = {}

    def put(kind: str, picture: Image.Image) -> None:
        relative = f"{stem}_{kind}.{extension}"
        save_image(picture, out / relative)
        written[kind] = relative

    if options.overlay:
        put("overlay", render.overlay(image, explanation, 0, alpha=options.alpha, colormap=options.colormap))
    if options.panels:
        put("panels", render.panels(image, explanation, 0, alpha=options.alpha, colormap=options.colormap))
    if options.grid or (options.grid is None and len(explanation.targets) > 1):
        put("grid", render.grid(image, explanation, alpha=options.alpha, colormap=options.colormap))
    if options.save_maps:
        relative = f"{stem}_maps.npy"
        save_array(explanation.normalized.cpu().numpy().astype(np.float32), out / relative)
        written["maps"] = relative
    return written


def finish_item(item: Item, explanation: Explanation | None, stems: dict[str, str], out: Path,
                options: OutputOptions, mask_rule: Threshold | None = None) -> dict[str, Any]:
    """One image's files and results.jsonl record (an error record when it failed); with a
    ``mask_rule`` (the box rule), each box's region as COCO RLE in ``cams[].masks``."""
    if item.error is not None or explanation is None:
        record = error_record(item.path, item.error or f"{item.path}: not processed")
    else:
        try:
            image = Image.fromarray(item.loaded().image.numpy())
            outputs = write_outputs(explanation, image, stems[item.path], out, options)
            record = explanation.to_record()
            record["outputs"] = outputs
            if mask_rule is not None:
                add_masks(record, explanation, mask_rule)
        except OSError as error:
            record = error_record(item.path, f"{item.path}: could not write outputs ({error})")
    record["file"] = file_identity(item.path)
    return record


def add_masks(record: dict[str, Any], explanation: Explanation, rule: Threshold) -> None:
    """Each box's thresholded region (COCO RLE) beside it in the record: ``cams[i].masks``."""
    from ..exports.masks import explanation_masks

    masks = explanation_masks(explanation.normalized, rule, explanation.boxes)
    for cam, class_masks in zip(record["cams"], masks, strict=True):
        cam["masks"] = class_masks


def mask_rule_of(options: RunOptions, pipeline: Pipeline) -> Threshold | None:
    """The box rule when the run exports masks, else ``None``."""
    return pipeline.box_options.threshold if options.exports.masks else None


def export_run(out: Path, options: RunOptions) -> ExportReport | None:
    """The run's exports over every record of its results.jsonl (resumed runs included)."""
    if not options.exports:
        return None
    return write_exports(read_results(out / RESULTS_FILE), out, options.exports)


# --------------------------------------------------------------------------- the job


@dataclass
class Plan:
    """What a folder job will do: the images found, their output names, those to do."""

    out: Path
    paths: list[Path]
    stems: dict[str, str]
    todo: list[Path]


def plan_run(inputs: Sequence[str | os.PathLike], options: RunOptions) -> Plan:
    """Find the images, name their outputs, and start (or resume) ``results.jsonl``.

    Call it with the output lock held."""
    given = [str(item) for item in inputs]
    out = Path(options.out)
    paths = collect_images(given)
    if not paths:
        raise CamlocError(f"no images found in {', '.join(given)}")
    stems = dict(zip(map(str, paths), output_stems(paths, given), strict=True))
    done_before = prepare_results(out, options.resume)
    todo = [p for p in paths if not done_before or identity_key(file_identity(p)) not in done_before]
    return Plan(out, paths, stems, todo)


def run(
    model: ClassifierAdapter,
    inputs: Sequence[str | os.PathLike],
    options: RunOptions,
    on_start: Callable[[int], None] | None = None,
    on_image: Callable[[dict[str, Any]], None] | None = None,
) -> RunSummary:
    """Explain every image under ``inputs`` into ``options.out``; returns the counts.

    Decoding (threads), the model (main thread) and rendering/writing (a small
    thread pool, which Pillow's encoders and torch release the GIL for) overlap; at most
    two batches wait for writing, so memory stays flat however large the folder.
    ``on_start(total)`` is called once with the number of images to process,
    ``on_image(record)`` after each image (the CLI's progress bar and warnings).
    """
    started = time.perf_counter()
    pipeline = Pipeline(model, options.config)  # bad classes, methods, layers fail before any work
    if options.exports.masks:
        from ..exports.masks import import_mask_api

        import_mask_api()  # a missing extra fails before any work
    out = check_out_dir(options.out)
    with OutputLock(out):
        plan = plan_run(inputs, options)
        summary = RunSummary(found=len(plan.paths), skipped=len(plan.paths) - len(plan.todo))
        if on_start:
            on_start(len(plan.todo))
        pending: deque[list[Future]] = deque()

        def record(futures: list[Future], results: TextIO) -> None:
            for future in futures:
                entry = future.result()
                results.write(json.dumps(entry) + "\n")
                summary.count(entry)
                if on_image:
                    on_image(entry)
            results.flush()

        with open(out / RESULTS_FILE, "a", encoding="utf-8") as results, \
                ThreadPoolExecutor(max_workers=WRITER_THREADS, thread_name_prefix="camloc-write") as writers:
            for items in batches(plan.todo, model, options.config.policy, options.max_pixels, pipeline.size,
                                 options.batch_size, options.workers):
                explanations = explain_items(items, pipeline)
                pending.append([writers.submit(_finish_lazy, item, explanations.get(item.index), plan.stems,
                                               out, options.outputs, mask_rule_of(options, pipeline))
                                for item in items])
                while len(pending) > MAX_PENDING_BATCHES:
                    record(pending.popleft(), results)
            while pending:
                record(pending.popleft(), results)
        summary.exports = export_run(out, options)
    summary.seconds = time.perf_counter() - started
    return summary


def explain_items(items: list[Item], pipeline: Pipeline) -> dict[int, Callable[[], Explanation]]:
    """Run the pipeline's method on the readable items of a batch.

    Returns ``{item.index: make}`` where ``make()`` finishes one image (upsampling to the
    original size, normalising, boxes): cheap per image, so it runs in the writer threads,
    in parallel, while the main thread feeds the model the next batch.
    """
    good = [item for item in items if item.error is None]
    if not good:
        return {}
    output = pipeline.forward(stack_images([item.loaded().tensor for item in good]))

    def maker(i: int, item: Item) -> Callable[[], Explanation]:
        part = MethodOutput(output.logits[i : i + 1], output.classes[i : i + 1], output.maps[i : i + 1],
                            output.method)
        return lambda: pipeline.finish(part, [item.loaded().geometry], [item.path])[0]

    return {item.index: maker(i, item) for i, item in enumerate(good)}


def _finish_lazy(item: Item, make: Callable[[], Explanation] | None, stems: dict[str, str], out: Path,
                 options: OutputOptions, mask_rule: Threshold | None = None) -> dict[str, Any]:
    return finish_item(item, make() if make is not None else None, stems, out, options, mask_rule)
