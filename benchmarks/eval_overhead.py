"""Framework overhead of ``Evaluate``: examples per second against an instant LM server.

A one-predictor program (``Predict("question -> answer")``) is evaluated on N examples against
``benchmarks/stub_server.py`` (an OpenAI-compatible server that answers instantly), started in a
separate process so that it does not compete with the client for the GIL.  The LM cache is off
and the progress bar hidden, so what is measured is cotune's own cost per example: adapter
format/parse, ``Predict``, the LM choke point and HTTP (urllib3; the openai SDK for https).

Rows, from the bare transport up to the full stack, so the difference between two rows is the
cost of one layer:

* ``http.client`` / ``urllib3`` / ``httpx`` — the same JSON request posted in a loop (no cotune,
  no SDK);
* ``OpenAILM.chat`` — the LM choke point plus its HTTP transport, a pre-formatted prompt;
* ``Predict`` loop — adapter format + LM + parse, one example after another, no ``Evaluate``;
* ``Evaluate`` — the full stack at 1 and 8 threads;
* ``Evaluate`` + ``ScriptedLM`` — everything but HTTP and the SDK (the framework alone).

CPU time is the client process's (``time.process_time()``, all its threads).

    python benchmarks/eval_overhead.py                      # table on stdout
    python benchmarks/eval_overhead.py --out eval.json      # also write JSON
    python benchmarks/eval_overhead.py --profile eval.prof  # cProfile the 1-thread Evaluate run
"""

from __future__ import annotations

import argparse
import cProfile
import http.client
import json
import platform
import pstats
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cotune import ChatAdapter, Example, Predict, ScriptedLM
from cotune.evaluate import Evaluate, exact_match
from cotune.lm import OpenAILM

