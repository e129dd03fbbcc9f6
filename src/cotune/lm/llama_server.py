"""llama.cpp's own server (``llama-server``) as cotune's batched local engine.

One child process serves one GGUF model, plus any number of LoRA adapters, on 127.0.0.1:

* ``--parallel N`` slots decoded together (continuous batching), so concurrent requests from
  ``Evaluate``'s worker threads share one forward pass instead of queueing on a lock;
* every slot keeps the KV state of its last prompt, and a request goes to the idle slot whose
  prompt shares the longest prefix with its own (``--slot-prompt-similarity``): each module's
  instruction + demos are read once, not once per call;
* adapters are loaded at start with scale 0 and chosen per request (``lora: [{id, scale}]``), so
  several adapters over one base model run side by side.  An adapter added later restarts the
  server (between requests) with the longer list; ids never change.

The binary is built from the llama-cpp-python sdist's vendored source by ``scripts/setup.sh``
into ``<venv>/llama-server/bin``; ``$COTUNE_LLAMA_SERVER`` points at another one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from cotune.lm.child_process import ChildProcess
from cotune.lm.llamacpp import default_threads, whole_number_env
from cotune.lm.models import MIN_DEFAULT_N_CTX, MODELS, default_n_ctx, resolve_model_path
from cotune.lm.types import LMError

SERVER_ENV = "COTUNE_LLAMA_SERVER"
PARALLEL_ENV = "COTUNE_LLAMA_PARALLEL"
DEFAULT_PARALLEL = 4
START_TIMEOUT = 180.0
_LISTENING = re.compile(rb"listening on http://127\.0\.0\.1:(\d+)")


class LlamaServerError(LMError):
    """llama-server is missing, did not start, or died; the message carries its log tail."""


def find_llama_server() -> Path:
    """The llama-server binary: ``$COTUNE_LLAMA_SERVER``, else the one ``scripts/setup.sh``
    builds into this virtualenv, else one on ``PATH``."""
    setting = os.environ.get(SERVER_ENV, "").strip()
    if setting:
        path = Path(setting).expanduser()
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise LlamaServerError(f"${SERVER_ENV}={setting} is not an executable file")
        return path
    built = Path(sys.prefix) / "llama-server" / "bin" / "llama-server"
    if built.is_file() and os.access(built, os.X_OK):
        return built
    found = shutil.which("llama-server")
    if found:
        return Path(found)
    raise LlamaServerError(
        f"llama-server not found (looked at {built} and on PATH): run scripts/setup.sh, which "
        f"builds it from the llama-cpp-python sdist, or set ${SERVER_ENV} to a llama-server binary"
    )


def default_parallel() -> int:
    """``COTUNE_LLAMA_PARALLEL`` if set, else 4 slots."""
    return whole_number_env(PARALLEL_ENV) or DEFAULT_PARALLEL


@dataclass(frozen=True)
class EngineStats:
    """What the server did for this process's requests (from each answer's ``timings``)."""

    requests: int = 0
    prompt_tokens: int = 0
    """Prompt tokens of the requests, as sent."""
    prompt_tokens_evaluated: int = 0
    """Prompt tokens the server actually ran through the model (the rest came from a slot's
    cached prefix)."""
    prompt_tokens_cached: int = 0
    generated_tokens: int = 0
    restarts: int = 0


class _Gate:
    """At most ``limit`` requests in flight; a restart waits for them all and holds new ones."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._cond = threading.Condition()
        self._active = 0
        self._exclusive = False

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive or self._active >= self.limit:
                self._cond.wait()
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive:
                self._cond.wait()
            self._exclusive = True
            while self._active:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


