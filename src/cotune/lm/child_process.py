"""Child processes that never outlive cotune (a local server such as ``llama-server``).

Three guards, so that no server is left behind however cotune ends:

* ``close()`` / ``atexit``: a normal exit stops every child (SIGTERM, then SIGKILL).
* ``PR_SET_PDEATHSIG`` (Linux): the kernel sends the child SIGKILL when its parent dies, also on
  ``kill -9`` of the parent, which runs no Python code at all.  The signal fires when the *thread*
  that forked the child ends, not the process, so every child is forked by one long-lived
  launcher thread rather than by whichever worker thread happened to need a server.
* A child is started in its own session: a Ctrl-C at the terminal reaches cotune, which then
  stops the child in order, instead of killing the server under requests still in flight.
"""

from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import os
import queue
import signal
import subprocess
import sys
import threading
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path

_PR_SET_PDEATHSIG = 1
LOG_TAIL_CHARS = 4000


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


_prctl = _load_prctl()  # looked up before any fork: the child must not load libraries


def _die_with(parent_pid: int) -> Callable[[], None]:
    """The ``preexec_fn`` of a child: SIGKILL when the parent dies, and exit now if it already
    has (it could die between the fork and the prctl)."""

    def preexec() -> None:
        if _prctl is not None:
            _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:
            os._exit(1)

    return preexec


class _Launcher:
    """One daemon thread that forks every child (see the module docstring for why)."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], subprocess.Popen[bytes]], Future]] = (
            queue.SimpleQueue()
        )
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def run(self, spawn: Callable[[], subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
        with self._lock:
            if self._thread is None or self._pid != os.getpid():  # none yet, or we were forked
                self._jobs = queue.SimpleQueue()
                self._pid = os.getpid()
                self._thread = threading.Thread(
                    target=self._serve, name="cotune-child-launcher", daemon=True
                )
                self._thread.start()
            done: Future[subprocess.Popen[bytes]] = Future()
            self._jobs.put((spawn, done))
        return done.result()

    def _serve(self) -> None:
        while True:
            spawn, done = self._jobs.get()
            try:
                done.set_result(spawn())
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                done.set_exception(e)


_launcher = _Launcher()
_live: weakref.WeakSet[ChildProcess] = weakref.WeakSet()


class ChildProcess:
    """A child process whose output goes to ``log_path``, stopped with its parent.

    Args:
        argv: the command line.
        log_path: stdout and stderr of the child, appended.
        env: extra environment variables.
    """

    def __init__(
        self, argv: Sequence[str], *, log_path: Path, env: dict[str, str] | None = None
    ) -> None:
        self.argv = list(argv)
        self.log_path = Path(log_path)
        self._owner = os.getpid()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        parent = os.getpid()
        environment = {**os.environ, **(env or {})}

        def spawn() -> subprocess.Popen[bytes]:
            with self.log_path.open("ab") as log:
                return subprocess.Popen(
                    self.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=environment,
                    start_new_session=True,
                    preexec_fn=_die_with(parent),  # noqa: PLW1509 - see the module docstring
                )

        self._process = _launcher.run(spawn)
        _live.add(self)

    @property
    def pid(self) -> int:
        return self._process.pid

    def poll(self) -> int | None:
        """The exit status, or None while it runs."""
        return self._process.poll()

    def log_tail(self, chars: int = LOG_TAIL_CHARS) -> str:
        try:
            with self.log_path.open("rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - chars))
                return f.read().decode("utf-8", "replace")
        except OSError as e:
            return f"(no log at {self.log_path}: {e})"

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; waits for the child to be gone."""
        if self._owner != os.getpid():  # a forked copy of the parent does not own the child
            return
        _live.discard(self)
        process = self._process
        if process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __repr__(self) -> str:
        return f"ChildProcess(pid={self.pid}, {Path(self.argv[0]).name})"


@atexit.register
def _stop_all() -> None:
    for child in list(_live):
        child.stop(timeout=5.0)
