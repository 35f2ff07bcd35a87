"""``camloc serve``: the web page and JSON API (:mod:`camloc.serve.app`, needs the ``serve``
extra)."""

from .app import (
    DEFAULT_BATCH_WAIT_MS,
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_QUEUE,
    DEFAULT_MAX_SIDE,
    DEFAULT_MAX_UPLOAD,
    MAX_DISPLAY_PIXELS,
    MAX_MAP_PIXELS,
    MAX_TOPK,
    Explainer,
    ExplainOptions,
    create_app,
    display_size,
    serve,
)

__all__ = ["DEFAULT_BATCH_WAIT_MS", "DEFAULT_MAX_BATCH",
           "DEFAULT_MAX_PIXELS", "DEFAULT_MAX_QUEUE", "DEFAULT_MAX_SIDE", "DEFAULT_MAX_UPLOAD", "MAX_DISPLAY_PIXELS",
           "MAX_MAP_PIXELS", "MAX_TOPK", "ExplainOptions",
           "Explainer", "create_app", "display_size", "serve"]
