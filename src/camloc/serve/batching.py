"""Dynamic micro-batching for ``camloc serve``: requests that arrive together share one forward pass.

A request decodes and preprocesses its image on its own (in the server's thread pool), then
hands the network-size tensor to the :class:`MicroBatcher` and waits, in the event loop,
holding no thread. The batcher (a task of the event loop, alive while requests wait) takes
the oldest waiting request, collects up to ``max_batch`` requests whose forward pass is the
same (:func:`forward_key`: method, layer, input size, views, precision), runs them as one
batch through :meth:`camloc.pipeline.Pipeline.forward` in the server's thread pool (the
threads that decode and finish: no thread of its own) and gives each request its own slice
of the output. It waits for company at most ``wait`` seconds after the oldest arrived, and
only while other requests are still being decoded (announced with
:meth:`MicroBatcher.announce`): a lone request never waits. While a batch runs, new
requests queue up and form the next batch, so a busy server batches without waiting at all.

What may differ within a batch: the classes (``topk``, ``class``: each image gets its own,
:class:`RowSelection`), the resize policy (already applied to the tensor), the box
threshold and everything else the finishing step does, which each request runs on its own
with its own :class:`~camloc.pipeline.Pipeline`. With test-time scales the classes are
chosen among candidates of the first view, so there requests batch only with the same class
selection. A batch that fails is run again one request at a time: an error stays with the
request that caused it.

>>> import asyncio, torch, camloc
>>> from camloc.pipeline import ExplainConfig, Pipeline
>>> model = camloc.load_model("resnet18", weights="random")
>>> top2, top1 = Pipeline(model, ExplainConfig(topk=2)), Pipeline(model, ExplainConfig(topk=1))
>>> batcher = MicroBatcher(lambda p, batch, selection: p.forward(batch, selection), max_batch=4)
>>> async def two_requests():
...     return await asyncio.gather(batcher.run(top2, torch.zeros(3, 224, 224)),
...                                 batcher.run(top1, torch.ones(3, 224, 224)))
>>> [tuple(output.maps.shape[:2]) for output in asyncio.run(two_requests())]
[(1, 2), (1, 1)]
>>> batcher.stats.forward_passes, batcher.stats.largest_batch
(1, 2)
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Hashable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

import torch
from starlette.concurrency import run_in_threadpool

from ..images import stack_images
from ..methods import ClassSelection, MethodOutput, Selection
from ..models import ClassifierAdapter
from ..pipeline import Pipeline

DEFAULT_MAX_BATCH = 8  # requests in one forward pass
DEFAULT_BATCH_WAIT_MS = 5.0  # how long the oldest request waits for company, at most

# pipeline, batch (N, 3, h, w), classes of each image (None: the pipeline's) → output
Forward = Callable[[Pipeline, torch.Tensor, Selection | None], MethodOutput]


class BatcherClosed(RuntimeError):
    """The server is shutting down: the request was not run."""


def forward_key(pipeline: Pipeline) -> Hashable:
    """What must be equal for two requests to share a forward pass: the method (as resolved:
    ``auto`` is ``walkcam``, ``cam`` or ``gradcam``) and its layer, the network's input size, the views
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


@dataclass(eq=False)
class Job:
    """One request waiting for its forward pass."""

    pipeline: Pipeline
    tensor: torch.Tensor  # (3, h, w), normalised, at network size
    key: Hashable
    arrived: float  # the event loop's clock
    future: asyncio.Future[MethodOutput]


class Announcement:
    """A request on its way to the batcher (:meth:`MicroBatcher.announce`): while it is being
    decoded, a batch may wait for it; :meth:`run` hands its tensor over, and leaving the
    ``with`` block without running (a bad file) withdraws it."""

    def __init__(self, batcher: MicroBatcher):
        self.batcher, self.open = batcher, False

    def __enter__(self) -> Announcement:
        self.batcher._bind()
        self.batcher._coming += 1
        self.open = True
        return self

    async def run(self, pipeline: Pipeline, tensor: torch.Tensor) -> MethodOutput:
        """:meth:`MicroBatcher.run`, no longer announced once queued."""
        announced, self.open = self.open, False
        return await self.batcher.run(pipeline, tensor, announced=announced)

    def __exit__(self, *_exc: object) -> None:
        if self.open:
            self.open = False
            self.batcher._coming -= 1
            self.batcher._wake()


