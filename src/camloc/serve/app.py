"""``camloc serve``: a web page to try camloc and a JSON API, from one FastAPI app.

The model is loaded once. Each request is decoded and rendered in Starlette's thread pool;
the model step (forward pass, maps, boxes) runs under one lock, so concurrent requests are
serialised safely (the adapter's feature hook is per call and must not interleave) and the
event loop stays free to answer other requests.

>>> import camloc
>>> from fastapi.testclient import TestClient
>>> client = TestClient(create_app(camloc.load_model()))
>>> with open("examples/images/coffee.jpg", "rb") as photo:
...     upload = {"file": ("coffee.jpg", photo, "image/jpeg")}
...     body = client.post("/api/explain", files=upload).json()
>>> body["predictions"][0]["label"], body["cams"][0]["boxes"][0]
('espresso', [77, 0, 478, 355])
"""

from __future__ import annotations

import base64
import dataclasses
import io
import threading
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import torch.nn.functional as F
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image, UnidentifiedImageError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from .. import render
from ..config import parse_threshold
from ..errors import CamlocError
from ..images import RESIZE_POLICIES, read_image
from ..methods import list_methods
from ..models import ClassifierAdapter
from ..pipeline import ExplainConfig, Explanation, Pipeline

DEFAULT_MAX_UPLOAD = 20_000_000  # bytes (20 MB)
DEFAULT_MAX_PIXELS = 40_000_000  # lower than the CLI's: a request holds k full-size maps
DEFAULT_MAX_SIDE = 1024  # returned pictures and maps are at most this many pixels a side
MAX_TOPK = 20
ACCEPTED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "GIF", "BMP", "TIFF", "WEBP", "PPM"})
ACCEPTED_MEDIA = ("image/", "application/octet-stream")
EXPLAIN_PATH = "/api/explain"
STATIC = resources.files("camloc") / "static"


class ApiError(HTTPException):
    """A user error answered as ``{"error": message}`` with a 4xx status."""


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
                                                          "(0: original size)")]


# --------------------------------------------------------------------------- the model step


class Explainer:
    """The loaded model behind a lock: ``explain(image, name, options) → Explanation``,
    through the one :class:`Pipeline` every door uses, with the server's ``config``."""

    def __init__(self, model: ClassifierAdapter, config: ExplainConfig | None = None):
        self.model = model
        self.config = config or ExplainConfig()
        Pipeline(model, self.config)  # the server's own options fail at start-up
        self.lock = threading.Lock()

    def explain(self, image: Image.Image, name: str, options: ExplainOptions) -> Explanation:
        pipeline = Pipeline(self.model, options.config(self.config))  # bad options → 400 before any work
        tensor, geometry = pipeline.preprocess(image)
        with self.lock:
            [result] = pipeline.explain_tensors([tensor], [geometry], [name])
        return result


# --------------------------------------------------------------------------- decoding uploads


def decode_upload(data: bytes, name: str, content_type: str | None, max_pixels: int) -> Image.Image:
    """Upload bytes → RGB image, refusing unsupported types and oversized images from the header."""
    if content_type and not content_type.lower().startswith(ACCEPTED_MEDIA):
        raise ApiError(415, f"{name}: unsupported type {content_type}; send a JPEG, PNG, GIF, "
                            "BMP, TIFF, WebP or PPM image")
    if not data:
        raise ApiError(400, f"{name}: empty file")
    try:
        with Image.open(io.BytesIO(data)) as probe:  # reads the header only
            image_format, (width, height) = probe.format, probe.size
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise ApiError(400, f"{name}: not an image file (unrecognised format)") from None
    if image_format not in ACCEPTED_FORMATS:
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


def display_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """``(width, height)`` scaled down (never up) so the longer side is at most ``max_side``."""
    if max_side <= 0 or max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def scaled(result: Explanation, size: tuple[int, int]) -> Explanation:
    """The explanation's maps, coverage and boxes resampled to ``size = (width, height)``."""
    if size == result.size:
        return result
    (width, height), (original_w, original_h) = size, result.size
    normalized = F.interpolate(result.normalized[None].float(), (height, width), mode="area")[0]
    coverage = None
    if result.coverage is not None:
        coverage = F.interpolate(result.coverage[None, None].float(), size=(height, width),
                                 mode="nearest")[0, 0].bool()
    sx, sy = width / original_w, height / original_h
    boxes = [[(round(x0 * sx), round(y0 * sy), round(x1 * sx), round(y1 * sy))
              for x0, y0, x1, y1 in found] for found in result.boxes]
    return dataclasses.replace(result, normalized=normalized, coverage=coverage, boxes=boxes)


