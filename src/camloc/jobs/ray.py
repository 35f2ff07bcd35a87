"""``camloc run --engine ray``: the folder job of :mod:`camloc.jobs.local` on Ray Data.

The same pipeline, spread over a Ray cluster (or a local Ray on this machine):

    file list (driver) → load + preprocess (Ray tasks, in parallel)
      → model, CAM, boxes, overlays (``map_batches`` with an actor pool; each actor
        holds the model, loaded once, on a GPU when the cluster has them)
      → one ``results.jsonl`` written by the driver as records stream back.

Every step reuses the local runner's functions (``ImageDataset`` for loading, the
:class:`camloc.pipeline.Pipeline` for method, views and boxes, ``finish_item`` for files
and records, ``plan_run`` for ``--resume``), so the records are the same as the local
runner's; only their order follows completion, not the input order.

The model is loaded once on the driver (to check the options before any work is
scheduled) and shipped to the actors through Ray's object store, so model weights
need only be readable where the command is started. Input images and the output
folder must be readable / writable at the same path on every node (shared storage).

>>> import camloc, tempfile
>>> from camloc.jobs import RunOptions
>>> from camloc.jobs.ray import RayOptions, run
>>> out = tempfile.mkdtemp()
>>> summary = run(camloc.load_model(), ["examples/images/coffee.jpg"], RunOptions(out=out),
...               RayOptions(workers=1))                               # doctest: +SKIP
>>> summary.done, summary.failed                                       # doctest: +SKIP
(1, 0)
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..allocator import tune_allocator
from ..dataset import ImageDataset, Item
from ..errors import CamlocError
from ..images import Geometry
from ..models import ClassifierAdapter, resolve_device
from ..pipeline import Pipeline
from .files import RESULTS_FILE, OutputLock, check_out_dir
from .local import RunOptions, RunSummary, export_run, finish_item, mask_rule_of, plan_run

if TYPE_CHECKING:
    from ray import ObjectRef
    from ray.data import Dataset

INSTALL_HINT = "--engine ray needs Ray Data: pip install 'camloc[ray]'"


@dataclass
class RayOptions:
    """Where and how wide the Ray job runs.

    ``address``: ``None`` starts a local Ray on this machine; ``"auto"`` or
    ``"ray://head:10001"`` joins a running cluster. ``workers``: model actors in the pool.
    ``gpus_per_actor``: ``None`` asks for one GPU per actor when the cluster has GPUs.
    ``load_cpus``: CPUs each loading task reserves. Ray Data fuses loading into the actors
    when both ask for the same resources (CPU-only actors and ``load_cpus=None``): decoded
    pixels then never cross the object store. GPU actors, or a ``load_cpus`` different from
    ``cpus_per_actor``, keep loading in separate tasks running beside the actors.
    """

    address: str | None = None
    workers: int = 1
    cpus_per_actor: float = 1.0
    gpus_per_actor: float | None = None
    load_cpus: float | None = None
    local_cpus: int | None = None  # local Ray only; None: this machine's cores

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise CamlocError(f"the ray engine needs at least one worker, got {self.workers}")


# --------------------------------------------------------------------------- ray session


def import_ray() -> ModuleType:
    """``ray`` and ``ray.data``, or a one-line error naming the extra to install."""
    try:
        import ray
        import ray.data  # noqa: F401 - the Data library is a separate extra of Ray
    except ImportError:
        raise CamlocError(INSTALL_HINT) from None
    return ray


def start_ray(options: RayOptions) -> bool:
    """Connect to ``options.address`` or start a local Ray; True when this call started it."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    quiet = {"include_dashboard": False, "logging_level": logging.WARNING,
             "log_to_driver": False, "configure_logging": True}
    try:
        if options.address:
            ray.init(address=options.address, **{k: v for k, v in quiet.items()
                                                 if k != "include_dashboard"})
        else:
            ray.init(address="local", num_cpus=local_cpus(options), **quiet)  # never a stray one
    except (ConnectionError, RuntimeError, ValueError) as error:
        where = options.address or "a local Ray"
        raise CamlocError(f"could not start or reach {where}: {first_line(error)}") from None
    return True


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def local_cpus(options: RayOptions) -> int:
    """Logical CPUs for a local Ray: the cores, and room for one loading task beside the actors.

    Actors each hold ``cpus_per_actor`` for their whole life; if they took every logical CPU
    no loading task could ever be scheduled and the pipeline would wait forever.
    """
    cores = options.local_cpus or os.cpu_count() or 1
    return max(cores, math.ceil(options.workers * options.cpus_per_actor) + 1)


