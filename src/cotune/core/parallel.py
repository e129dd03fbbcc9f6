"""A thread pool whose workers inherit the caller's context (LM, budgets, usage, traces)."""

from __future__ import annotations

import contextvars
import queue
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def imap_unordered(
    fn: Callable[[T], R], items: Iterable[T], num_threads: int
) -> Iterator[tuple[int, Future[R]]]:
    """Run ``fn`` over ``items``; yield ``(index, finished future)`` as each one completes.

    At most ``num_threads`` items are in flight, so a consumer that stops early (error
    threshold, budget) leaves little work behind.  With one thread everything runs inline.
    """
    if num_threads < 1:
        raise ValueError("num_threads must be >= 1")
    if num_threads == 1:
        for index, item in enumerate(items):
            future: Future[R] = Future()
            try:
                future.set_result(fn(item))
            except BaseException as exc:  # delivered to the consumer through the future
                future.set_exception(exc)
            yield index, future
        return

    iterator = enumerate(items)
    finished: queue.SimpleQueue[Future[R]] = queue.SimpleQueue()
    with ThreadPoolExecutor(max_workers=num_threads, thread_name_prefix="cotune") as pool:
        pending: dict[Future[R], int] = {}

        def submit_next() -> bool:
            try:
                index, item = next(iterator)
            except StopIteration:
                return False
            ctx = contextvars.copy_context()
            future = pool.submit(ctx.run, fn, item)
            pending[future] = index
            # a done-callback queue costs O(1) per item, unlike wait(FIRST_COMPLETED)
            future.add_done_callback(finished.put)
            return True

        for _ in range(num_threads):
            if not submit_next():
                break
        try:
            while pending:
                future = finished.get()
                yield pending.pop(future), future
                submit_next()
        finally:
            for future in pending:
                future.cancel()
