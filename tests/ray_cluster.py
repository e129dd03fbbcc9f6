"""A real two-node Ray cluster on this machine for the tests (head + one more node, 1 CPU
each, dashboard off, small object stores), and the hook its workers run at start."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

OBJECT_STORE_BYTES = 80_000_000
START_TIMEOUT_S = 120.0


def use_scripted_lm() -> None:
    """Ray's ``worker_process_setup_hook``: in the workers the model named ``scripted`` is
    the scripted task's LM (any other model is the real one)."""
    import scripted_task

    import cotune.lm.factory

    real = cotune.lm.factory.make_lm

    def make_lm(model: str = "scripted", base_url: str | None = None, **options):
        if model == "scripted":
            return scripted_task.make_scripted_lm(model, base_url, **options)
        return real(model, base_url, **options)

    cotune.lm.factory.make_lm = make_lm


def counting_scripted_lm(log: str):
    """The scripted task's LM, appending a line to the file ``log`` for every request that
    reaches it, in whichever process it runs (the truth about the calls actors made)."""
    import scripted_task

    class CountingLM(scripted_task.SlowScriptedLM):
        def _complete(self, request):
            with open(log, "a", encoding="utf-8") as f:
                f.write("call\n")
            return super()._complete(request)

    return CountingLM(scripted_task.scripted_answer, model="scripted")


@contextlib.contextmanager
def ray_cluster(temp_dir: Path, port: int, env: dict[str, str], *,
                node_gpus: int = 0) -> Iterator[str]:
    """Start ``ray start --head --block`` and a second ``ray start --block`` node; yield the
    address (``127.0.0.1:PORT``) once the head is up (see :func:`wait_for_nodes`); stop both
    (SIGTERM: ``ray start`` stops the processes it started) on exit.  ``node_gpus``: GPUs the
    second node declares (a logical resource: Ray places GPU tasks by it, none need exist)."""
    ray_bin = str(Path(sys.executable).with_name("ray"))
    common = ["--block", "--num-cpus=1", f"--object-store-memory={OBJECT_STORE_BYTES}",
              "--disable-usage-stats"]
    address = f"127.0.0.1:{port}"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", **env}
    processes: list[subprocess.Popen[bytes]] = []
    try:
        with (temp_dir / "head.log").open("wb") as log:
            processes.append(subprocess.Popen(
                [ray_bin, "start", "--head", f"--port={port}", "--include-dashboard=false",
                 f"--temp-dir={temp_dir}", *common],
                env=env, stdout=log, stderr=subprocess.STDOUT))
        _wait_for(lambda: (temp_dir / "ray_current_cluster").is_file(), processes, temp_dir)
        with (temp_dir / "node.log").open("wb") as log:
            processes.append(subprocess.Popen(
                [ray_bin, "start", f"--address={address}", f"--num-gpus={node_gpus}", *common],
                env=env, stdout=log, stderr=subprocess.STDOUT))
        yield address
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_for_nodes(ray, count: int) -> None:
    """Wait until the connected cluster has ``count`` live nodes."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while sum(1 for n in ray.nodes() if n["Alive"]) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the Ray cluster has no {count} live nodes after "
                               f"{START_TIMEOUT_S:.0f} s")
        time.sleep(0.5)


def _wait_for(ready, processes, temp_dir: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not ready():
        for process in processes:
            if process.poll() is not None:
                logs = "".join(p.read_text(errors="replace")[-2000:]
                               for p in sorted(temp_dir.glob("*.log")))
                raise RuntimeError(f"ray start exited with {process.returncode}:\n{logs}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the Ray cluster is not up after {START_TIMEOUT_S:.0f} s")
        time.sleep(0.5)
