"""Fan examples out to Ray actors (optional extra ``cotune[ray]``): an evaluation's, and a
bootstrap's.

``Evaluate(devset, metric, executor=RayExecutor(lm_description))`` runs each example in one of
``num_actors`` Ray actors instead of a thread of this process, and so does bootstrapping
(:func:`~cotune.optimize.collect_successful_traces` with ``executor=``; an optimizer's
``executor`` attribute sends both its evaluations and its bootstraps there).  Each actor builds
its own LM once, from the LM's description (``lm.describe()``: an embedded llama.cpp replica
per actor, an OpenAI-compatible endpoint or a pool of them; or a zero-argument factory), and
runs the examples it is given under that LM with the very code the threads run, so the
results are the same: ordered by the dev set, one example's failure recorded as that
example's, the LM's failures counted apart, at temperature 0 the same predictions and traces.

Usage and budgets are accounted **per example**, not per call.  Each example runs in the actor
under a budget of what was left of the caller's budgets when it was sent, and comes back with
the usage it spent (cache hits included), which is then added to the caller's usage meters
(those of ``Evaluate`` and any ``track_usage()`` around it) and charged to the caller's
budgets -- also for an example that raised, and for the examples still in flight when the
caller stops, which are waited for as threads are.  The driver sends an example only while
every active budget has calls, tokens and seconds left; once one is spent the next example is
a :class:`~cotune.lm.BudgetExceeded`, as with threads.  With ``S = num_actors ×
threads_per_actor`` examples in flight and examples of at most ``c`` LM calls, the calls spent
under a cap of ``max_calls`` are at most ``max_calls + (S - 1) × c``: the last example sent
fits in what was left, the ``S - 1`` others in flight with it may each spend up to ``c``
(threads, which share the caller's budget call by call, never pass ``max_calls``).  Tokens
are only known after a call, with threads as here, so a token cap is passed by what the calls
in flight spend.

ray is imported when the executor is first used, never by ``import cotune``.
"""

from __future__ import annotations

import functools
import itertools
import math
import pickle
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future
from typing import Any

from cotune.lm.budget import Budget, active_budgets, use_budget
from cotune.lm.types import BudgetExceeded
from cotune.lm.usage import UsageSnapshot, add_to_active_meters

LMDescription = Mapping[str, Any] | Callable[[], Any]
Limits = dict[str, float | None]


class RayExecutor:
    """Runs examples on Ray actors (see the module docstring).

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

    @property
    def slots(self) -> int:
        """Examples in flight at once: ``num_actors × threads_per_actor``."""
        return self.num_actors * self.threads_per_actor

    def imap(self, evaluate: Any, program: Any) -> Iterator[tuple[int, Future[Any]]]:
        """``(index, finished future of its ExampleResult)`` for every example of
        ``evaluate``'s dev set, as they complete (the contract of ``imap_unordered``)."""
        make_runner = functools.partial(_evaluation_runner, program, evaluate.devset,
                                        evaluate.metric, evaluate.failure_score)
        return self.map(make_runner, range(len(evaluate.devset)), program=program)

    def map(self, make_runner: Callable[[], Callable[[Any], Any]], items: Iterable[Any], *,
            program: Any = None) -> Iterator[tuple[int, Future[Any]]]:
        """``(position, finished future of run(item))`` for every item, as they complete,
        where ``run = make_runner()`` is built once in each actor (``make_runner`` must
        pickle: a module-level function or a ``functools.partial`` of one).  ``program``:
        the program ``run`` calls, checked for predictors with their own LM (refused: the
        actors use the executor's LM)."""
        if program is not None:
            _check_no_bound_lms(program)
        return self._map(make_runner, list(items))

    def _map(self, make_runner: Callable[[], Callable[[Any], Any]], items: list[Any]
             ) -> Iterator[tuple[int, Future[Any]]]:
        ray = _ray()
        actors = self._ensure_actors(ray)
        job = next(self._jobs)
        payload = ray.put(make_runner)
        try:
            ray.get([a.load.remote(job, payload) for a in actors], timeout=self.start_timeout)
        except ray.exceptions.GetTimeoutError:
            raise RuntimeError(
                f"the {len(actors)} Ray actors did not start within {self.start_timeout:g} s: "
                f"each declares {self.num_cpus:g} CPUs, the cluster has "
                f"{ray.available_resources().get('CPU', 0):g} free") from None
        todo = iter(enumerate(items))
        pending: dict[Any, int] = {}
        load = dict.fromkeys(range(len(actors)), 0)
        owner: dict[Any, int] = {}
        refused: list[tuple[int, BudgetExceeded]] = []

        def submit() -> bool:
            position, item = next(todo, (None, None))
            if position is None:
                return False
            try:
                limits = _limits_left()
            except BudgetExceeded as exc:
                refused.append((position, exc))
                return True
            actor = min(load, key=load.__getitem__)
            ref = actors[actor].run.remote(job, item, limits)
            pending[ref] = position
            owner[ref] = actor
            load[actor] += 1
            return True

        def collect(ref: Any) -> Future[Any]:
            load[owner.pop(ref)] -= 1
            future: Future[Any] = Future()
            try:
                ok, value, usage, spent = ray.get(ref)
            except BaseException as exc:  # the actor died, or Ray failed: raised by the caller
                future.set_exception(_cause(exc))
                return future
            _account(usage, spent)  # also for an example that raised: its calls were made
            if ok:
                future.set_result(value)
            else:
                future.set_exception(_own_budget_error(value))
            return future

        try:
            for _ in range(self.slots):
                if not submit():
                    break
            while pending or refused:
                if refused:
                    position, exc = refused.pop(0)
                    yield position, _failed(exc)
                    continue
                (ref,), _ = ray.wait(list(pending), num_returns=1)
                position = pending.pop(ref)
                yield position, collect(ref)
                submit()
        finally:
            # the caller stopped (an error, a budget): wait for what is in flight, as threads
            # do, so that its usage is counted and charged
            for ref in list(pending):
                pending.pop(ref)
                collect(ref)
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
            cls = ray.remote(_ExampleWorker).options(
                num_cpus=self.num_cpus, max_concurrency=self.threads_per_actor,
                max_restarts=1, max_task_retries=1)
            self._actors = [cls.remote(self.lm, self.lm_options)
                            for _ in range(self.num_actors)]
        return self._actors