class MicroBatcher:
    """Collects compatible requests into one forward pass (see the module's description).

    ``forward(pipeline, batch, selection)`` runs one batch (``camloc serve``: the pipeline's
    forward under the model's lock), counted in ``stats``; ``max_batch`` requests at most in
    one pass; ``wait`` seconds at most that the oldest request waits for announced ones (0:
    run whatever is waiting as soon as the model is free); ``slot()``: entered around each
    forward pass (``camloc serve``: one of the ``workers`` slots that decoding and finishing
    take too, so the heavy steps at once stay as many as without batching). Used from one
    event loop at a time (a test client may start several, one after the other).
    """

    def __init__(self, forward: Forward, max_batch: int = DEFAULT_MAX_BATCH,
                 wait: float = DEFAULT_BATCH_WAIT_MS / 1000, stats: BatchStats | None = None,
                 slot: Callable[[], AbstractAsyncContextManager[Any]] | None = None):
        if max_batch < 1 or wait < 0:
            raise ValueError(f"max_batch must be >= 1 and wait >= 0, got {max_batch} and {wait}")
        self.forward, self.max_batch, self.wait, self.slot = forward, max_batch, wait, slot
        self.stats = stats if stats is not None else BatchStats()
        self._pending: list[Job] = []
        self._coming = 0  # announced requests not queued yet
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed: asyncio.Event | None = None  # set when a request is queued or withdrawn
        self._leader: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ the requests' side

    def announce(self) -> Announcement:
        """``with batcher.announce() as coming: ...decode...; output = await coming.run(...)``:
        a batch waits (up to ``wait``) for requests announced before they are decoded."""
        return Announcement(self)

    async def run(self, pipeline: Pipeline, tensor: torch.Tensor, announced: bool = False) -> MethodOutput:
        """The output of one preprocessed image (``(1, k, h, w)`` maps with its own ``k``
        classes), or the exception its forward pass raised. A request cancelled (client gone)
        before its batch starts is left out of it."""
        loop = self._bind()
        if announced:
            self._coming -= 1
        if self._closing:
            raise BatcherClosed("the server is shutting down")
        job = Job(pipeline, tensor, forward_key(pipeline), loop.time(), loop.create_future())
        self._pending.append(job)
        self._wake()
        if self._leader is None or self._leader.done():
            self._leader = loop.create_task(self._lead(), name="camloc-batcher")
        return await job.future

    @property
    def waiting(self) -> int:
        """Requests queued for a forward pass (not counting the batch running)."""
        return len(self._pending)

    @property
    def running(self) -> bool:
        """Whether the batcher's task is alive (it ends when no request is waiting)."""
        return self._leader is not None and not self._leader.done()

    async def close(self) -> None:
        """Stop: requests still queued fail with :class:`BatcherClosed`, the batch running
        finishes. A later :meth:`run` starts again."""
        self._closing = True
        try:
            dropped, self._pending = self._pending, []
            for job in dropped:
                if not job.future.done():
                    job.future.set_exception(BatcherClosed("the server is shutting down"))
            leader = self._leader
            if leader is not None and not leader.done() and leader.get_loop() is asyncio.get_running_loop():
                await leader
        finally:
            self._closing = False

    # ------------------------------------------------------------------ the batcher's task

    def _bind(self) -> asyncio.AbstractEventLoop:
        """The running event loop; a new one (a new test client) starts with a clean state."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._loop, self._changed, self._leader = loop, asyncio.Event(), None
            self._pending, self._coming = [], 0  # requests of a loop that is gone cannot be answered
        return loop

    def _wake(self) -> None:
        if self._changed is not None:
            self._changed.set()

    async def _lead(self) -> None:
        """Batch after batch while requests wait; ends when none does."""
        while self._pending:
            await self._wait_for_company()
            async with self.slot() if self.slot is not None else contextlib.nullcontext():
                jobs = self._take()  # after the slot: requests that came meanwhile join too
                if jobs:
                    await self._run(jobs)

    async def _wait_for_company(self) -> None:
        """While requests are announced and the oldest request's batch is not full: wait, at
        most until ``wait`` after the oldest arrived."""
        loop, changed = asyncio.get_running_loop(), self._changed
        assert changed is not None
        first = self._pending[0]
        deadline = first.arrived + self.wait
        while self._coming > 0 and sum(job.key == first.key for job in self._pending) < self.max_batch:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            changed.clear()
            try:
                await asyncio.wait_for(changed.wait(), remaining)
            except TimeoutError:
                return

    def _take(self) -> list[Job]:
        """The next batch: the oldest request and up to ``max_batch - 1`` with its forward pass
        (cancelled ones left out; may be empty)."""
        if not self._pending:
            return []
        first = self._pending[0]
        chosen = [job for job in self._pending if job.key == first.key][: self.max_batch]
        taken = {id(job) for job in chosen}
        self._pending = [job for job in self._pending if id(job) not in taken]
        return [job for job in chosen if not job.future.done()]

    async def _run(self, jobs: list[Job]) -> None:
        """One forward pass for ``jobs`` in the thread pool; if it fails, each job alone, so an
        error reaches only the request that caused it."""
        try:
            try:
                outputs = await run_in_threadpool(self._forward, jobs)
            except Exception as error:  # noqa: BLE001 - handed to the requests, never lost
                if len(jobs) == 1:
                    _settle(jobs[0], error=error)
                    return
                for job in jobs:
                    try:
                        [output] = await run_in_threadpool(self._forward, [job])
                    except Exception as alone:  # noqa: BLE001 - this request's own error
                        _settle(job, error=alone)
                    else:
                        _settle(job, output)
                return
            for job, output in zip(jobs, outputs, strict=True):
                _settle(job, output)
        except asyncio.CancelledError:  # the event loop is shutting down
            for job in jobs:
                _settle(job, error=BatcherClosed("the server is shutting down"))
            raise

    def _forward(self, jobs: list[Job]) -> list[MethodOutput]:
        """In a worker thread: the batch, each request's own classes when they differ."""
        selections = [job.pipeline.selection for job in jobs]
        same = all(selection == selections[0] for selection in selections)
        batch = stack_images([job.tensor for job in jobs])
        output = self.forward(jobs[0].pipeline, batch, None if same else RowSelection(selections))
        self.stats.record(len(jobs))
        return split_output(output, [selection.count for selection in selections])


def _settle(job: Job, output: MethodOutput | None = None, error: BaseException | None = None) -> None:
    """Answer ``job`` unless its request is gone."""
    if job.future.done():
        return
    if error is not None:
        job.future.set_exception(error)
    elif output is not None:
        job.future.set_result(output)


__all__ = ["DEFAULT_BATCH_WAIT_MS", "DEFAULT_MAX_BATCH", "Announcement", "BatchStats", "BatcherClosed", "Job",
           "MicroBatcher", "RowSelection", "forward_key", "split_output"]
