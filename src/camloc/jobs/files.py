"""Files of a run: atomic writes, the results file, resuming, and the lock on ``--out``.

Every output is written to a temporary file and renamed into place, so a reader never sees
a half-written file; ``results.jsonl`` gets one line per image. Records name each input by
the path as given and by the file itself (resolved path, size, modification time), so
``--resume`` recognises a file however its path was spelled and redoes one that changed.
A run holds a lock on its output folder: a second run on the same ``--out`` is refused
(the lock dies with its process, so a crash never leaves a stale lock).

>>> import tempfile, pathlib
>>> out = pathlib.Path(tempfile.mkdtemp())
>>> with OutputLock(out):
...     write_atomic(out / "a.txt", b"hello")
>>> (out / "a.txt").read_text()
'hello'
"""

from __future__ import annotations

import errno
import io
import json
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import CamlocError

RESULTS_FILE = "results.jsonl"
LOCK_FILE = ".camloc.lock"


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
        from ..render import encode_png  # torch: only when an image is written

        data = encode_png(picture)
    write_atomic(path, data)


def save_array(array: np.ndarray, path: Path) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array)
    write_atomic(path, buffer.getvalue())


def check_out_dir(out: str | os.PathLike, option: str = "--out") -> Path:
    """Create the output folder ``out`` if needed and check it can be written, before any
    work: an existing file, an unwritable place or a pseudo file system is one
    :class:`CamlocError` naming the option."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise CamlocError(f"{option} {path}: exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(dir=path, prefix=".camloc-probe.")
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise CamlocError(f"{option} {path}: cannot write there ({error.strerror or error})") from None
    return path


class OutputLock:
    """An exclusive lock on an output folder for the life of a run (``fcntl.flock`` on
    ``.camloc.lock``; released on exit and by the kernel when the process dies)."""

    def __init__(self, out: str | os.PathLike):
        self.path = Path(out) / LOCK_FILE
        self.handle: Any = None

    def __enter__(self) -> OutputLock:
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock, as before
            return self
        self.handle = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(self.handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            self.handle.seek(0)
            owner = self.handle.read().strip()
            self.handle.close()
            self.handle = None
            if error.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                who = f" (pid {owner})" if owner else ""
                raise CamlocError(f"{self.path.parent} is in use by another camloc run{who}; wait "
                                  "for it to finish or choose another --out") from None
            raise
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(str(os.getpid()))
        self.handle.flush()
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.handle is not None:
            self.handle.close()  # closing releases the flock
            self.handle = None


def file_identity(path: str | os.PathLike) -> dict[str, Any] | None:
    """``{"path": resolved, "size": bytes, "mtime_ns": ...}`` of a file, or ``None``."""
    try:
        resolved = Path(path).resolve()
        stat = resolved.stat()
    except (OSError, RuntimeError):
        return None
    return {"path": str(resolved), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def identity_key(identity: dict[str, Any] | None) -> tuple | None:
    if not isinstance(identity, dict):
        return None
    return (identity.get("path"), identity.get("size"), identity.get("mtime_ns"))


def read_results(path: Path) -> list[dict[str, Any]]:
    """Records of an existing results.jsonl; a torn last line (interrupted run) is dropped."""
    records: list[dict[str, Any]] = []
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


def prepare_results(out: Path, resume: bool) -> set[tuple]:
    """Start results.jsonl afresh, or keep its successful records when resuming.

    Returns the identities (:func:`identity_key`) of the files already done. Failed records
    are dropped so they are retried; so is a record whose file changed since (size or
    modification time), so it is redone.
    """
    path = out / RESULTS_FILE
    kept = []
    done: set[tuple] = set()
    if resume:
        for record in read_results(path):
            if record.get("error") is not None:
                continue
            key = identity_key(record.get("file"))
            if key is None or key != identity_key(file_identity(key[0])):
                continue  # written before identities, or the file changed or went away
            kept.append(record)
            done.add(key)
    write_atomic(path, "".join(json.dumps(r) + "\n" for r in kept).encode())
    return done


def error_record(path: str, message: str) -> dict[str, Any]:
    """The results.jsonl record of an input that failed."""
    return {"image": path, "width": None, "height": None, "predictions": [], "cams": [],
            "outputs": {}, "error": message}


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
