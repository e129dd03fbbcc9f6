"""Persistent LM answer cache in SQLite (WAL mode): safe across threads and processes.

Location: ``$COTUNE_CACHE_DIR/lm_cache.sqlite``, default ``~/.cache/cotune``.  Set
``COTUNE_CACHE=off`` or use ``with cache_disabled():`` to bypass it globally, or pass
``cache=False`` to a single call.

A cache file that cannot be used (not SQLite, damaged, unwritable, locked for a minute) is an
:class:`LMCacheError` naming the file: an infrastructure failure like an unreachable endpoint,
never a silent miss (a damaged *entry* is a miss; the fresh answer replaces it).
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

from cotune.lm.types import LMError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    key TEXT PRIMARY KEY,
    response TEXT NOT NULL,
    created REAL NOT NULL DEFAULT (julianday('now'))
)
"""


def default_cache_dir() -> Path:
    return Path(os.environ.get("COTUNE_CACHE_DIR", Path.home() / ".cache" / "cotune"))


class LMCacheError(LMError):
    """The LM cache file cannot be used: not SQLite, damaged, unwritable or locked."""


class LMCache:
    """Maps a request fingerprint to a JSON answer.  One SQLite connection per thread."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else default_cache_dir() / "lm_cache.sqlite"
        self._local = threading.local()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise self._unusable(exc) from exc
        self._connect()  # create the schema now, so that errors show up at construction

    def _connect(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute("PRAGMA busy_timeout=60000")
                conn.execute(_SCHEMA)
            except sqlite3.Error as exc:
                raise self._unusable(exc) from exc
            self._local.conn = conn
        return conn

    def _execute(self, sql: str, params: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        try:
            return self._connect().execute(sql, params)
        except sqlite3.Error as exc:
            raise self._unusable(exc) from exc

    def _unusable(self, exc: Exception) -> LMCacheError:
        return LMCacheError(
            f"the LM cache {self.path} is not usable ({type(exc).__name__}: {exc}); move it "
            "away, or use another cache (--cache-dir) or none (--no-cache)"
        )

    def get(self, key: str) -> dict[str, Any] | None:
        row = self._execute("SELECT response FROM answers WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        try:
            return json.loads(row[0])
        except json.JSONDecodeError:
            return None  # a damaged entry is a miss; the fresh answer overwrites it

    def put(self, key: str, response: dict[str, Any]) -> None:
        self._execute(
            "INSERT OR REPLACE INTO answers (key, response) VALUES (?, ?)",
            (key, json.dumps(response, ensure_ascii=False)),
        )

    def __len__(self) -> int:
        return self._execute("SELECT COUNT(*) FROM answers").fetchone()[0]

    def clear(self) -> None:
        self._execute("DELETE FROM answers")


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
