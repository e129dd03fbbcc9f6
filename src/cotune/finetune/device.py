"""Where training runs: the device, and how many CPU threads it may use."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cotune.lm.llamacpp import usable_cores


def resolve_device(device: str) -> Any:
    """``"auto"``: CUDA if present, else Apple MPS, else the CPU."""
    import torch

    if device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def idle_cores() -> int:
    """CPU cores that other work leaves idle right now, at least one.

    Linux reports the runnable threads in ``/proc/loadavg``; a few samples, minus this
    thread, say how many cores are taken.  Elsewhere: every core.
    """
    cores = usable_cores()
    samples = []
    try:
        for _ in range(5):
            samples.append(int(Path("/proc/loadavg").read_text().split()[3].split("/")[0]))
            time.sleep(0.02)
    except (OSError, IndexError, ValueError):
        return cores
    busy_elsewhere = sorted(samples)[len(samples) // 2] - 1
    return max(1, min(cores, cores - busy_elsewhere))


@contextmanager
def cpu_threads(num_threads: int | None) -> Iterator[None]:
    """Train with ``num_threads`` torch threads (default: the idle cores), then restore."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(num_threads or idle_cores())
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def release_freed_memory(device: Any) -> bool:
    """Hand the memory a finished training freed back to the system.

    The training's tensors are freed when it returns, but glibc keeps the freed heap mapped
    in the process: after a LoRA step on long prompts the process stayed gigabytes larger
    while llama.cpp served the tuned model.  ``malloc_trim`` returns it (CUDA's cache is
    emptied too).  True when glibc's heap was trimmed; elsewhere nothing is done.
    """
    if getattr(device, "type", None) == "cuda":
        import torch

        torch.cuda.empty_cache()
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return False
    trim(0)
    return True