# Ray's notices that say nothing to a camloc user (our own bar replaces Ray Data's).
QUIET_LOGGERS = {
    "ray.data": logging.WARNING,
    "ray.data._internal.progress": logging.ERROR,
    "ray._private.authentication.authentication_token_setup": logging.ERROR,
}


def quiet_data_context() -> None:
    """No progress bars or per-operator logs from Ray Data: the CLI draws its own bar."""
    from ray.data import DataContext

    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    context = DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    context.verbose_stats_logs = False


# --------------------------------------------------------------------------- stage 1: load


@dataclass(frozen=True)
class Preprocessing:
    """What loading needs from the model (and nothing heavier), for ``ImageDataset``."""

    input_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]


def load_row(row: dict[str, Any], preprocessing: Preprocessing, policy: str,
             max_pixels: int) -> dict[str, Any]:
    """One file → one row: the network input, its geometry and the decoded original.

    The loading is the local runner's ``ImageDataset``, so a bad file gives the same error.
    A relative path is opened from the driver's working directory (``row["cwd"]``): Ray
    workers run elsewhere.
    """
    given, on_disk = row["path"], os.path.join(row["cwd"], row["path"])
    item = ImageDataset([Path(on_disk)], preprocessing, policy, max_pixels)[0]
    item.path = given  # records name the file as the user gave it, as the local runner does
    if item.error is not None:
        item.error = item.error.replace(on_disk, given)
    height, width = preprocessing.input_size
    if item.error is not None:
        return {"path": item.path, "stem": row["stem"], "error": item.error,
                "tensor": np.zeros((3, height, width), np.float32), "geometry": "",
                "image": b"", "image_height": 0, "image_width": 0}
    tensor, geometry, image = item.loaded()
    original = image.numpy()
    return {"path": item.path, "stem": row["stem"], "error": "",
            "tensor": tensor.numpy().astype(np.float32, copy=False),
            "geometry": json.dumps(asdict(geometry)),
            "image": original.tobytes(), "image_height": original.shape[0],
            "image_width": original.shape[1]}


def geometry_from_json(text: str) -> Geometry:
    fields: dict[str, Any] = json.loads(text)  # JSON values: lists back to tuples
    values: dict[str, Any] = {key: tuple(value) if isinstance(value, list) else value for key, value in fields.items()}
    return Geometry(**values)


def items_from_batch(batch: dict[str, np.ndarray]) -> list[Item]:
    """Rows of a numpy batch back into the local runner's ``Item``s."""
    items = []
    for i, path in enumerate(batch["path"]):
        error = str(batch["error"][i])
        if error:
            items.append(Item(i, str(path), error=error))
            continue
        shape = (int(batch["image_height"][i]), int(batch["image_width"][i]), 3)
        image = np.frombuffer(batch["image"][i], dtype=np.uint8).reshape(shape)
        items.append(Item(i, str(path), torch.from_numpy(np.asarray(batch["tensor"][i])),
                          geometry_from_json(str(batch["geometry"][i])), torch.from_numpy(image)))
    return items


# --------------------------------------------------------------------------- stage 2: explain


class ExplainBatch:
    """The actor of the ``map_batches`` stage: model loaded once, then batch after batch.

    Takes a numpy batch of loaded rows, returns one JSON record per row after writing that
    image's outputs to ``out`` (the local runner's ``finish_item``).
    """

    def __init__(self, model_ref: tuple, options: RunOptions, device: str, threads: int):
        import ray

        torch.set_num_threads(max(1, threads))
        tune_allocator()  # each worker process, as the camloc command does for itself
        model: ClassifierAdapter = ray.get(model_ref[0]).to(resolve_device(device))
        self.pipeline = Pipeline(model, options.config)
        self.options, self.out = options, Path(options.out)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        items = items_from_batch(batch)
        stems = {str(path): str(stem)
                 for path, stem in zip(batch["path"], batch["stem"], strict=True)}
        good = [item for item in items if item.error is None]
        explanations = {}
        if good:
            results = self.pipeline.explain_tensors([item.loaded().tensor for item in good],
                                                    [item.loaded().geometry for item in good],
                                                    [item.path for item in good])
            explanations = {item.index: result for item, result in zip(good, results, strict=True)}
        records = [finish_item(item, explanations.get(item.index), stems, self.out, self.options.outputs,
                               mask_rule_of(self.options, self.pipeline))
                   for item in items]
        return {"record": np.array([json.dumps(record) for record in records], dtype=object)}


# --------------------------------------------------------------------------- the job


def cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0))


