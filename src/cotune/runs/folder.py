"""Run folders: everything one optimization writes, laid out so that a killed run resumes.

::

    RUN/
      config.json       what was run: task, optimizer settings, model, seed, splits, budget
      status.json       running | finished | failed | interrupted, the error, the attempt number,
                        the seconds this attempt and the earlier ones ran
      journal.sqlite    finished steps (bootstraps, evaluations, trials): the resume point
      lm_cache.sqlite   the LM answer cache, when the run keeps its own (--cache-dir RUN)
      candidates.json   every candidate: description, validation score, LM calls so far, state
      trials.json       search trials beyond the candidates (MIPRO, OPRO; GEPA: the lineage)
      program.json      the final program (load with cotune.load_program)
      result.json       scores (validation, held-out test), LM usage, wall time, budget stop
      work/             files the optimizer produces (e.g. LoRA adapters the program uses)

Every JSON file is written atomically (temp file + rename).  A lock file keeps two processes
from running in the same folder; the OS releases it when its process dies, even by kill -9.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from cotune import _files
from cotune.lm.redact import redact
from cotune.lm.types import LMError

CONFIG = "config.json"
STATUS = "status.json"
JOURNAL = "journal.sqlite"
LM_CACHE = "lm_cache.sqlite"
CANDIDATES = "candidates.json"
TRIALS = "trials.json"
PROGRAM = "program.json"
RESULT = "result.json"
LOCK = ".lock"
WORK = "work"

_RESULTS = (JOURNAL, f"{JOURNAL}-wal", f"{JOURNAL}-shm", CANDIDATES, TRIALS, PROGRAM, RESULT,
            WORK)
"""What ``--force`` discards.  The LM cache stays: its answers are keyed by request, never stale."""
_OURS = {CONFIG, STATUS, LOCK, LM_CACHE, f"{LM_CACHE}-wal", f"{LM_CACHE}-shm", *_RESULTS}

RESUME_FREE = frozenset({"cotune_version", "created", "budget", "threads", "cache",
                         "optimizer.num_threads"})
"""Config keys that may change between attempts: they cannot change a finished step's result
(a resumed run may get a bigger budget or more threads)."""

HEARTBEAT_S = 30.0
"""How often a running attempt writes its elapsed time into ``status.json``: a run killed by
``kill -9`` or a session's end still leaves its running time, to within this, for the
``earlier_s`` of the attempt that resumes it."""


class RunFolderError(Exception):
    """A run folder that is corrupt, in use, not a run folder, or made with another config."""


class RunFolder:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._status_lock = threading.Lock()
        self._attempt_started: float | None = None
        self.path = Path(path)

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def journal_path(self) -> Path:
        return self.file(JOURNAL)

    @property
    def program_path(self) -> Path:
        return self.file(PROGRAM)

    @property
    def work_path(self) -> Path:
        return self.file(WORK)

    @property
    def cache_path(self) -> Path:
        return self.file(LM_CACHE)

    def exists(self) -> bool:
        """Whether a run was started here (its config was written)."""
        return self.file(CONFIG).is_file()

    # -- JSON files --------------------------------------------------------------------------

    def read_json(self, name: str, *, required: bool = True) -> Any:
        path = self.file(name)
        if not path.is_file():
            if required:
                raise RunFolderError(f"{path} is missing: {self.path} is not a complete run folder")
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RunFolderError(f"{path} is corrupt ({exc})") from exc

    def write_json(self, name: str, data: Any) -> Path:
        return write_atomic(self.file(name), json.dumps(data, indent=2, ensure_ascii=False))

    def config(self) -> dict[str, Any]:
        if not self.exists():
            raise RunFolderError(f"{self.path} is not a cotune run folder (no {CONFIG})")
        config = self.read_json(CONFIG)
        if not isinstance(config, dict):
            raise RunFolderError(f"{self.file(CONFIG)} is corrupt (not a JSON object)")
        return config

    def status(self) -> dict[str, Any]:
        status = self.read_json(STATUS, required=False)
        return status if isinstance(status, dict) else {"state": "unknown", "attempt": 0}

    def set_status(self, state: str, **info: Any) -> None:
        with self._status_lock:
            status = {**self.status(), "state": state, "updated": _now(), "error": None,
                      "rerun_error": None, **self._elapsed(), **info}
            if status["rerun_error"] is None:
                del status["rerun_error"]  # only a finished run's failed rerun has one
            self._write_status(status)

    def total_seconds(self) -> float:
        """Seconds the run has been running, over every attempt (this one so far included)."""
        status = self.status()
        return _seconds(status.get("earlier_s")) + self._elapsed().get(
            "attempt_s", _seconds(status.get("attempt_s")))

    def _elapsed(self) -> dict[str, float]:
        if self._attempt_started is None:
            return {}
        return {"attempt_s": round(time.monotonic() - self._attempt_started, 1)}

    def _beat(self) -> None:
        """Refresh a running attempt's elapsed time (never a status that has moved on)."""
        with self._status_lock:
            status = self.status()
            if status.get("state") == "running" and status.get("pid") == os.getpid():
                self._write_status({**status, "updated": _now(), **self._elapsed()})

    def _write_status(self, status: dict[str, Any]) -> None:
        try:
            self.write_json(STATUS, status)
        except OSError:
            if not self.file(STATUS).is_file():
                raise
            # a full disk: no new file can be made, but status.json's own blocks can be reused
            overwrite_in_place(self.file(STATUS), json.dumps(status, ensure_ascii=False))

    # -- a run's life ------------------------------------------------------------------------

    @contextmanager
    def session(self, config: dict[str, Any], *, force: bool = False) -> Iterator[int]:
        """Lock the folder, check (or write) its config, mark it running; yield the attempt
        number (1 for a fresh run).  An exception escaping the block marks the run failed,
        except that a finished run stays finished (its results are still there and valid):
        the failed attempt's error is kept beside it as ``rerun_error``."""
        self._check_is_run_folder()
        self.path.mkdir(parents=True, exist_ok=True)
        with _locked(self.file(LOCK)):
            previous = self.status() if self.exists() and not force else {}
            attempt = self._start(config, force=force)
            stop = threading.Event()
            heartbeat = threading.Thread(target=self._heartbeat, args=(stop,), daemon=True,
                                         name="cotune-run-heartbeat")
            heartbeat.start()
            try:
                yield attempt
            except KeyboardInterrupt:
                self._end_badly(previous, "interrupted", "interrupted by the user")
                raise
            except BaseException as exc:
                self._end_badly(previous, "failed", error_text(exc))
                raise
            finally:
                stop.set()
                heartbeat.join()
                self._attempt_started = None

    def _heartbeat(self, stop: threading.Event) -> None:
        while not stop.wait(HEARTBEAT_S):
            # a missed beat only makes the next attempt's earlier_s a little short
            with suppress(OSError, RunFolderError):
                self._beat()

    def _end_badly(self, previous: dict[str, Any], state: str, error: str) -> None:
        """Record how the attempt ended; never hide the error that ended it."""
        try:
            if previous.get("state") == "finished" and self.file(RESULT).is_file():
                self.set_status("finished", rerun_error=f"{state}: {error}")
            else:
                self.set_status(state, error=error)
        except (OSError, RunFolderError):
            pass  # e.g. a disk too full even for status.json: the error itself still propagates

    def _start(self, config: dict[str, Any], *, force: bool) -> int:
        if self.exists():
            if force:  # whatever is there, even a corrupt config.json
                self.discard_results()
            else:
                differences = config_differences(self.config(), config)
                if differences:
                    raise RunFolderError(
                        f"{self.path} holds a run with a different configuration ("
                        + "; ".join(differences[:5])
                        + "): use another --run-dir, or --force to discard that run and start "
                        "over"
                    )
        previous = self.status() if self.exists() else {"attempt": 0}
        attempt = _attempt_number(previous) + 1
        earlier = _seconds(previous.get("earlier_s")) + _seconds(previous.get("attempt_s"))
        self.write_json(CONFIG, config)
        self._attempt_started = time.monotonic()
        self.write_json(STATUS, {"state": "running", "attempt": attempt, "pid": os.getpid(),
                                 "started": _now(), "updated": _now(), "error": None,
                                 "attempt_s": 0.0, "earlier_s": round(earlier, 1)})
        return attempt

    def in_use(self) -> bool:
        """Whether a process is running in this folder now (it holds the lock)."""
        if not self.file(LOCK).exists():
            return False
        try:
            with _locked(self.file(LOCK)):
                return False
        except RunFolderError:
            return True

    def discard_results(self) -> None:
        """Forget the journal and outputs of the run here (the LM cache is kept)."""
        for name in (*_RESULTS, STATUS):
            path = self.file(name)
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)

    def _check_is_run_folder(self) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise RunFolderError(f"{self.path} is a file, not a run folder")
        if self.path.is_dir() and not self.exists():
            foreign = [p.name for p in self.path.iterdir()
                       if p.name not in _OURS and not p.name.startswith(".")]
            if foreign:
                raise RunFolderError(
                    f"{self.path} is not empty and not a cotune run folder (it holds "
                    f"{', '.join(sorted(foreign)[:3])}); choose another --run-dir"
                )


