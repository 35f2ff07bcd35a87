"""``camloc serve``: a web page to try camloc and a JSON API, from one FastAPI app.

The model is loaded once. An explain request decodes and preprocesses its image, waits for
the model's forward pass, then finishes (maps, boxes) and renders its answer, in
Starlette's thread pool; at most ``workers`` of these steps run at a time (a batch's
forward pass counts as one). Requests that wait for the model together share one forward
pass (:mod:`camloc.serve.batching`: up to ``max_batch`` of them; a batch waits at most
``batch_wait_ms`` for requests still being decoded); ``max_batch=1`` runs each request
alone, from upload to answer. The forward pass runs under one lock (the adapter's feature
hook is per call and must not interleave) and the event loop stays free to answer other
requests. At most ``workers`` requests are at work at once (``workers + 2 * max_batch``
when batching: one batch in the model, the next one forming), at most ``max_queue`` wait
for their turn, and the rest get 503 with ``Retry-After``. What one request may hold is
bounded: the image by ``max_pixels``, the returned pictures and maps by
:data:`MAX_DISPLAY_PIXELS` and :data:`MAX_MAP_PIXELS` (maps are computed at display size,
never at full size; boxes at original resolution a band of rows at a time).

>>> import camloc
>>> from fastapi.testclient import TestClient
>>> client = TestClient(create_app(camloc.load_model()), base_url="http://localhost")
>>> with open("examples/images/coffee.jpg", "rb") as photo:
...     upload = {"file": ("coffee.jpg", photo, "image/jpeg")}
...     body = client.post("/api/explain", files=upload).json()
>>> body["predictions"][0]["label"], body["cams"][0]["boxes"][0]
('espresso', [104, 27, 489, 341])
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import html
import io
import math
import threading
import time
import warnings
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from fastapi import BackgroundTasks, FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import render
from ..allocator import release_memory
from ..config import parse_threshold
from ..errors import CamlocError
from ..images import RESIZE_POLICIES, Geometry, claimed_size, read_image
from ..methods import MethodOutput, Selection, list_methods
from ..models import ClassifierAdapter
from ..pipeline import ExplainConfig, Explanation, Pipeline
from .batching import DEFAULT_BATCH_WAIT_MS, DEFAULT_MAX_BATCH, BatcherClosed, BatchStats, MicroBatcher

DEFAULT_MAX_UPLOAD = 20_000_000  # bytes (20 MB)
DEFAULT_MAX_PIXELS = 40_000_000  # lower than the CLI's: a request holds k full-size maps
DEFAULT_MAX_SIDE = 1024  # returned pictures and maps are at most this many pixels a side
MAX_TOPK = 20
MAX_DISPLAY_PIXELS = 2048 * 2048  # a returned picture or map, whatever max_side (0 included) asks
MAX_MAP_PIXELS = MAX_TOPK * DEFAULT_MAX_SIDE**2  # all maps of one answer together (21 MP)
DEFAULT_WORKERS = 2  # explain requests at work at once (decode, model step, render)
DEFAULT_MAX_QUEUE = 64  # explain requests waiting for a worker; beyond: 503 + Retry-After
RELEASE_AFTER_S = 1.0  # idle this long, freed memory goes back to the kernel
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1", "[::1]")
WILDCARD_BINDS = ("0.0.0.0", "::", "[::]", "")
# The page is the app's own HTML, script and stylesheet; pictures come as data: URLs.
CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
                           "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
                           "form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
}
ACCEPTED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "GIF", "BMP", "TIFF", "WEBP", "PPM"})
ACCEPTED_MEDIA = ("image/", "application/octet-stream")
EXPLAIN_PATH = "/api/explain"
STATIC = resources.files("camloc") / "static"


class ApiError(HTTPException):
    """A user error answered as ``{"error": message}`` with a 4xx status."""


class ErrorBody(BaseModel):
    """Every error answer: one line saying what was wrong."""

    error: str


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error answers a route gives (``{"error": "..."}``)."""
    meaning = {400: "not an image, unknown class, colormap, method or policy", 413: "upload or image too large",
               415: "not an accepted image type", 422: "a form field missing or out of range",
               503: "too many requests waiting for the model (see Retry-After)"}
    return {status: {"model": ErrorBody, "description": meaning[status]} for status in statuses}


# --------------------------------------------------------------------------- options


