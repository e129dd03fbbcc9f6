"""Fan an evaluation's examples out to Ray actors (optional extra ``cotune[ray]``).

``Evaluate(devset, metric, executor=RayExecutor(lm_description))`` runs each example in one of
``num_actors`` Ray actors instead of a thread of this process.  Each actor builds its own LM
once, from the LM's description (``lm.describe()``: an embedded llama.cpp replica per actor,
an OpenAI-compatible endpoint or a pool of them; or a zero-argument factory), and runs the
examples it is given under that LM with the very code the threads run, so the results are the
same: ordered by the dev set, one example's failure recorded as that example's, the LM's
failures counted apart, at temperature 0 the same predictions.

Usage is counted in the actor, per example, and added to the caller's usage meters (those of
``Evaluate`` and any ``track_usage()`` around it) when the example's result arrives.  Budgets
are the caller's: an example is started only while every active budget has calls, tokens and
seconds left, and runs under what is left of them, so a spent budget is a
:class:`~cotune.lm.BudgetExceeded` as with threads; with several examples in flight a call
budget can be overspent by at most the calls of the examples in flight.

ray is imported when the executor is first used, never by ``import cotune``.
"""

from __future__ import annotations

import itertools
import math
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from typing import Any

from cotune.lm.budget import Budget, active_budgets, use_budget
from cotune.lm.types import BudgetExceeded
from cotune.lm.usage import UsageSnapshot, add_to_active_meters

LMDescription = Mapping[str, Any] | Callable[[], Any]


class RayExecutor:
    """Runs ``Evaluate``'s examples on Ray actors (see the module docstring).

    Args:
        lm: the LM each actor builds: a ``describe()`` dict or a zero-argument factory.
        num_actors: actors started (once, on first use; kept for later evaluations).
        num_cpus: CPUs each actor declares to Ray (a llama.cpp replica: its threads).
        threads_per_actor: examples an actor runs at once (more than 1 for endpoints).
        address: the Ray cluster to connect to when this process is not connected yet
            (``"auto"``, ``"127.0.0.1:6379"``; None: Ray's default, a local one).
        lm_options: keyword arguments for the LM's constructor in the actor (cache, ...).
        start_timeout: seconds the actors may take to start and load an evaluation; past
            it (e.g. the cluster has fewer free CPUs than the actors declare) a clear error.
    """

    def __init__(
        self,
        lm: LMDescription,
        *,
        num_actors: int = 2,
        num_cpus: float = 1,
        threads_per_actor: int = 1,
        address: str | None = None,
        lm_options: Mapping[str, Any] | None = None,
        start_timeout: float = 300.0,
    ) -> None:
        if num_actors < 1 or threads_per_actor < 1:
            raise ValueError("num_actors and threads_per_actor must be >= 1")
        self.lm = lm
        self.num_actors = num_actors
        self.num_cpus = num_cpus
        self.threads_per_actor = threads_per_actor
        self.address = address
        self.lm_options = dict(lm_options or {})
        self.start_timeout = start_timeout
        self._actors: list[Any] = []
        self._jobs = itertools.count()
        self._lock = threading.Lock()  # evaluations in several threads share the actors

    def imap(self, evaluate: Any, program: Any) -> Iterator[tuple[int, Future[Any]]]:
        """``(index, finished future of its ExampleResult)`` for every example of
        ``evaluate``'s dev set, as they complete (the contract of ``imap_unordered``)."""
        ray = _ray()
        actors = self._ensure_actors(ray)
        _check_no_bound_lms(program)
        job = next(self._jobs)
        payload = ray.put((program, evaluate.devset, evaluate.metric, evaluate.failure_score))
        try:
            ray.get([a.load.remote(job, payload) for a in actors], timeout=self.start_timeout)
        except ray.exceptions.GetTimeoutError:
            raise RuntimeError(
                f"the {len(actors)} Ray actors of the evaluation did not start within "
                f"{self.start_timeout:g} s: each declares {self.num_cpus:g} CPUs, the cluster "
                f"has {ray.available_resources().get('CPU', 0):g} free") from None
        slots = len(actors) * self.threads_per_actor
        todo = iter(range(len(evaluate.devset)))
        pending: dict[Any, int] = {}
        load = dict.fromkeys(range(len(actors)), 0)
        owner: dict[Any, int] = {}
        refused: list[tuple[int, BudgetExceeded]] = []

        def submit() -> bool:
            index = next(todo, None)
            if index is None:
                return False
            try:
                limits = _limits_left()
            except BudgetExceeded as exc:
                refused.append((index, exc))
                return True
            actor = min(load, key=load.__getitem__)
            ref = actors[actor].run.remote(job, index, limits)
            pending[ref] = index
            owner[ref] = actor
            load[actor] += 1
            return True

        try:
            for _ in range(slots):
                if not submit():
                    break
            while pending or refused:
                if refused:
                    index, exc = refused.pop(0)
                    yield index, _failed(exc)
                    continue
                (ref,), _ = ray.wait(list(pending), num_returns=1)
                index = pending.pop(ref)
                load[owner.pop(ref)] -= 1
                future: Future[Any] = Future()
                try:
                    result, usage = ray.get(ref)
                except BaseException as exc:  # a fatal error in the actor: raised by Evaluate
                    future.set_exception(_cause(exc))
                else:
                    _account(usage)
                    future.set_result(result)
                yield index, future
                submit()
        finally:
            for ref in pending:
                ray.cancel(ref)
            for actor in actors:
                actor.unload.options(max_task_retries=0).remote(job)

    def nodes(self) -> list[str]:
        """The Ray node id of each actor (started if need be)."""
        ray = _ray()
        return ray.get([a.node.remote() for a in self._ensure_actors(ray)])

    def close(self) -> None:
        """Stop the actors (a later evaluation starts new ones)."""
        with self._lock:
            if self._actors:
                ray = _ray()
                for actor in self._actors:
                    ray.kill(actor)
            self._actors = []

    def _ensure_actors(self, ray: Any) -> list[Any]:
        with self._lock:
            return self._start_actors(ray)

    def _start_actors(self, ray: Any) -> list[Any]:
        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False)
        if not self._actors:
            cls = ray.remote(_EvalWorker).options(
                num_cpus=self.num_cpus, max_concurrency=self.threads_per_actor,
                max_restarts=1, max_task_retries=1)
            self._actors = [cls.remote(self.lm, self.lm_options)
                            for _ in range(self.num_actors)]
        return self._actors


