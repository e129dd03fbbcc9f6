"""Files that appear whole or not at all: write to a temp file beside the target, then rename.

Below every layer (it imports nothing of cotune), so the LM layer's model files, the fine-tuning
outputs, the retrieval index and the run folders all publish files one way.  A rename within a
folder is atomic, so a reader (or a crash) never sees half a file, and no temp file is left
behind on an error.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

__all__ = ["building_folder", "replacing", "write_atomic"]


def _read_umask() -> int:
    mask = os.umask(0)  # the only way to read it; done once, at import, before any threads
    os.umask(mask)
    return mask


_UMASK = _read_umask()
_FILE_MODE = 0o666 & ~_UMASK
"""What ``open()`` would give a new file: a temp file is private (0600), the result need not be."""


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A temp path beside ``path`` for the block to write; it replaces ``path`` when the block
    ends without an error, and is removed when it raises."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def write_atomic(path: Path, data: str | bytes, *, sync: bool = True) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` through a temp file and a rename; ``sync``
    flushes it to disk first (what a resume point needs).  Any ``OSError`` (a full disk) names
    ``path``."""
    path = Path(path)
    try:
        with replacing(path) as tmp:
            if isinstance(data, str):
                with open(tmp, "w", encoding="utf-8") as handle:
                    _write_and_sync(handle, data, sync)
            else:
                with open(tmp, "wb") as handle:
                    _write_and_sync(handle, data, sync)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot write {path}: {exc.strerror or exc}") from exc
    return path


def _write_and_sync(handle: IO, data: str | bytes, sync: bool = True) -> None:
    handle.write(data)
    if sync:
        handle.flush()
        os.fsync(handle.fileno())


@contextmanager
def building_folder(dest: Path, *, complete: Callable[[], bool]) -> Iterator[Path]:
    """A fresh temp folder beside ``dest`` for the block to fill; renamed to ``dest`` when the
    block ends without an error.  When another process got there first (the rename fails and
    ``complete()`` says ``dest`` is done) theirs is kept; the temp folder never stays."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        yield tmp
        try:
            os.rename(tmp, dest)
        except OSError:
            if not complete():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