def _evaluation_runner(program: Any, devset: list[Any], metric: Callable[..., Any],
                       failure_score: float) -> Callable[[int], Any]:
    """In an actor: ``Evaluate``'s own per-example function (the threads' code)."""
    from cotune.evaluate.evaluate import Evaluate

    evaluate = Evaluate(devset, metric, num_threads=1, display_progress=False,
                        failure_score=failure_score)
    return evaluate._runner(program)


class _ExampleWorker:
    """A Ray actor: one LM, the per-example functions of the jobs loaded."""

    def __init__(self, lm: LMDescription, lm_options: Mapping[str, Any]) -> None:
        from cotune.lm.factory import lm_from_description

        self.lm = lm_from_description(lm, **lm_options)
        self.jobs: dict[int, Callable[[Any], Any]] = {}
        """The per-example function of each job loaded (several may run at once)."""

    def node(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def load(self, job: int, make_runner: Callable[[], Callable[[Any], Any]]) -> None:
        self.jobs[job] = make_runner()

    def unload(self, job: int) -> None:
        self.jobs.pop(job, None)

    def run(self, job: int, item: Any, limits: Limits | None
            ) -> tuple[bool, Any, UsageSnapshot, tuple[int, int]]:
        """``(ok, result or exception, usage, (calls, tokens) charged to the budget)``."""
        from cotune.core.runtime import context
        from cotune.lm.usage import track_usage

        run_one = self.jobs.get(job)
        if run_one is None:  # a restarted actor lost it: the caller's error, not an example's
            raise RuntimeError(f"job {job} is not loaded in this actor (restarted?)")
        local = Budget(**(limits or {}))  # type: ignore[arg-type]
        with context(lm=self.lm), track_usage() as meter, use_budget(local):
            try:
                ok, value = True, run_one(item)
            except Exception as exc:  # noqa: BLE001 - delivered to the caller's future
                ok, value = False, _picklable(exc)
        return ok, value, meter.snapshot(), (local.calls, local.tokens)


def _ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ImportError("Ray fan-out needs ray: pip install 'cotune[ray]'") from exc
    return ray


def _limits_left() -> Limits | None:
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


def _own_budget_error(exc: Exception) -> Exception:
    """For the actor's stand-in budget spent, the caller's own budget's error (it names the
    caller's cap, not what was left of it when the example was sent)."""
    if isinstance(exc, BudgetExceeded):
        try:
            _limits_left()
        except BudgetExceeded as own:
            return own
    return exc


def _account(usage: UsageSnapshot, spent: tuple[int, int]) -> None:
    add_to_active_meters(usage)
    for b in active_budgets():
        b.charge(*spent)


def _picklable(exc: Exception) -> Exception:
    """``exc``, or a RuntimeError with its text when it cannot travel back to the caller."""
    try:
        import cloudpickle

        pickle.loads(cloudpickle.dumps(exc))
    except Exception:  # noqa: BLE001 - any failure to round-trip
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc


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