@dataclass(frozen=True)
class ExplainOptions:
    """What one ``POST /api/explain`` asks for: the request's part of the explanation
    (applied over the server's :class:`ExplainConfig`) and how the answer is drawn."""

    topk: int = 1
    classes: tuple[str, ...] = ()
    method: str | None = None  # None: the server's
    policy: str | None = None
    threshold: float | str | None = None  # None: the server's rule (the model's, else camloc's default)
    colormap: str = render.DEFAULT_COLORMAP
    opacity: float = render.DEFAULT_ALPHA
    max_side: int = DEFAULT_MAX_SIDE
    overlay: bool = True

    def config(self, base: ExplainConfig) -> ExplainConfig:
        """The server's config with this request's choices."""
        changes: dict[str, Any] = {"topk": self.topk, "rank": None, "classes": self.classes}
        for name in ("method", "policy", "threshold"):
            if getattr(self, name) is not None:
                changes[name] = getattr(self, name)
        return base.replace(**changes)


# The form fields of POST /api/explain.
ImageUpload = Annotated[UploadFile, File(description="the image (JPEG, PNG, WebP, TIFF...)")]
TopK = Annotated[int, Form(ge=1, le=MAX_TOPK, description="explain the k most likely classes")]
Classes = Annotated[list[str] | None, Form(
    alias="class", description="explain this class (name or index) instead; repeatable")]
Method = Annotated[str | None, Form(description="auto or a registered method name (default: the server's)")]
Policy = Annotated[str | None, Form(description="resize policy: squash, center-crop or pad (default: the server's)")]
Threshold = Annotated[str | None, Form(description="box threshold: a fraction of the map's range in [0, 1], or "
                                       "otsu / otsu2 / mean (default: the server's rule)")]
Colormap = Annotated[str, Form(description="matplotlib colormap of the overlay")]
Opacity = Annotated[float, Form(ge=0, le=1, description="map opacity in the overlay")]
WithOverlay = Annotated[bool, Form(description="include the rendered overlay PNG (the page "
                                              "blends its own and sends false)")]
MaxSide = Annotated[int, Form(ge=0, le=8192, description="longest side of returned pictures "
                                                          "(0: original size); each at most "
                                                          f"{MAX_DISPLAY_PIXELS} pixels, all maps "
                                                          f"together at most {MAX_MAP_PIXELS}")]


# --------------------------------------------------------------------------- the model step


@dataclass
class Prepared:
    """A request ready for the model: its pipeline, the network's input, and the picture
    already at display size (the full-size image is not kept while the request waits)."""

    pipeline: Pipeline
    tensor: torch.Tensor  # (3, h, w) at network size
    geometry: Geometry
    picture: Image.Image  # at display size
    name: str


class Explainer:
    """The loaded model behind a lock: ``explain(image, name, options) → Explanation``,
    through the one :class:`Pipeline` every door uses, with the server's ``config``.

    With ``max_batch > 1`` a :class:`~camloc.serve.batching.MicroBatcher` runs the forward
    passes of concurrent requests together (:meth:`prepare`, then the batcher, then
    :meth:`finish`); :meth:`explain` runs one request alone. ``stats`` counts the forward
    passes.
    """

    def __init__(self, model: ClassifierAdapter, config: ExplainConfig | None = None,
                 max_batch: int = 1, batch_wait_ms: float = DEFAULT_BATCH_WAIT_MS,
                 slot: Callable[[], AbstractAsyncContextManager[Any]] | None = None):
        if max_batch < 1 or batch_wait_ms < 0:
            raise ValueError(f"max_batch must be >= 1 and batch_wait_ms >= 0, got {max_batch} and {batch_wait_ms}")
        self.model = model
        self.config = config or ExplainConfig()
        Pipeline(model, self.config)  # the server's own options fail at start-up
        self.lock = threading.Lock()
        self.stats = BatchStats()
        self.max_batch, self.batch_wait_ms = max_batch, batch_wait_ms
        self.batcher = (MicroBatcher(self.forward, max_batch, batch_wait_ms / 1000, stats=self.stats, slot=slot)
                        if max_batch > 1 else None)

    def pipeline(self, options: ExplainOptions) -> Pipeline:
        """The request's pipeline: the server's config with its options (bad ones → 400)."""
        return Pipeline(self.model, options.config(self.config))

    def forward(self, pipeline: Pipeline, batch: torch.Tensor, selection: Selection | None = None) -> MethodOutput:
        """One forward pass of ``batch`` under the model's lock."""
        with self.lock:
            return pipeline.forward(batch, selection)

    def explain(self, image: Image.Image, name: str, options: ExplainOptions,
                size: tuple[int, int] | None = None) -> Explanation:
        """``size = (width, height)``: the maps at that size (boxes still in original pixels),
        never at full size; ``None``: at the image's size."""
        pipeline = self.pipeline(options)  # bad options → 400 before any work
        tensor, geometry = pipeline.preprocess(image)
        output = self.forward(pipeline, tensor[None])
        self.stats.record(1)
        sizes = None if size is None else [(size[1], size[0])]
        [result] = pipeline.finish(output, [geometry], [name], sizes)  # outside the lock: the model is free
        return result

    def prepare(self, image: Image.Image, name: str, options: ExplainOptions) -> Prepared:
        """Before the model: the pipeline (bad options → 400), the preprocessed tensor and
        the picture at display size (:func:`request_display_size`)."""
        pipeline = self.pipeline(options)
        tensor, geometry = pipeline.preprocess(image)
        size = request_display_size(image.width, image.height, options)
        picture = image if size == image.size else image.resize(size, Image.Resampling.LANCZOS)
        return Prepared(pipeline, tensor, geometry, picture, name)

    def finish(self, prepared: Prepared, output: MethodOutput) -> Explanation:
        """After the model: the request's maps at display size and its boxes, with its own
        classes and box rule."""
        width, height = prepared.picture.size
        [result] = prepared.pipeline.finish(output, [prepared.geometry], [prepared.name], [(height, width)])
        return result

    async def close(self) -> None:
        """Stop the batcher: the batch running finishes, requests still queued get 503."""
        if self.batcher is not None:
            await self.batcher.close()


