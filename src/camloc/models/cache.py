"""camloc's on-disk cache: what was found about a model once is not found again.

The cache lives in ``$CAMLOC_CACHE``, else ``$XDG_CACHE_HOME/camloc``, else
``~/.cache/camloc``. It holds small JSON records (the head a traced forward found, how the
last stage was dilated, which runtime ``auto`` chose and why) and the files a runtime needs
(the exported ONNX graph). Every record is keyed by a digest of everything that decides it
(the network's structure and weights, input size, library versions), so a stale record is
never read: a changed model simply gets a new key. Deleting the folder is always safe.

Writes are atomic (a temporary file renamed over the target), so concurrent runs at worst
compute the same record twice. A cache that cannot be written (read-only home) is skipped.

>>> digest({"a": 1}) == digest({"a": 1}) != digest({"a": 2})
True
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

CACHE_VERSION = 1  # bump when the records' meaning changes


def cache_dir() -> Path:
    """The cache folder (not created here)."""
    configured = os.environ.get("CAMLOC_CACHE")
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "camloc"


def digest(value: Any) -> str:
    """A short stable digest of a JSON-able value."""
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def file_digest(path: str | os.PathLike) -> str:
    """Digest of a file's bytes (weights files: tens of MB hash in tens of ms)."""
    hasher = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 22), b""):
            hasher.update(block)
    return hasher.hexdigest()


def versions(*packages: str) -> dict[str, str | None]:
    """Installed versions of ``packages`` (read from their metadata, nothing imported)."""
    from importlib import metadata

    found: dict[str, str | None] = {}
    for name in packages:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def record_path(kind: str, key: str, suffix: str = ".json") -> Path:
    return cache_dir() / kind / f"{key}{suffix}"


def read_record(kind: str, key: str) -> dict[str, Any] | None:
    """The JSON record ``kind/key``, or ``None`` when absent or unreadable."""
    try:
        data = json.loads(record_path(kind, key).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("cache_version") == CACHE_VERSION else None


def write_record(kind: str, key: str, record: dict[str, Any]) -> bool:
    """Store ``record`` as ``kind/key`` atomically; ``False`` when the cache is not writable."""
    payload = json.dumps({**record, "cache_version": CACHE_VERSION}, indent=1, default=str)
    return write_bytes(record_path(kind, key), payload.encode())


def write_bytes(path: Path, data: bytes) -> bool:
    """Write ``data`` to ``path`` atomically; ``False`` when that is not possible."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.replace(temporary, path)
        return True
    except OSError:
        return False