class LlamaServer:
    """A supervised ``llama-server`` child process for one GGUF model.

    Args:
        model: a registered model name or a GGUF file path.
        n_ctx: context of each slot, in tokens (the server gets ``parallel * n_ctx``, split
            evenly, so a request sees the same context as in :class:`~cotune.lm.LlamaCppLM`).
            Default: the embedded engine's default context shared by the slots
            (:func:`~cotune.lm.models.default_n_ctx` / ``parallel``), at least 2048.
        parallel: slots decoded together (default: ``COTUNE_LLAMA_PARALLEL``, else 4).
        n_threads: CPU threads (default: ``COTUNE_LLAMA_THREADS``, else every usable core).
        loras: GGUF LoRA adapters to load at start (more can be added later).
        cache_ram_mib: host memory for llama-server's prompt cache (saved slot states that a
            later request with the same prefix restores); 0 turns it off, and so does any
            adapter (the cache does not tell adapters apart).
        binary: the llama-server executable (default: :func:`find_llama_server`).
        extra_args: more command-line arguments for llama-server.
        log_dir: where the server's log goes (default: a temporary directory).
    """

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        n_ctx: int | None = None,
        parallel: int | None = None,
        n_threads: int | None = None,
        loras: Sequence[str | os.PathLike[str]] = (),
        cache_ram_mib: int = 1024,
        binary: str | os.PathLike[str] | None = None,
        extra_args: Sequence[str] = (),
        log_dir: str | os.PathLike[str] | None = None,
        start_timeout: float = START_TIMEOUT,
    ) -> None:
        parallel = parallel if parallel is not None else default_parallel()
        if parallel < 1:
            raise ValueError("parallel must be >= 1")
        if n_ctx is not None and n_ctx < 16:
            raise ValueError("n_ctx must be >= 16")
        self.model_path = resolve_model_path(model)
        if n_ctx is None:  # the same memory as one embedded context, split among the slots
            n_ctx = max(MIN_DEFAULT_N_CTX, default_n_ctx(self.model_path) // parallel)
        name = os.fspath(model)
        self.model_name = name if name in MODELS else self.model_path.name
        self.n_ctx = n_ctx
        self.parallel = parallel
        self.n_threads = n_threads or default_threads()
        self.cache_ram_mib = cache_ram_mib
        self.binary = Path(binary) if binary is not None else find_llama_server()
        self.extra_args = list(extra_args)
        self.start_timeout = start_timeout
        self._log_dir = Path(log_dir) if log_dir is not None else None
        self._loras: list[Path] = []
        self._pending: list[Path] = []
        self._failed: dict[Path, str] = {}
        self._lock = threading.Lock()
        self._gate = _Gate(parallel)
        self._process: ChildProcess | None = None
        self._closed = False
        self.port = 0
        self.generation = 0
        """Counts (re)starts: a client built for an older generation has a stale port."""
        self._stats_lock = threading.Lock()
        self._stats = EngineStats()
        for path in loras:
            self._loras.append(_adapter_file(path))
        self._start()

    # -- adapters ----------------------------------------------------------------------------

    def add_adapter(self, path: str | os.PathLike[str]) -> None:
        """Load ``path`` too, at the next request (one restart for all the adapters added
        since the last one)."""
        adapter = _adapter_file(path)
        with self._lock:
            if adapter not in self._loras and adapter not in self._pending:
                self._pending.append(adapter)

    def adapter_id(self, path: str | os.PathLike[str] | None) -> int | None:
        """The server's id of an adapter (None for the base model), loading it if needed."""
        if path is None:
            return None
        adapter = Path(path).resolve()
        with self._lock:
            if adapter in self._failed:
                raise LlamaServerError(self._failed[adapter])
            if adapter in self._loras:
                return self._loras.index(adapter)
            if adapter not in self._pending:
                self._pending.append(_adapter_file(adapter))
        self._load_pending()
        with self._lock:
            if adapter in self._failed:
                raise LlamaServerError(self._failed[adapter])
            return self._loras.index(adapter)

    @property
    def adapters(self) -> list[Path]:
        with self._lock:
            return list(self._loras)

    def _load_pending(self) -> None:
        with self._gate.exclusive(), self._lock:
            if not self._pending:
                return  # another thread loaded them while we waited
            pending, self._pending = self._pending, []
            previous = list(self._loras)
            self._loras.extend(pending)
            self._stop_process()
            try:
                self._start_locked()
            except LlamaServerError as e:
                # keep serving the others: mark the new adapters failed, restart without them
                for adapter in pending:
                    self._failed[adapter] = f"LoRA adapter {adapter} could not be loaded: {e}"
                self._loras = previous
                self._start_locked()
            with self._stats_lock:
                self._stats = replace(self._stats, restarts=self._stats.restarts + 1)

    # -- requests ----------------------------------------------------------------------------

    @contextmanager
    def slot(self) -> Iterator[tuple[str, int]]:
        """Hold one of the ``parallel`` request places; yields ``(base_url, generation)``."""
        with self._gate.shared():
            if self._closed:
                raise LlamaServerError(f"llama-server for {self.model_name} was closed")
            yield self.base_url, self.generation

    def check_alive(self) -> None:
        """Raise :class:`LlamaServerError` with the log tail if the server has died."""
        process = self._process
        if process is not None and process.poll() is not None and not self._closed:
            raise LlamaServerError(
                f"llama-server ({self.model_name}) {describe_exit(process.poll())}; "
                f"its log ({process.log_path}) ends with:\n{process.log_tail()}"
            )

    def record(self, usage: dict[str, object], timings: dict[str, object]) -> None:
        """Count one answer's tokens (called by the LM with the answer's ``timings``)."""
        evaluated = _int(timings.get("prompt_n"))
        cached = _int(timings.get("cache_n"))
        prompt = _int(usage.get("prompt_tokens")) or evaluated + cached
        with self._stats_lock:
            s = self._stats
            self._stats = EngineStats(
                requests=s.requests + 1,
                prompt_tokens=s.prompt_tokens + prompt,
                prompt_tokens_evaluated=s.prompt_tokens_evaluated + evaluated,
                prompt_tokens_cached=s.prompt_tokens_cached + cached,
                generated_tokens=s.generated_tokens
                + (_int(timings.get("predicted_n")) or _int(usage.get("completion_tokens"))),
                restarts=s.restarts,
            )

    def stats(self) -> EngineStats:
        with self._stats_lock:
            return self._stats

    # -- the server's own endpoints ------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible base URL (``http://127.0.0.1:PORT/v1``)."""
        return f"http://127.0.0.1:{self.port}/v1"

    def metrics(self) -> dict[str, float]:
        """The server's Prometheus counters (``/metrics``), e.g. ``prompt_tokens_total``
        (prompt tokens it evaluated since it started), without the ``llamacpp:`` prefix."""
        text = self._get("/metrics").decode("utf-8", "replace")
        values: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                try:
                    values[name.split(":", 1)[-1]] = float(value)
                except ValueError:
                    continue
        return values

    def slots(self) -> list[dict[str, object]]:
        """The server's slots (``/slots``): each slot's id, state and cached prompt length."""
        return json.loads(self._get("/slots"))

    def _get(self, path: str) -> bytes:
        self.check_alive()
        url = f"http://127.0.0.1:{self.port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=30) as r:
                return r.read()
        except (urllib.error.URLError, OSError) as e:
            raise LlamaServerError(f"GET {url}: {e}") from e

    # -- the process ---------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def log_path(self) -> Path | None:
        return self._process.log_path if self._process is not None else None

    def command(self) -> list[str]:
        """The llama-server command line for the current adapters."""
        argv = [
            str(self.binary),
            "--model", str(self.model_path),
            "--host", "127.0.0.1",
            "--port", "0",  # the server binds a free port and logs it: no race for one
            "--ctx-size", str(self.n_ctx * self.parallel),
            "--parallel", str(self.parallel),
            "--no-kv-unified",  # each slot gets exactly n_ctx, as the embedded engine does
            "--cont-batching",
            "--flash-attn", "off",  # as the embedded engine: then both give the same answers
            "--threads", str(self.n_threads),
            "--threads-batch", str(self.n_threads),
            # idle threads sleep instead of spinning: on a shared machine a spinning thread takes
            # the core its partner needs (measured, 2 threads, load 3.5: 1.9 -> 12.3 tok/s)
            "--poll", "0",
            "--threads-http", str(max(2, self.parallel)),
            # llama-server's host-memory prompt cache does not record which adapter computed
            # a saved state, so with adapters it could hand one adapter's KV to another
            "--cache-ram", str(self.cache_ram_mib if not self._loras else 0),
            "--metrics",
            "--no-webui",
            "--no-warmup",
            "--fit", "off",
        ]  # fmt: skip
        if self._loras:
            argv += ["--lora", ",".join(str(p) for p in self._loras), "--lora-init-without-apply"]
        return argv + self.extra_args

    def _start(self) -> None:
        with self._lock:
            self._start_locked()

    def _start_locked(self) -> None:
        if self._log_dir is None:
            self._log_dir = Path(tempfile.mkdtemp(prefix="cotune-llama-server-"))
        log_path = self._log_dir / f"llama-server-{os.getpid()}-{self.generation + 1}.log"
        argv = self.command()
        process = ChildProcess(argv, log_path=log_path)
        try:
            self.port = self._wait_until_ready(process)
        except BaseException:
            process.stop(timeout=2.0)
            raise
        self._process = process
        self.generation += 1
        weakref.finalize(self, process.stop, 5.0)  # a server nobody can reach any more stops

    def _wait_until_ready(self, process: ChildProcess) -> int:
        deadline = time.monotonic() + self.start_timeout
        port = 0
        while time.monotonic() < deadline:
            status = process.poll()
            if status is not None:
                raise LlamaServerError(
                    f"llama-server {describe_exit(status)} while starting "
                    f"({' '.join(process.argv)}); its log ({process.log_path}) ends with:\n"
                    f"{process.log_tail()}"
                )
            if not port:
                try:
                    match = _LISTENING.search(process.log_path.read_bytes())
                except OSError:
                    match = None
                port = int(match.group(1)) if match else 0
            if port and _healthy(port):
                return port
            time.sleep(0.1)
        raise LlamaServerError(
            f"llama-server not ready after {self.start_timeout:.0f} s "
            f"({' '.join(process.argv)}); its log ({process.log_path}) ends with:\n"
            f"{process.log_tail()}"
        )

    def _stop_process(self) -> None:
        if self._process is not None:
            self._process.stop()
            self._process = None

    def close(self) -> None:
        """Stop the server (waits for requests in flight)."""
        with self._gate.exclusive(), self._lock:
            self._closed = True
            self._stop_process()

    def __enter__(self) -> LlamaServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"LlamaServer({self.model_name!r}, parallel={self.parallel}, n_ctx={self.n_ctx}, "
            f"adapters={len(self._loras)}, pid={self.pid}, port={self.port})"
        )


def describe_exit(status: int | None) -> str:
    """How a child process ended, in words: a signal by name, with the likely cause of a crash."""
    if status is None or status >= 0:
        return f"exited with status {status}"
    try:
        name = signal.Signals(-status).name
    except ValueError:
        return f"was killed by signal {-status}"
    if name in ("SIGSEGV", "SIGILL", "SIGBUS"):
        return (f"crashed ({name}: a llama.cpp build that does not fit this CPU, or a broken "
                "model file; scripts/setup.sh rebuilds llama-server with the project's flags)")
    return f"was killed by {name}"


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False  # 503 while the model loads, or not listening yet


def _adapter_file(path: str | os.PathLike[str]) -> Path:
    adapter = Path(path).expanduser().resolve()
    if not adapter.is_file():
        raise FileNotFoundError(f"LoRA adapter not found: {adapter}")
    return adapter


def _int(value: object) -> int:
    return int(value) if isinstance(value, (int, float)) and value > 0 else 0