# --------------------------------------------------------------------------- decoding uploads


def decode_upload(data: bytes, name: str, content_type: str | None, max_pixels: int) -> Image.Image:
    """Upload bytes → RGB image, refusing unsupported types and oversized images from the header."""
    if content_type and not content_type.lower().startswith(ACCEPTED_MEDIA):
        raise ApiError(415, f"{name}: unsupported type {content_type}; send a JPEG, PNG, GIF, "
                            "BMP, TIFF, WebP or PPM image")
    if not data:
        raise ApiError(400, f"{name}: empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as probe:  # reads the header only
                image_format, (width, height) = probe.format, probe.size
    except Image.DecompressionBombError:  # over Pillow's limit: refused without its size
        image_format, (width, height) = None, claimed_size(io.BytesIO(data)) or (max_pixels + 1, 1)
    except Exception:  # noqa: BLE001 - whatever a header parser raises on bad bytes
        raise ApiError(400, f"{name}: not an image file (unrecognised format)") from None
    if image_format is not None and image_format not in ACCEPTED_FORMATS:
        raise ApiError(415, f"{name}: unsupported image type {image_format}; send a JPEG, PNG, "
                            "GIF, BMP, TIFF, WebP or PPM image")
    if width * height > max_pixels:
        raise ApiError(413, f"{name}: {width}x{height} is {width * height / 1e6:.1f} megapixels, "
                            f"over the limit of {max_pixels / 1e6:.1f}")
    return read_image(io.BytesIO(data), name, max_pixels)


# --------------------------------------------------------------------------- the response


def data_url(picture: Image.Image, kind: str = "png") -> str:
    """A picture as a ``data:image/...;base64,`` URL."""
    if kind == "jpeg":
        buffer = io.BytesIO()
        picture.save(buffer, "JPEG", quality=90)
        data = buffer.getvalue()
    else:
        data = render.encode_png(picture)
    return f"data:image/{kind};base64,{base64.b64encode(data).decode('ascii')}"


def display_size(width: int, height: int, max_side: int,
                 max_pixels: int = MAX_DISPLAY_PIXELS) -> tuple[int, int]:
    """``(width, height)`` scaled down (never up) so the longer side is at most ``max_side``
    (``0``: no limit) and the area at most ``max_pixels``.

    >>> display_size(6000, 4000, 1024), display_size(6000, 6000, 0), display_size(1, 20000, 1024)
    ((1024, 683), (2048, 2048), (1, 1024))
    """
    scale = 1.0
    if max_side > 0 and max(width, height) > max_side:
        scale = max_side / max(width, height)
    if width * height * scale * scale > max_pixels:
        scale = math.sqrt(max_pixels / (width * height))
    if scale >= 1.0:
        return width, height
    size = max(1, round(width * scale)), max(1, round(height * scale))
    while size[0] * size[1] > max_pixels:  # rounding up can overshoot by a row
        size = max(1, size[0] - (size[0] >= size[1])), max(1, size[1] - (size[1] > size[0]))
    return size


def request_display_size(width: int, height: int, options: ExplainOptions) -> tuple[int, int]:
    """The display size of a request's pictures: :func:`display_size` with the maps of all its
    classes within :data:`MAX_MAP_PIXELS` together."""
    maps = max(options.topk, len(options.classes), 1)
    return display_size(width, height, options.max_side, min(MAX_DISPLAY_PIXELS, MAX_MAP_PIXELS // maps))


def display_boxes(result: Explanation, size: tuple[int, int]) -> list[list[tuple[int, int, int, int]]]:
    """The explanation's boxes (original pixels) in the pixels of a picture of ``size = (width, height)``."""
    (width, height), (original_w, original_h) = size, result.size
    sx, sy = width / original_w, height / original_h
    return [[(round(x0 * sx), round(y0 * sy), round(x1 * sx), round(y1 * sy))
             for x0, y0, x1, y1 in found] for found in result.boxes]


def explain_response(
    image: Image.Image, result: Explanation, options: ExplainOptions, config: ExplainConfig,
    model: ClassifierAdapter,
) -> dict[str, Any]:
    """The results.jsonl record plus the picture, the overlay and each map as PNGs.

    Pictures are at display size (:func:`request_display_size`), the size ``result``'s maps
    were computed at; ``scale_x`` and ``scale_y`` turn display pixels into the record's
    original pixels (``scale``: the same along the longer side). ``levels``: the level
    each map's boxes were cut at under the box rule (Otsu's split differs from map to map),
    where the page's threshold slider starts.
    """
    rule = config.box_threshold(model, result.method)
    width, height = request_display_size(*result.size, options)
    if tuple(result.normalized.shape[-2:]) != (height, width):  # computed at another size: resample
        normalized = F.interpolate(result.normalized[None].float(), (height, width), mode="area")[0]
        coverage = None if result.coverage is None else F.interpolate(
            result.coverage[None, None].float(), (height, width), mode="nearest")[0, 0].bool()
        result = dataclasses.replace(result, normalized=normalized, coverage=coverage)
    small = dataclasses.replace(result, boxes=display_boxes(result, (width, height)))
    original_w, original_h = result.size
    picture = image
    if (width, height) != image.size:
        picture = image.resize((width, height), Image.Resampling.LANCZOS)
    overlay = None
    if options.overlay:
        overlay = data_url(render.overlay(picture, small, 0, alpha=options.opacity,
                                          colormap=options.colormap))
    return {
        **result.to_record(),
        "display": {"width": width, "height": height,
                    "scale": max(original_w, original_h) / max(width, height),
                    "scale_x": original_w / width, "scale_y": original_h / height},
        "levels": [round(level, 2) for level in result.levels],
        "options": {"threshold": rule, "colormap": options.colormap,
                    "opacity": options.opacity, "policy": config.policy, "method": result.method},
        "picture": data_url(picture, "jpeg"),
        "overlay": overlay,
        "maps": [data_url(render.map_png(normalized)) for normalized in small.normalized],
    }


# --------------------------------------------------------------------------- the app


class SecurityHeaders:
    """ASGI middleware: :data:`SECURITY_HEADERS` on every HTTP response (a Content-Security-Policy
    that allows only the app's own scripts and styles, no framing, no sniffing, no referrer)."""

    def __init__(self, app: ASGIApp, headers: dict[str, str] = SECURITY_HEADERS):
        self.app = app
        self.headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", ())}
                message = {**message, "headers": [*message.get("headers", ()),
                                                  *(h for h in self.headers if h[0] not in present)]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class Admission:
    """At most ``at_work`` explain requests at work (default ``workers``), at most
    ``max_queue`` waiting for a turn; within a turn, at most ``workers`` heavy steps at once,
    each in a :meth:`phase` (decoding, a batch's forward pass, finishing and rendering: the
    steps that hold an image, a batch or maps, and the CPU).

    ``async with admission.turn():`` waits (in the event loop, holding no thread) or raises
    :class:`ApiError` 503 with a ``Retry-After`` estimated from recent requests when the
    queue is full. Once the server has been idle for ``release_after`` seconds (no request at
    work or waiting since the last answer was sent, see :meth:`release_if_idle`), freed memory
    goes back to the kernel (:func:`camloc.allocator.release_memory`), so a large request does
    not leave the process larger, while a steady stream of requests does not pay for giving
    memory back and faulting it in again between one request and the next.
    """

    def __init__(self, workers: int = DEFAULT_WORKERS, max_queue: int = DEFAULT_MAX_QUEUE,
                 at_work: int | None = None, release_after: float = RELEASE_AFTER_S):
        at_work = workers if at_work is None else at_work
        if workers < 1 or max_queue < 0 or at_work < workers:
            raise ValueError(f"workers must be >= 1, max_queue >= 0 and at_work >= workers, got "
                             f"{workers}, {max_queue} and {at_work}")
        self.workers, self.max_queue, self.at_work = workers, max_queue, at_work
        self.release_after = release_after
        self.releases = 0  # times memory was given back (GET /api/stats)
        self._release: asyncio.TimerHandle | None = None
        self.waiting = self.active = 0
        self.seconds = 1.0  # running mean of a request's time at work
        self._semaphores: tuple[asyncio.Semaphore, asyncio.Semaphore] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _limits(self) -> tuple[asyncio.Semaphore, asyncio.Semaphore]:
        """``(turns, phases)`` of the running event loop (a test client may start several)."""
        loop = asyncio.get_running_loop()
        if self._semaphores is None or self._loop is not loop:
            self._semaphores = asyncio.Semaphore(self.at_work), asyncio.Semaphore(self.workers)
            self._loop = loop
        return self._semaphores

    def _slots(self) -> asyncio.Semaphore:
        return self._limits()[0]

    def retry_after(self) -> int:
        """Seconds until the queue has likely moved on (at least 1)."""
        return max(1, math.ceil((self.waiting + self.active) * self.seconds / self.at_work))

    @asynccontextmanager
    async def phase(self) -> AsyncIterator[None]:
        """Within a turn: one of the ``workers`` heavy steps at a time (FIFO)."""
        async with self._limits()[1]:
            yield

    @asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        slots = self._slots()
        if self.waiting >= self.max_queue and (slots.locked() or self.waiting):
            raise ApiError(503, f"server busy: {self.waiting} requests already waiting for the model; "
                                f"retry in {self.retry_after()} s",
                           headers={"Retry-After": str(self.retry_after())})
        if self._release is not None:  # not idle any more: keep the memory for this request
            self._release.cancel()
            self._release = None
        self.waiting += 1
        try:
            await slots.acquire()
        finally:
            self.waiting -= 1
        self.active += 1
        started = time.monotonic()
        try:
            yield
        finally:
            self.active -= 1
            slots.release()
            self.seconds = 0.8 * self.seconds + 0.2 * (time.monotonic() - started)
            self._schedule_release()  # a request that failed sends no answer, see release_if_idle

    @property
    def idle(self) -> bool:
        return self.active == 0 and self.waiting == 0

    async def release_if_idle(self) -> None:
        """After an answer is sent (its JSON, megabytes of base64, is built after the turn):
        when no other request is at work or waiting, give freed memory back to the kernel
        ``release_after`` seconds from now, unless a request comes first."""
        self._schedule_release()

    def _schedule_release(self) -> None:
        if not self.idle:
            return
        if self._release is not None:
            self._release.cancel()
        loop = asyncio.get_running_loop()
        self._release = loop.call_later(self.release_after, self._release_now, loop)

    def _release_now(self, loop: asyncio.AbstractEventLoop) -> None:
        self._release = None
        if self.idle:
            self.releases += 1
            loop.run_in_executor(None, release_memory)


class UploadLimit:
    """ASGI middleware: a declared ``Content-Length`` over the limit gets 413 before any read.

    Bodies without a length (chunked) are counted by the route's ``max_body_size`` as they
    arrive, so neither path ever buffers more than the limit.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, path: str = EXPLAIN_PATH):
        self.app, self.max_bytes, self.path = app, max_bytes, path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == self.path:
            declared = dict(scope["headers"]).get(b"content-length", b"").decode()
            if declared.isdigit() and int(declared) > self.max_bytes:
                response = error_response(413, upload_limit_message(self.max_bytes, int(declared)))
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def upload_limit_message(max_bytes: int, size: int | None = None) -> str:
    got = f" ({size / 1e6:.3g} MB)" if size is not None else ""
    return f"upload too large{got}: the limit is {max_bytes / 1e6:.3g} MB"


def error_response(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """``{"error": "one line"}`` with ``status``."""
    first_line = str(message).strip().splitlines()[0] if str(message).strip() else "error"
    return JSONResponse({"error": first_line}, status_code=status, headers=headers)


def validation_message(error: RequestValidationError) -> str:
    """FastAPI's list of validation problems → one line, e.g. ``threshold: must be <= 1``."""
    parts = []
    for problem in error.errors():
        where = ".".join(str(p) for p in problem.get("loc", ()) if p not in ("body", "query"))
        message = problem.get("msg", "invalid")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI, max_upload: int) -> None:
    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, error: HTTPException) -> JSONResponse:
        message = str(error.detail)
        if error.status_code == 413 and message == "Content Too Large":
            message = upload_limit_message(max_upload)
        return error_response(error.status_code, message, error.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, error: RequestValidationError) -> JSONResponse:
        return error_response(422, validation_message(error))

    @app.exception_handler(CamlocError)
    async def camloc_error(_request: Request, error: CamlocError) -> JSONResponse:
        return error_response(400, str(error))

    @app.exception_handler(Exception)
    async def internal_error(_request: Request, error: Exception) -> JSONResponse:
        # A bug, not a user error: still one line of JSON; uvicorn logs the traceback. This
        # handler answers outside the app's middleware: it adds the security headers itself.
        return error_response(500, f"internal error: {type(error).__name__}: {error}", SECURITY_HEADERS)


def create_app(
    model: ClassifierAdapter,
    *,
    max_upload: int = DEFAULT_MAX_UPLOAD,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    samples: Path | None = None,
    config: ExplainConfig | None = None,
    allowed_hosts: Sequence[str] | None = None,
    max_queue: int = DEFAULT_MAX_QUEUE,
    workers: int = DEFAULT_WORKERS,
    max_batch: int = DEFAULT_MAX_BATCH,
    batch_wait_ms: float = DEFAULT_BATCH_WAIT_MS,
) -> FastAPI:
    """The FastAPI app serving ``model``: the page at ``/``, the API under ``/api``.

    ``max_upload`` bounds the request body in bytes, ``max_pixels`` the image size (read from
    the header, before decoding). ``samples`` is a folder of photos the page offers
    (default: the bundled ones). ``config``: the server's explanation settings, which a
    request's ``topk``, ``class``, ``method``, ``policy`` and ``threshold`` override.
    ``allowed_hosts``: the ``Host`` headers answered (default :data:`LOCAL_HOSTS`; ``"*"``
    any, ``"*.example.com"`` a domain's subdomains), others get 400. ``workers`` explain
    requests decode or render at once; up to ``max_batch`` requests share a forward pass,
    collected for at most ``batch_wait_ms`` (``max_batch=1``: each alone, ``workers``
    requests at work in all); ``max_queue`` more may wait; beyond, 503 with ``Retry-After``.
    """
    at_work = workers + 2 * max_batch if max_batch > 1 else workers
    admission = Admission(workers, max_queue, at_work)
    # decoding, a batch's forward pass and finishing share the workers' slots
    explainer = Explainer(model, config, max_batch, batch_wait_ms, slot=admission.phase)
    samples_dir = Path(samples) if samples is not None else Path(str(STATIC / "samples"))

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        await explainer.close()  # no batch outlives the server

    app = FastAPI(
        lifespan=lifespan,
        title="camloc",
        version=_version(),
        summary="Class Activation Maps: where an image classifier looks, and object boxes from it.",
        docs_url=None,  # FastAPI's Swagger UI and ReDoc load scripts and fonts from public CDNs
        redoc_url=None,
    )
    app.state.explainer, app.state.admission = explainer, admission
    install_error_handlers(app, max_upload)
    app.add_middleware(UploadLimit, max_bytes=max_upload)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts or LOCAL_HOSTS), www_redirect=False)
    app.add_middleware(SecurityHeaders)  # added last: outermost, on every answer of the app

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(str(STATIC / "index.html"), media_type="text/html")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse(api_docs_page(app.openapi()))

    @app.get("/api/health")
    async def health() -> dict[str, str]:
        """Liveness: the model is loaded and the server answers (in the event loop, never
        behind explain requests)."""
        return {"status": "ok", "model": model.name}

    @app.get("/api/model")
    async def model_info() -> dict[str, Any]:
        """The served model: name, number of classes, input size, preprocessing, methods."""
        return {
            "name": model.name,
            "source": model.source,
            "num_classes": model.num_classes,
            "input_size": list(model.input_size),
            "mean": list(model.mean),
            "std": list(model.std),
            "feature_layer": model.feature_layer,
            "exact_cam": model.head_error is None,
            "methods": ["auto", *list_methods()],
            "policies": list(RESIZE_POLICIES),
            "limits": {"max_upload_bytes": max_upload, "max_pixels": max_pixels,
                       "max_display_pixels": MAX_DISPLAY_PIXELS, "max_map_pixels": MAX_MAP_PIXELS,
                       "max_topk": MAX_TOPK, "workers": workers, "max_queue": max_queue,
                       "max_batch": max_batch, "batch_wait_ms": batch_wait_ms},
        }

    @app.get("/api/stats")
    async def stats() -> dict[str, Any]:
        """Load counters: explain requests at work and waiting for a turn, forward passes of
        the model and the images they held (``mean_batch``, ``largest_batch``), times freed
        memory went back to the kernel after a pause (``memory_releases``)."""
        return {"active": admission.active, "waiting": admission.waiting, "at_work": admission.at_work,
                "waiting_for_model": explainer.batcher.waiting if explainer.batcher else 0,
                "memory_releases": admission.releases,
                **explainer.stats.to_dict()}

    @app.get("/api/classes")
    async def classes() -> list[str]:
        """The model's class names, in index order."""
        return model.class_names

    @app.get("/api/colormaps/{name}", responses=error_responses(400, 422))
    def colormap(name: str) -> dict[str, Any]:
        """A matplotlib colormap as 256 ``[r, g, b]`` entries (the page blends with it)."""
        return {"name": name, "lut": render.colormap_lut(name).tolist()}

    @app.get("/api/samples")
    def sample_list() -> list[dict[str, str]]:
        """The sample photos the page offers."""
        return [{"name": path.stem, "url": f"/samples/{path.name}"}
                for path in sample_files(samples_dir)]

    @app.post(EXPLAIN_PATH, max_body_size=max_upload, responses=error_responses(400, 413, 415, 422, 503))
    async def explain_upload(
        background: BackgroundTasks,
        file: ImageUpload,
        topk: TopK = 1,
        class_: Classes = None,
        method: Method = None,
        policy: Policy = None,
        threshold: Threshold = None,
        colormap: Colormap = render.DEFAULT_COLORMAP,
        opacity: Opacity = render.DEFAULT_ALPHA,
        max_side: MaxSide = DEFAULT_MAX_SIDE,
        overlay: WithOverlay = True,
    ) -> dict[str, Any]:
        """Explain one image: the results.jsonl record, plus picture, overlay and maps as PNGs."""
        options = ExplainOptions(topk=topk, classes=tuple(c for c in class_ or () if c.strip()),
                                 method=method, policy=policy, threshold=threshold,
                                 colormap=colormap, opacity=opacity, max_side=max_side,
                                 overlay=overlay)
        if len(options.classes) > MAX_TOPK:
            raise ApiError(422, f"class: at most {MAX_TOPK} classes a request, got {len(options.classes)}")
        if threshold is not None:
            try:
                parse_threshold(threshold)
            except ValueError as error:  # out of range or not a rule: a form value, like topk=0
                raise ApiError(422, f"threshold: {error}") from None
        render.colormap_lut(colormap)  # unknown colormap → 400 before any work
        name = Path(file.filename or "upload").name
        background.add_task(admission.release_if_idle)  # runs once the answer is sent
        async with admission.turn():  # the upload waits spooled (on disk over 1 MB), not in memory
            if explainer.batcher is None:  # each request alone, from upload to answer
                data = await file.read()
                image = await run_in_threadpool(decode_upload, data, name, file.content_type, max_pixels)
                del data
                size = request_display_size(image.width, image.height, options)
                result = await run_in_threadpool(explainer.explain, image, name, options, size)
                return await run_in_threadpool(explain_response, image, result, options,
                                               options.config(explainer.config), model)
            try:
                with explainer.batcher.announce() as coming:  # a batch forming may wait for it
                    async with admission.phase():  # a bad file is refused here, before any batch
                        data = await file.read()
                        prepared = await run_in_threadpool(prepare_upload, explainer, data, name,
                                                           file.content_type, max_pixels, options)
                        del data
                    output = await coming.run(prepared.pipeline, prepared.tensor)
            except BatcherClosed as closed:
                raise ApiError(503, str(closed), headers={"Retry-After": "5"}) from None
            async with admission.phase():
                return await run_in_threadpool(finish_response, explainer, prepared, output, options, model)

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    if samples_dir.is_dir():
        app.mount("/samples", StaticFiles(directory=str(samples_dir)), name="samples")
    return app


