"""Persistent LM answer cache in SQLite (WAL mode): safe across threads and processes.

Location: ``$COTUNE_CACHE_DIR/lm_cache.sqlite``, default ``~/.cache/cotune``.  Set
``COTUNE_CACHE=off`` or use ``with cache_disabled():`` to bypass it globally, or pass
``cache=False`` to a single call.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    key TEXT PRIMARY KEY,
    response TEXT NOT NULL,
    created REAL NOT NULL DEFAULT (julianday('now'))
)
"""


def default_cache_dir() -> Path:
    return Path(os.environ.get("COTUNE_CACHE_DIR", Path.home() / ".cache" / "cotune"))


class LMCache:
    """Maps a request fingerprint to a JSON answer.  One SQLite connection per thread."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else default_cache_dir() / "lm_cache.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        try:
            self._connect()  # create the schema now, so that errors show up at construction
        except sqlite3.DatabaseError as exc:  # same type, but naming the file and the way out
            raise sqlite3.DatabaseError(
                f"{self.path}: not a usable LM cache ({exc}); delete the file or run with "
                "--no-cache") from exc

    def _connect(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=60000")
            conn.execute(_SCHEMA)
            self._local.conn = conn
        return conn

    def get(self, key: str) -> dict[str, Any] | None:
        row = self._connect().execute(
            "SELECT response FROM answers WHERE key = ?", (key,)
        ).fetchone()
        if row is None:
            return None
        try:
            return json.loads(row[0])
        except json.JSONDecodeError:
            return None  # a damaged entry is a miss; the fresh answer overwrites it

    def put(self, key: str, response: dict[str, Any]) -> None:
        self._connect().execute(
            "INSERT OR REPLACE INTO answers (key, response) VALUES (?, ?)",
            (key, json.dumps(response, ensure_ascii=False)),
        )

    def __len__(self) -> int:
        return self._connect().execute("SELECT COUNT(*) FROM answers").fetchone()[0]

    def clear(self) -> None:
        self._connect().execute("DELETE FROM answers")


_shared_caches: dict[Path, LMCache] = {}
_shared_lock = threading.Lock()


def shared_cache(path: str | os.PathLike[str] | None = None) -> LMCache:
    """One :class:`LMCache` object per file in this process."""
    resolved = Path(path) if path is not None else default_cache_dir() / "lm_cache.sqlite"
    with _shared_lock:
        if resolved not in _shared_caches:
            _shared_caches[resolved] = LMCache(resolved)
        return _shared_caches[resolved]


_cache_disabled: ContextVar[bool] = ContextVar("cotune_cache_disabled", default=False)


@contextmanager
def cache_disabled() -> Iterator[None]:
    """Bypass the cache (no reads, no writes) for every LM call made inside the block."""
    token = _cache_disabled.set(True)
    try:
        yield
    finally:
        _cache_disabled.reset(token)


def cache_globally_enabled() -> bool:
    if _cache_disabled.get():
        return False
    return os.environ.get("COTUNE_CACHE", "on").lower() not in {"off", "0", "false", "no"}
