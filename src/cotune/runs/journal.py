"""A journal on disk (SQLite, WAL mode): the memory of a run that survives ``kill -9``.

Every ``put`` is its own committed transaction, so a killed run loses at most the step that was
in flight.  ``memo`` also records how many LM calls and tokens each step spent; when a resumed
run replays a step from the journal, those are charged to the active budgets and usage meters
as cache hits.  A call budget therefore stops a resumed run at exactly the point where the
uninterrupted run stopped, and the LM-call axis of the score path is the same in both.

A step during which an LM call failed for an infrastructure reason is not recorded (see
:mod:`cotune.optimize.journal`): the rerun after the fix computes it again.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cotune.lm.redact import redact
from cotune.lm.types import TokenUsage
from cotune.lm.usage import charge_replayed, track_usage
from cotune.optimize.journal import Journal

SCHEMA_VERSION = 1
_MISSING = object()

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    calls INTEGER NOT NULL DEFAULT 0,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL DEFAULT (julianday('now'))
)
"""


class JournalError(RuntimeError):
    """The journal file is unreadable: not SQLite, damaged, or of another schema version."""


class SQLiteJournal(Journal):
    """Keys to JSON values in one SQLite file; one connection per thread."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self.replayed_steps = 0
        """Steps answered from the journal by ``memo`` in this process."""
        self.replayed_calls = 0
        """LM calls those replayed steps had made when they first ran."""
        self._connect()  # errors (corrupt file, wrong version) surface at construction

    # -- Journal interface -------------------------------------------------------------------

    def get(self, key: str, default: Any = None) -> Any:
        row = self._query("SELECT value FROM entries WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def put(self, key: str, value: Any) -> None:
        self._store(key, _encode(value), TokenUsage(), 0)

    def keys(self, prefix: str = "") -> list[str]:
        rows = self._query(
            "SELECT key FROM entries WHERE substr(key, 1, ?) = ? ORDER BY key",
            (len(prefix), prefix),
        )
        return [r[0] for r in rows]

    def memo(self, key: str, compute: Callable[[], Any]) -> Any:
        row = self._query(
            "SELECT value, calls, prompt_tokens, completion_tokens FROM entries WHERE key = ?",
            (key,),
        ).fetchone()
        if row is not None:
            value, calls, prompt_tokens, completion_tokens = row
            self._replay(calls, TokenUsage(prompt_tokens, completion_tokens))
            return json.loads(value)
        with track_usage() as meter:
            text = _encode(compute())
        spent = meter.snapshot()
        if spent.failed_calls == 0:  # a result computed while the LM failed is no result
            self._store(key, text, TokenUsage(spent.prompt_tokens, spent.completion_tokens),
                        spent.calls)
        return json.loads(text)  # what a resumed run reads back, to the type

    def recorded(self, value: Any) -> Any:
        return json.loads(_encode(value))

    # -- extras ------------------------------------------------------------------------------

    def clear(self) -> None:
        self._query("DELETE FROM entries")

    def close(self) -> None:
        """Close every thread's connection (the file stays valid: each put was committed)."""
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()

    def __enter__(self) -> SQLiteJournal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ---------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        try:
            conn = sqlite3.connect(
                self.path, timeout=60.0, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")  # steps are few; make each one durable
            conn.execute("PRAGMA busy_timeout=60000")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise JournalError(
                    f"{self.path}: journal schema version {version}; this cotune reads "
                    f"{SCHEMA_VERSION}"
                )
            conn.execute(_SCHEMA)
            if version == 0:
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.DatabaseError as exc:
            raise JournalError(f"{self.path}: not a usable journal ({exc})") from exc
        with self._lock:
            self._connections.append(conn)
        self._local.conn = conn
        return conn

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        try:
            return self._connect().execute(sql, params)
        except sqlite3.DatabaseError as exc:
            raise JournalError(f"{self.path}: {exc}") from exc

    def _store(self, key: str, text: str, tokens: TokenUsage, calls: int) -> None:
        self._query(
            "INSERT OR REPLACE INTO entries "
            "(key, value, calls, prompt_tokens, completion_tokens) VALUES (?, ?, ?, ?, ?)",
            (key, text, calls, tokens.prompt_tokens, tokens.completion_tokens),
        )

    def _replay(self, calls: int, tokens: TokenUsage) -> None:
        """Charge a replayed step's LM work to the active budgets and meters, as cache hits."""
        with self._lock:
            self.replayed_steps += 1
            self.replayed_calls += calls
        charge_replayed(calls, tokens)


def _encode(value: Any) -> str:
    """The recorded text of ``value`` (JSON, secrets redacted); fails before anything is
    written."""
    return redact(json.dumps(value, ensure_ascii=False))