class _EvalWorker:
    """A Ray actor: one LM, the examples of the current evaluation."""

    def __init__(self, lm: LMDescription, lm_options: Mapping[str, Any]) -> None:
        from cotune.lm.factory import lm_from_description

        self.lm = lm_from_description(lm, **lm_options)
        self.jobs: dict[int, Callable[[int], Any]] = {}
        """The runner of each evaluation loaded (several may run at once)."""

    def node(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def load(self, job: int, payload: tuple[Any, ...]) -> None:
        from cotune.evaluate.evaluate import Evaluate

        program, devset, metric, failure_score = payload
        evaluate = Evaluate(devset, metric, num_threads=1, display_progress=False,
                            failure_score=failure_score)
        self.jobs[job] = evaluate._runner(program)

    def unload(self, job: int) -> None:
        self.jobs.pop(job, None)

    def run(self, job: int, index: int, limits: dict[str, float | None] | None
            ) -> tuple[Any, UsageSnapshot]:
        from cotune.core.runtime import context
        from cotune.lm.usage import track_usage

        run_one = self.jobs.get(job)
        if run_one is None:  # a restarted actor lost it: the caller's error, not an example's
            raise RuntimeError(f"evaluation {job} is not loaded in this actor (restarted?)")
        with context(lm=self.lm), track_usage() as meter:
            if limits is None:
                result = run_one(index)
            else:
                with use_budget(Budget(**limits)):  # type: ignore[arg-type]
                    result = run_one(index)
        return result, meter.snapshot()


def _ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ImportError("Ray fan-out needs ray: pip install 'cotune[ray]'") from exc
    return ray


def _limits_left() -> dict[str, float | None] | None:
    """What is left of the caller's budgets (the tightest of each), or None without any;
    :class:`BudgetExceeded` when one is spent."""
    budgets = active_budgets()
    if not budgets:
        return None
    calls: list[int] = []
    tokens: list[int] = []
    seconds: list[float] = []
    for b in budgets:
        if b.exhausted:
            b.reserve_call()  # raises the budget's own BudgetExceeded
        if b.max_calls is not None:
            calls.append(b.max_calls - b.calls)
        if b.max_tokens is not None:
            tokens.append(b.max_tokens - b.tokens)
        if b.max_seconds is not None:
            seconds.append(b.max_seconds - b.elapsed)
    return {"max_calls": min(calls) if calls else None,
            "max_tokens": min(tokens) if tokens else None,
            "max_seconds": math.floor(min(seconds) * 1000) / 1000 if seconds else None}


def _account(usage: UsageSnapshot) -> None:
    add_to_active_meters(usage)
    for b in active_budgets():
        b.charge(usage.calls, usage.total_tokens)


def _failed(exc: BaseException) -> Future[Any]:
    future: Future[Any] = Future()
    future.set_exception(exc)
    return future


def _cause(exc: BaseException) -> BaseException:
    """The actor's own exception out of Ray's wrapper (a BudgetExceeded stays one)."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


def _check_no_bound_lms(program: Any) -> None:
    named = getattr(program, "named_predictors", None)
    for name, predictor in named() if callable(named) else ():
        if getattr(predictor, "lm", None) is not None:
            raise ValueError(
                f"predictor {name!r} has its own LM bound; a Ray evaluation builds each actor's "
                "LM from the executor's LM description, so unbind it (predictor.lm = None) or "
                "evaluate with threads")
