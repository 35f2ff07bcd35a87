"""Dynamic micro-batching for ``camloc serve``: requests that arrive together share one forward pass.

A request decodes and preprocesses its image on its own (in the server's thread pool), then
hands the network-size tensor to the :class:`MicroBatcher` and waits. The batcher's one
thread takes the oldest waiting request, collects up to ``max_batch`` requests whose forward
pass is the same (:func:`forward_key`: method, layer, input size, views, precision), runs
them as one batch through :meth:`camloc.pipeline.Pipeline.forward` and gives each request
its own slice of the output. It waits for company at most ``wait`` seconds after the oldest
arrived, and only while other requests are still being decoded (announced with
:meth:`MicroBatcher.announce`): a lone request never waits. While a batch runs, new
requests queue up and form the next batch, so a busy server batches without waiting at all.

What may differ within a batch: the classes (``topk``, ``class``: each image gets its own,
:class:`RowSelection`), the resize policy (already applied to the tensor), the box
threshold and everything else the finishing step does, which each request runs on its own
with its own :class:`~camloc.pipeline.Pipeline`. With test-time scales the classes are
chosen among candidates of the first view, so there requests batch only with the same class
selection. A batch that fails is run again one request at a time: an error stays with the
request that caused it.

>>> import torch, camloc
>>> from camloc.pipeline import ExplainConfig, Pipeline
>>> model = camloc.load_model("resnet18", weights="random")
>>> pipeline = Pipeline(model, ExplainConfig(topk=2))
>>> batcher = MicroBatcher(lambda p, batch, selection: p.forward(batch, selection), max_batch=4)
>>> output = batcher.submit(pipeline, torch.zeros(3, 224, 224)).result()
>>> tuple(output.maps.shape[:2]), batcher.stats.forward_passes
((1, 2), 1)
>>> batcher.close()
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from ..methods import ClassSelection, MethodOutput, Selection
from ..models import ClassifierAdapter
from ..pipeline import Pipeline

DEFAULT_MAX_BATCH = 8  # requests in one forward pass
DEFAULT_BATCH_WAIT_MS = 5.0  # how long the oldest request waits for company, at most
IDLE_SECONDS = 30.0  # the batcher's thread ends after this long without work (restarts on demand)

# pipeline, batch (N, 3, h, w), classes of each image (None: the pipeline's) → output
Forward = Callable[[Pipeline, torch.Tensor, Selection | None], MethodOutput]


class BatcherClosed(RuntimeError):
    """The server is shutting down: the request was not run."""


def forward_key(pipeline: Pipeline) -> Hashable:
    """What must be equal for two requests to share a forward pass: the method (as resolved:
    ``auto`` is ``cam`` or ``gradcam``) and its layer, the network's input size, the views
    and the precision; with several scales also the classes (:mod:`camloc.methods.views`
    picks them among the first view's candidates, per batch)."""
    config = pipeline.config
    key: tuple[Hashable, ...] = (pipeline.method.name, config.layer, pipeline.size, config.flip,
                                 config.scales, config.amp)
    if config.scales != (1.0,):
        key += (pipeline.selection,)
    return key


class RowSelection:
    """Each image of a batch with its own classes: row ``i`` as ``selections[i]`` picks them
    from its own logits, padded to the widest selection by repeating its last class (the
    padding is sliced off again, :func:`split_output`)."""

    def __init__(self, selections: Sequence[ClassSelection]):
        if not selections:
            raise ValueError("a RowSelection needs at least one selection")
        self.selections = list(selections)
        self.width = max(selection.count for selection in self.selections)

    def resolve(self, model: ClassifierAdapter) -> list[int] | None:
        """Never one fixed list for the whole batch."""
        return None

    def indices(self, logits: torch.Tensor, model: ClassifierAdapter) -> torch.Tensor:
        """``(N, width)`` class indices, row by row."""
        if logits.shape[0] != len(self.selections):
            raise ValueError(f"{len(self.selections)} selections for a batch of {logits.shape[0]}")
        rows = []
        for row, selection in enumerate(self.selections):
            chosen = selection.indices(logits[row : row + 1], model)
            missing = self.width - chosen.shape[1]
            if missing:
                chosen = torch.cat([chosen, chosen[:, -1:].expand(-1, missing)], dim=1)
            rows.append(chosen)
        return torch.cat(rows)


def split_output(output: MethodOutput, counts: Sequence[int]) -> list[MethodOutput]:
    """A batch's output → one output per image, each with its own ``counts[i]`` classes (own
    storage: a request's answer keeps no other request's maps alive)."""
    return [MethodOutput(output.logits[row : row + 1].clone(), output.classes[row : row + 1, :count].clone(),
                         output.maps[row : row + 1, :count].clone(), output.method)
            for row, count in enumerate(counts)]


@dataclass
class BatchStats:
    """Counters of the forward passes: how many, how many images, the largest batch."""

    forward_passes: int = 0
    images: int = 0
    largest_batch: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def record(self, size: int) -> None:
        with self._lock:
            self.forward_passes += 1
            self.images += size
            self.largest_batch = max(self.largest_batch, size)

    def to_dict(self) -> dict[str, float]:
        with self._lock:
            mean = self.images / self.forward_passes if self.forward_passes else 0.0
            return {"forward_passes": self.forward_passes, "images": self.images,
                    "mean_batch": round(mean, 3), "largest_batch": self.largest_batch}


class Announcement:
    """A request on its way to the batcher (:meth:`MicroBatcher.announce`): while it is being
    decoded, a batch may wait for it; :meth:`submit` hands its tensor over, and leaving the
    ``with`` block without submitting (a bad file) withdraws it."""

    def __init__(self, batcher: MicroBatcher):
        self.batcher, self.open = batcher, False

    def __enter__(self) -> Announcement:
        with self.batcher._condition:
            self.batcher._coming += 1
            self.open = True
        return self

    def submit(self, pipeline: Pipeline, tensor: torch.Tensor) -> Future[MethodOutput]:
        """:meth:`MicroBatcher.submit`, no longer announced (one step: no batch misses it)."""
        future = self.batcher.submit(pipeline, tensor, announced=self.open)
        self.open = False
        return future

    def __exit__(self, *_exc: object) -> None:
        with self.batcher._condition:
            if self.open:
                self.batcher._coming -= 1
                self.open = False
                self.batcher._condition.notify_all()


@dataclass(eq=False)
class Job:
    """One request waiting for its forward pass."""

    pipeline: Pipeline
    tensor: torch.Tensor  # (3, h, w), normalised, at network size
    key: Hashable
    arrived: float
    future: Future[MethodOutput] = field(default_factory=Future)


class MicroBatcher:
    """Collects compatible requests into one forward pass (see the module's description).

    ``forward(pipeline, batch, selection)`` runs one batch (``camloc serve``: the pipeline's
    forward under the model's lock), counted in ``stats``; ``max_batch`` requests at most in one pass;
    ``wait`` seconds at most that the oldest request waits for announced ones (0: run
    whatever is waiting as soon as the model is free). The thread starts with the first
    request and ends after ``idle`` seconds without any, or at :meth:`close`.
    """

    def __init__(self, forward: Forward, max_batch: int = DEFAULT_MAX_BATCH,
                 wait: float = DEFAULT_BATCH_WAIT_MS / 1000, idle: float = IDLE_SECONDS,
                 stats: BatchStats | None = None):
        if max_batch < 1 or wait < 0 or idle <= 0:
            raise ValueError(f"max_batch must be >= 1, wait >= 0 and idle > 0, got {max_batch}, {wait}, {idle}")
        self.forward, self.max_batch, self.wait, self.idle = forward, max_batch, wait, idle
        self.stats = stats if stats is not None else BatchStats()
        self._pending: list[Job] = []
        self._condition = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closing = False
        self._coming = 0  # announced requests not submitted yet

    # ------------------------------------------------------------------ the requests' side

    def announce(self) -> Announcement:
        """``with batcher.announce() as coming: ...; future = coming.submit(pipeline, tensor)``:
        batches wait (up to ``wait``) for requests announced before they are decoded."""
        return Announcement(self)

    def submit(self, pipeline: Pipeline, tensor: torch.Tensor, announced: bool = False) -> Future[MethodOutput]:
        """Queue one preprocessed image; the future gets its output (``(1, k, h, w)`` maps with
        its own ``k`` classes) or the exception its forward pass raised."""
        job = Job(pipeline, tensor, forward_key(pipeline), time.monotonic())
        with self._condition:
            if announced:
                self._coming -= 1
            if self._closing:
                raise BatcherClosed("the server is shutting down")
            self._pending.append(job)
            if self._thread is None:
                self._start()
            self._condition.notify()
        return job.future

    async def run(self, pipeline: Pipeline, tensor: torch.Tensor) -> MethodOutput:
        """:meth:`submit` from the event loop: waits without holding a thread; a request
        cancelled (client gone) before its batch starts is left out of it."""
        return await asyncio.wrap_future(self.submit(pipeline, tensor))

    @property
    def waiting(self) -> int:
        """Requests queued for a forward pass (not counting the batch running)."""
        with self._condition:
            return len(self._pending)

    @property
    def running(self) -> bool:
        """Whether the batcher's thread is alive."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def close(self, timeout: float | None = 60.0) -> None:
        """Stop: the batch running finishes, requests still queued fail with
        :class:`BatcherClosed`, the thread is joined. A later :meth:`submit` starts again."""
        with self._condition:
            self._closing = True
            dropped, self._pending = self._pending, []
            thread = self._thread
            self._condition.notify_all()
        for job in dropped:
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(BatcherClosed("the server is shutting down"))
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        with self._condition:
            self._closing = False

    # ------------------------------------------------------------------ the batcher's thread

    def _work(self) -> None:
        try:
            while (jobs := self._next_batch()) is not None:
                self._run(jobs)
        finally:
            with self._condition:
                if self._thread is threading.current_thread():  # ended by an unexpected error
                    self._thread = None
                    if self._pending and not self._closing:  # nobody is left waiting in vain
                        self._start()

    def _start(self) -> None:
        """A new thread for the batcher (called holding the condition's lock)."""
        self._thread = threading.Thread(target=self._work, name="camloc-batcher", daemon=True)
        self._thread.start()

    def _next_batch(self) -> list[Job] | None:
        """The next batch (cancelled requests left out; may be empty), or ``None`` to stop."""
        with self._condition:
            while not self._pending:
                if self._closing or (not self._condition.wait(self.idle) and not self._pending):
                    self._thread = None
                    return None
            first = self._pending[0]
            deadline = first.arrived + self.wait
            while not self._closing and self._coming > 0:  # others are on their way: wait a little
                remaining = deadline - time.monotonic()
                if remaining <= 0 or sum(job.key == first.key for job in self._pending) >= self.max_batch:
                    break
                self._condition.wait(remaining)
            if self._closing:
                return None
            chosen = [job for job in self._pending if job.key == first.key][: self.max_batch]
            taken = {id(job) for job in chosen}
            self._pending = [job for job in self._pending if id(job) not in taken]
        return [job for job in chosen if job.future.set_running_or_notify_cancel()]

    def _run(self, jobs: list[Job]) -> None:
        """One forward pass for ``jobs``; if it fails, each job alone, so an error reaches only
        the request that caused it."""
        if not jobs:
            return
        try:
            outputs = self._forward(jobs)
        except Exception as error:  # noqa: BLE001 - handed to the requests, never lost
            if len(jobs) == 1:
                jobs[0].future.set_exception(error)
                return
            for job in jobs:
                try:
                    [output] = self._forward([job])
                except Exception as alone:  # noqa: BLE001 - this request's own error
                    job.future.set_exception(alone)
                else:
                    job.future.set_result(output)
            return
        for job, output in zip(jobs, outputs, strict=True):
            job.future.set_result(output)

    def _forward(self, jobs: list[Job]) -> list[MethodOutput]:
        selections = [job.pipeline.selection for job in jobs]
        same = all(selection == selections[0] for selection in selections)
        batch = torch.stack([job.tensor for job in jobs])
        output = self.forward(jobs[0].pipeline, batch, None if same else RowSelection(selections))
        self.stats.record(len(jobs))
        return split_output(output, [selection.count for selection in selections])


__all__ = ["DEFAULT_BATCH_WAIT_MS", "DEFAULT_MAX_BATCH", "Announcement", "BatchStats", "BatcherClosed", "Job",
           "MicroBatcher", "RowSelection", "forward_key", "split_output"]