def prepare_upload(explainer: Explainer, data: bytes, name: str, content_type: str | None, max_pixels: int,
                   options: ExplainOptions) -> Prepared:
    """Upload bytes → a request ready for the model (:func:`decode_upload`, then
    :meth:`Explainer.prepare`; the full-size image is dropped once shrunk to display size)."""
    return explainer.prepare(decode_upload(data, name, content_type, max_pixels), name, options)


def finish_response(explainer: Explainer, prepared: Prepared, output: MethodOutput, options: ExplainOptions,
                    model: ClassifierAdapter) -> dict[str, Any]:
    """The model's output for one request → its answer (:func:`explain_response`)."""
    result = explainer.finish(prepared, output)
    return explain_response(prepared.picture, result, options, prepared.pipeline.config, model)


def api_docs_page(schema: dict[str, Any]) -> str:
    """``GET /docs``: the endpoints and form fields of the OpenAPI schema as plain HTML (no
    script, no CDN; the machine-readable schema is ``/openapi.json``)."""
    escape = html.escape
    rows = []
    for path, operations in schema.get("paths", {}).items():
        for verb, operation in operations.items():
            fields = ""
            content = operation.get("requestBody", {}).get("content", {})
            for body in content.values():
                ref = body.get("schema", {}).get("$ref", "")
                component = schema.get("components", {}).get("schemas", {}).get(ref.rsplit("/", 1)[-1], {})
                items = [f"<li><code>{escape(n)}</code>: {escape(str(f.get('description', '')))}</li>"
                         for n, f in component.get("properties", {}).items()]
                fields = f"<ul>{''.join(items)}</ul>" if items else ""
            summary = escape(operation.get("description") or operation.get("summary") or "")
            rows.append(f"<tr><td><code>{escape(verb.upper())} {escape(path)}</code></td>"
                        f"<td>{summary}{fields}</td></tr>")
    info = schema.get("info", {})
    return ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{escape(info.get('title', 'API'))} API</title>"
            "<link rel=\"stylesheet\" href=\"/static/style.css\"></head><body><main><section>"
            f"<h1>{escape(info.get('title', ''))} {escape(info.get('version', ''))} API</h1>"
            "<p>The OpenAPI schema: <a href=\"/openapi.json\">/openapi.json</a> (load it into any "
            "OpenAPI viewer). The page: <a href=\"/\">/</a>.</p>"
            f"<table>{''.join(rows)}</table></section></main></body></html>")