def explain_response(
    image: Image.Image, result: Explanation, options: ExplainOptions, config: ExplainConfig,
    model: ClassifierAdapter,
) -> dict[str, Any]:
    """The results.jsonl record plus the picture, the overlay and each map as PNGs.

    Pictures are at display size (longer side at most ``options.max_side``); ``scale`` turns
    display pixels into the record's original pixels.
    """
    width, height = display_size(*result.size, options.max_side)
    small = scaled(result, (width, height))
    picture = image
    if (width, height) != image.size:
        picture = image.resize((width, height), Image.Resampling.LANCZOS)
    overlay = None
    if options.overlay:
        overlay = data_url(render.overlay(picture, small, 0, alpha=options.opacity,
                                          colormap=options.colormap))
    return {
        **result.to_record(),
        "display": {"width": width, "height": height, "scale": result.size[0] / width},
        "options": {"threshold": config.box_threshold(model), "colormap": options.colormap,
                    "opacity": options.opacity, "policy": config.policy, "method": result.method},
        "picture": data_url(picture, "jpeg"),
        "overlay": overlay,
        "maps": [data_url(render.map_png(normalized)) for normalized in small.normalized],
    }


# --------------------------------------------------------------------------- the app


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


def error_response(status: int, message: str) -> JSONResponse:
    """``{"error": "one line"}`` with ``status``."""
    first_line = str(message).strip().splitlines()[0] if str(message).strip() else "error"
    return JSONResponse({"error": first_line}, status_code=status)


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
        return error_response(error.status_code, message)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, error: RequestValidationError) -> JSONResponse:
        return error_response(422, validation_message(error))

    @app.exception_handler(CamlocError)
    async def camloc_error(_request: Request, error: CamlocError) -> JSONResponse:
        return error_response(400, str(error))

    @app.exception_handler(Exception)
    async def internal_error(_request: Request, error: Exception) -> JSONResponse:
        # A bug, not a user error: still one line of JSON; uvicorn logs the traceback.
        return error_response(500, f"internal error: {type(error).__name__}: {error}")


def create_app(
    model: ClassifierAdapter,
    *,
    max_upload: int = DEFAULT_MAX_UPLOAD,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    samples: Path | None = None,
    config: ExplainConfig | None = None,
) -> FastAPI:
    """The FastAPI app serving ``model``: the page at ``/``, the API under ``/api``.

    ``max_upload`` bounds the request body in bytes, ``max_pixels`` the image size (read from
    the header, before decoding). ``samples`` is a folder of photos the page offers
    (default: the bundled ones). ``config``: the server's explanation settings, which a
    request's ``topk``, ``class``, ``method``, ``policy`` and ``threshold`` override.
    """
    explainer = Explainer(model, config)
    samples_dir = Path(samples) if samples is not None else Path(str(STATIC / "samples"))
    app = FastAPI(
        title="camloc",
        version=_version(),
        summary="Class Activation Maps: where an image classifier looks, and object boxes from it.",
    )
    install_error_handlers(app, max_upload)
    app.add_middleware(UploadLimit, max_bytes=max_upload)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(str(STATIC / "index.html"), media_type="text/html")

    @app.get("/api/health")
    def health() -> dict[str, str]:
        """Liveness: the model is loaded and the server answers."""
        return {"status": "ok", "model": model.name}

    @app.get("/api/model")
    def model_info() -> dict[str, Any]:
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
            "limits": {"max_upload_bytes": max_upload, "max_pixels": max_pixels},
        }

    @app.get("/api/classes")
    def classes() -> list[str]:
        """The model's class names, in index order."""
        return model.class_names

    @app.get("/api/colormaps/{name}")
    def colormap(name: str) -> dict[str, Any]:
        """A matplotlib colormap as 256 ``[r, g, b]`` entries (the page blends with it)."""
        return {"name": name, "lut": render.colormap_lut(name).tolist()}

    @app.get("/api/samples")
    def sample_list() -> list[dict[str, str]]:
        """The sample photos the page offers."""
        return [{"name": path.stem, "url": f"/samples/{path.name}"}
                for path in sample_files(samples_dir)]

    @app.post(EXPLAIN_PATH, max_body_size=max_upload)
    async def explain_upload(
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
        if threshold is not None:
            try:
                parse_threshold(threshold)
            except ValueError as error:
                raise ApiError(422, f"threshold: {error}") from None
        if len(options.classes) > MAX_TOPK:
            raise ApiError(422, f"class: at most {MAX_TOPK} classes a request, got {len(options.classes)}")
        render.colormap_lut(colormap)  # unknown colormap → 400 before any work
        name = Path(file.filename or "upload").name
        data = await file.read()
        image = await run_in_threadpool(decode_upload, data, name, file.content_type, max_pixels)
        result = await run_in_threadpool(explainer.explain, image, name, options)
        return await run_in_threadpool(explain_response, image, result, options,
                                       options.config(explainer.config), model)

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    if samples_dir.is_dir():
        app.mount("/samples", StaticFiles(directory=str(samples_dir)), name="samples")
    return app


def sample_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))


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
) -> None:
    """Serve ``model`` with uvicorn until interrupted (binds to 127.0.0.1 by default)."""
    import uvicorn

    app = create_app(model, max_upload=max_upload, max_pixels=max_pixels, config=config)
    if on_ready:
        on_ready(f"http://{host}:{port}/")
    uvicorn.run(app, host=host, port=port, log_level="info")