def config_differences(saved: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``key: saved -> new`` for each setting that differs, ignoring :data:`RESUME_FREE`."""
    a, b = _flatten(saved), _flatten(new)
    return [
        f"{key}: {a.get(key, '<unset>')!r} -> {b.get(key, '<unset>')!r}"
        for key in sorted(a.keys() | b.keys())
        if a.get(key) != b.get(key) and not _resume_free(key)
    ]


def write_atomic(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temp file and a rename: never half a file, never a
    temp file left behind (a full disk is an ``OSError`` naming ``path``), never a secret
    (the text goes through :func:`~cotune.lm.redact.redact`)."""
    return _files.write_atomic(path, redact(text))


def overwrite_in_place(path: Path, text: str) -> None:
    """Rewrite an existing small file in its own blocks: works on a full disk, where a new
    file cannot be made (not atomic: for the last word on a run that is failing anyway)."""
    with open(path, "r+", encoding="utf-8") as handle:
        handle.seek(0)
        handle.write(redact(text))
        handle.truncate()
        handle.flush()
        os.fsync(handle.fileno())


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(data, dict):
        return {prefix: data}
    flat: dict[str, Any] = {}
    for key, value in data.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _resume_free(key: str) -> bool:
    return any(key == free or key.startswith(free + ".") for free in RESUME_FREE)


def _attempt_number(status: dict[str, Any]) -> int:
    attempt = status.get("attempt", 0)
    return attempt if isinstance(attempt, int) and not isinstance(attempt, bool) else 0


def _seconds(value: Any) -> float:
    """A duration read back from ``status.json`` (0 where it is missing or not a number)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0
    return float(value) if ok else 0.0


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` for the block (none where the OS offers no flock)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunFolderError(
                f"{path.parent} is in use by another cotune process; wait for it or stop it"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def error_text(exc: BaseException) -> str:
    """One line for status files and bench records: an LM's failure as the CLI says it (which
    LM, how, after how many attempts), else ``Type: message`` (a KeyError's message without
    the quotes ``str`` adds); redacted."""
    if isinstance(exc, LMError):
        return redact(exc.describe())
    message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
    return redact(f"{type(exc).__name__}: {message}")