def sample_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))


def default_allowed_hosts(host: str) -> list[str]:
    """:data:`LOCAL_HOSTS`, plus the address the server binds to when it is a specific one.

    >>> default_allowed_hosts("127.0.0.1"), default_allowed_hosts("0.0.0.0")[-1], default_allowed_hosts("10.0.0.5")[-1]
    (['localhost', '127.0.0.1', '::1', '[::1]'], '[::1]', '10.0.0.5')
    """
    hosts = list(LOCAL_HOSTS)
    bound = host.strip().lower()
    if bound not in WILDCARD_BINDS and bound not in hosts:
        hosts.append(bound)
        if ":" in bound and not bound.startswith("["):  # an IPv6 address: as a Host header writes it
            hosts.append(f"[{bound}]")
    return hosts


def _version() -> str:
    from .. import __version__

    return __version__


def serve(
    model: ClassifierAdapter,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    max_upload: int = DEFAULT_MAX_UPLOAD,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    config: ExplainConfig | None = None,
    on_ready: Callable[[str], None] | None = None,
    allowed_hosts: Sequence[str] | None = None,
    max_queue: int = DEFAULT_MAX_QUEUE,
    max_batch: int = DEFAULT_MAX_BATCH,
    batch_wait_ms: float = DEFAULT_BATCH_WAIT_MS,
) -> None:
    """Serve ``model`` with uvicorn until interrupted (binds to 127.0.0.1 by default).

    ``allowed_hosts`` (default: :func:`default_allowed_hosts` of ``host``) are the ``Host``
    headers answered; ``max_batch`` and ``batch_wait_ms``: see :func:`create_app`."""
    import uvicorn

    app = create_app(model, max_upload=max_upload, max_pixels=max_pixels, config=config,
                     allowed_hosts=allowed_hosts or default_allowed_hosts(host), max_queue=max_queue,
                     max_batch=max_batch, batch_wait_ms=batch_wait_ms)
    if on_ready:
        on_ready(f"http://{host}:{port}/")
    uvicorn.run(app, host=host, port=port, log_level="info")