def actor_resources(options: RayOptions, device: str) -> tuple[float, str]:
    """GPUs per actor and the device the actor puts the model on."""
    wants_cpu = str(device).startswith("cpu")
    gpus = options.gpus_per_actor
    if gpus is None:
        gpus = 1.0 if not wants_cpu and cluster_gpus() >= 1 else 0.0
    if gpus <= 0 and str(device).startswith("cuda"):
        raise CamlocError(f"--device {device} asked for, but the Ray cluster has no GPUs")
    # Ray shows each actor only the GPUs it was given, always numbered from cuda:0.
    return (gpus, "cuda") if gpus > 0 else (0.0, "cpu")


def build_dataset(model_ref: ObjectRef[ClassifierAdapter], rows: list[dict[str, Any]], model: ClassifierAdapter,
                  input_size: tuple[int, int], options: RunOptions, ray_options: RayOptions, device: str) -> Dataset:
    """The lazy Ray Dataset: file rows → loaded rows → records (JSON strings)."""
    import ray.data

    preprocessing = Preprocessing(input_size, tuple(model.mean), tuple(model.std))
    blocks = max(1, min(len(rows), math.ceil(len(rows) / options.batch_size)))
    gpus, actor_device = actor_resources(ray_options, device)
    return (
        ray.data.from_items(rows, override_num_blocks=blocks)
        # Ray's annotation of map's function leaves out the fn_kwargs it is called with
        .map(load_row, fn_kwargs={"preprocessing": preprocessing, "policy": options.config.policy,  # type: ignore[arg-type]
                                  "max_pixels": options.max_pixels},
             num_cpus=ray_options.load_cpus)
        .map_batches(
            ExplainBatch, batch_size=options.batch_size, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=ray_options.workers),
            fn_constructor_kwargs={"model_ref": (model_ref,), "options": options,
                                   "device": actor_device,
                                   "threads": int(ray_options.cpus_per_actor)},
            num_cpus=ray_options.cpus_per_actor, num_gpus=gpus,
        )
    )


def run(
    model: ClassifierAdapter,
    inputs: Sequence[str | os.PathLike],
    options: RunOptions,
    ray_options: RayOptions | None = None,
    device: str = "auto",
    on_start: Callable[[int], None] | None = None,
    on_image: Callable[[dict[str, Any]], None] | None = None,
) -> RunSummary:
    """Explain every image under ``inputs`` into ``options.out`` on Ray; returns the counts.

    Same contract as :func:`camloc.jobs.local.run`. ``device``: ``"auto"`` puts each actor on
    a GPU when the cluster has one, ``"cpu"`` never asks for GPUs.
    """
    ray_options = ray_options or RayOptions()
    ray = import_ray()
    started = time.perf_counter()
    pipeline = Pipeline(model, options.config)  # unknown classes, methods, layers fail here, before Ray starts
    out = check_out_dir(options.out)
    with OutputLock(out):
        plan = plan_run(inputs, options)
        summary = RunSummary(found=len(plan.paths), skipped=len(plan.paths) - len(plan.todo))
        cwd = os.getcwd()
        rows = [{"path": str(path), "stem": plan.stems[str(path)], "cwd": cwd} for path in plan.todo]
        if on_start:
            on_start(len(rows))
        if rows:
            quiet_data_context()
            owns_ray = start_ray(ray_options)
            try:
                _stream_records(ray, model, pipeline.size, rows, options, ray_options, device, out, summary,
                                on_image)
            finally:
                if owns_ray:
                    ray.shutdown()
        summary.exports = export_run(out, options)
    summary.seconds = time.perf_counter() - started
    return summary


def _stream_records(ray: ModuleType, model: ClassifierAdapter, input_size: tuple[int, int], rows: list[dict[str, Any]],
                    options: RunOptions, ray_options: RayOptions, device: str, out: Path, summary: RunSummary,
                    on_image: Callable[[dict[str, Any]], None] | None) -> None:
    on_device = model.device
    model_ref = ray.put(model.to("cpu"))  # CPU tensors unpickle on any node
    model.to(on_device)
    options = replace(options, out=out.resolve())  # actors may not share our working directory
    dataset = build_dataset(model_ref, rows, model, input_size, options, ray_options, device)
    with open(out / RESULTS_FILE, "a", encoding="utf-8") as results:
        try:
            for row in dataset.iter_rows():
                results.write(row["record"] + "\n")
                results.flush()
                record = json.loads(row["record"])
                summary.count(record)
                if on_image:
                    on_image(record)
        except ray.exceptions.RayError as error:
            raise CamlocError(f"the ray job failed: {first_line(error)}") from None