ANSWER = "Answer: 42"
STUB_SERVER = Path(__file__).with_name("stub_server.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_stub_process(answer: str) -> tuple[str, subprocess.Popen[bytes]]:
    """The stub server in its own process; returns its base URL (``.../v1``) once it answers."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(STUB_SERVER), "--port", str(port), "--answer", answer],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 20
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"stub server exited: {process.stderr.read().decode()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/models", timeout=1):
                return url, process
        except OSError:
            if time.monotonic() > deadline:
                process.kill()
                raise RuntimeError("stub server did not start in 20 s") from None
            time.sleep(0.05)


def measure(run: Callable[[], Any], n: int, repeats: int) -> dict[str, float]:
    """Best of ``repeats`` (least disturbed by the rest of the machine) of ``n`` examples."""
    best: dict[str, float] | None = None
    for _ in range(repeats):
        wall0, cpu0 = time.perf_counter(), time.process_time()
        run()
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        row = {"wall_s": wall, "examples_per_s": n / wall, "cpu_ms_per_example": 1e3 * cpu / n}
        if best is None or row["wall_s"] < best["wall_s"]:
            best = row
    assert best is not None
    return best


def in_threads(fn: Callable[[int], Any], n: int, threads: int) -> None:
    if threads == 1:
        for i in range(n):
            fn(i)
        return
    with ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(fn, range(n), chunksize=16):
            pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", "--examples", type=int, default=2000)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    parser.add_argument("--profile", type=Path, help="cProfile the 1-thread Evaluate run here")
    args = parser.parse_args()
    n, repeats = args.examples, args.repeats

    url, server = start_stub_process(ANSWER)
    try:
        rows = run_all(url, n, args.threads, repeats, args.profile)
    finally:
        server.terminate()
        server.wait(timeout=10)

    print(
        f"\n{n} examples, best of {repeats}; Python {platform.python_version()}, "
        f"{platform.machine()}, client CPU time from time.process_time()\n"
    )
    print("| case | threads | examples/s | CPU ms / example | wall s |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['case']} | {r['threads']} | {r['examples_per_s']:,.0f} | "
            f"{r['cpu_ms_per_example']:.3f} | {r['wall_s']:.2f} |"
        )
    if args.out:
        args.out.write_text(json.dumps({"examples": n, "repeats": repeats, "rows": rows}, indent=2))


def run_all(
    url: str, n: int, thread_counts: list[int], repeats: int, profile: Path | None
) -> list[dict[str, Any]]:
    devset = [
        Example(question=f"What is {i} plus {i}?", answer="42").with_inputs("question")
        for i in range(n)
    ]
    lm = OpenAILM("stub", base_url=url, api_key="EMPTY", cache=None)
    program = Predict("question -> answer", lm=lm)
    messages = ChatAdapter().format(program.active_signature, [], devset[0].inputs())
    body = json.dumps(
        {"model": "stub", "messages": messages, "temperature": 0.0, "max_tokens": 512, "n": 1}
    ).encode()
    rows: list[dict[str, Any]] = []

    def add(case: str, threads: int, run: Callable[[], Any]) -> None:
        run()  # warm up: connections, imports, caches
        rows.append({"case": case, "threads": threads, **measure(run, n, repeats)})
        print(
            f"{case:<34} {threads:>2} threads: {rows[-1]['examples_per_s']:8,.0f} ex/s",
            file=sys.stderr,
        )

    # -- bare clients -------------------------------------------------------------------------
    host, port = urlsplit(url).hostname, urlsplit(url).port
    path = urlsplit(url).path + "/chat/completions"
    headers = {"Content-Type": "application/json"}
    conn = http.client.HTTPConnection(host, port)

    def http_client_loop() -> None:
        for _ in range(n):
            conn.request("POST", path, body, headers)
            json.loads(conn.getresponse().read())

    add("bare http.client", 1, http_client_loop)
    conn.close()

    try:
        import httpx
    except ImportError:  # newer openai SDKs depend on the renamed fork
        import httpx2 as httpx

    import urllib3

    pool = urllib3.HTTPConnectionPool(host, port, maxsize=max(thread_counts), retries=False)

    def post_urllib3(_: int) -> None:
        json.loads(pool.urlopen("POST", path, body=body, headers=headers).data)

    for threads in thread_counts:
        add("bare urllib3", threads, lambda t=threads: in_threads(post_urllib3, n, t))
    pool.close()

    with httpx.Client(limits=httpx.Limits(max_connections=64)) as client:

        def post(_: int) -> None:
            client.post(url + "/chat/completions", content=body, headers=headers).json()

        for threads in thread_counts:
            add("bare httpx", threads, lambda t=threads: in_threads(post, n, t))

    # -- cotune layers ------------------------------------------------------------------------
    try:  # the SDK's own HTTP path, for reference (OpenAILM picks a leaner one for plain http)
        sdk_lm = OpenAILM("stub", base_url=url, api_key="EMPTY", cache=None, transport="sdk")
        add("OpenAILM.chat, transport=sdk", 1, lambda: [sdk_lm.chat(messages) for _ in range(n)])
    except TypeError:  # an OpenAILM without the transport option
        pass
    for threads in thread_counts:
        add(
            "OpenAILM.chat (choke point + HTTP)",
            threads,
            lambda t=threads: in_threads(lambda _: lm.chat(messages), n, t),
        )
    add("Predict loop, no Evaluate", 1, lambda: [program(**ex.inputs()) for ex in devset])
    for threads in thread_counts:
        evaluate = Evaluate(devset, exact_match(), num_threads=threads, display_progress=False)
        add("**Evaluate + OpenAILM**", threads, lambda e=evaluate: e(program))

    scripted_lm = ScriptedLM(ANSWER)
    scripted = Predict("question -> answer", lm=scripted_lm)
    for threads in thread_counts:
        evaluate = Evaluate(devset, exact_match(), num_threads=threads, display_progress=False)
        add(
            "Evaluate + ScriptedLM (no HTTP)",
            threads,
            lambda e=evaluate: (e(scripted), scripted_lm.requests.clear()),
        )

    if profile is not None:
        evaluate = Evaluate(devset, exact_match(), num_threads=1, display_progress=False)
        profiler = cProfile.Profile()
        profiler.runcall(evaluate, program)
        profiler.dump_stats(profile)
        stats = pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime")
        stats.print_stats(25)
    return rows


if __name__ == "__main__":
    main()
