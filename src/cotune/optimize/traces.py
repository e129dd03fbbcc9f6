"""Running a program over training examples and keeping the traces that pass the metric:
the raw material of bootstrapped demos (prompt optimization) and of fine-tuning data.

With ``hindsight``, the metric's per-step credit decides (a
:class:`~cotune.evaluate.metrics.Score`'s ``predictor_targets``): a predictor's step is
relabeled with its target outputs where the metric gives some (``{}``: right as traced), and
dropped where its target is None (the step earned nothing); the steps the metric says nothing
about are kept when the trace passed, dropped when it failed.  A small model whose traces
almost never pass (HoVer's query writers with Qwen2.5-0.5B) then still has something to learn
from, and a passing trace no longer teaches the steps that did not help it pass.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cotune.core import Module
from cotune.core.example import Example
from cotune.core.parallel import imap_unordered
from cotune.core.trace import trace
from cotune.lm.types import BudgetExceeded, is_infrastructure_error


@dataclass(frozen=True)
class SuccessfulTrace:
    example_index: int
    """Position of the training example in the list that was bootstrapped."""
    steps: list[tuple[str, dict[str, Any], dict[str, Any]]]
    """``(predictor name, inputs, outputs)`` for every predictor call, in call order."""
    relabeled: bool = False
    """Changed by hindsight: a failing trace's credited steps, or a passing trace some of
    whose steps were dropped or relabeled."""

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"example_index": self.example_index,
                                "steps": [list(s) for s in self.steps]}
        if self.relabeled:
            data["relabeled"] = True
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SuccessfulTrace:
        steps = [tuple(s) for s in data["steps"]]
        return cls(data["example_index"], steps,  # type: ignore[arg-type]
                   bool(data.get("relabeled", False)))


def collect_successful_traces(
    program: Module,
    examples: Sequence[Example],
    metric: Callable[..., Any],
    *,
    threshold: float = 1.0,
    num_threads: int = 4,
    wanted: int | None = None,
    prepare: Callable[[Module, int], Module] | None = None,
    executor: Any = None,
    hindsight: bool = False,
) -> list[SuccessfulTrace]:
    """Run ``program`` on ``examples`` in parallel; return the traces whose final prediction
    scores at least ``threshold``, in example order; with ``hindsight``, every trace with a
    step that the metric's ``predictor_targets`` credit, relabeled as the module docstring
    says (``relabeled=True`` where that changed it).

    With ``wanted``, stop after the first ``wanted`` successes (in example order, so the result
    does not depend on thread timing).  ``prepare(program, i)`` may return a variant of the
    program to run on example ``i`` (e.g. without that example among its demos).  A failing
    example (an unparsable answer, a prompt too long for the context) is simply not a success;
    a spent budget and an LM failure that is no example's
    (:func:`~cotune.lm.is_infrastructure_error`) propagate: demos chosen while the LM was down
    would not be the ones it chooses when it is up.

    ``executor`` (e.g. a :class:`~cotune.evaluate.ray_executor.RayExecutor`) runs the examples
    elsewhere instead of in ``num_threads`` threads, by its ``map(make_runner, items,
    program=...)``, ``slots`` at a time: the same traces, usage and budgets.  ``metric`` and
    ``prepare`` must then pickle (module-level functions, lambdas over picklable values).
    """
    # with ``wanted``, chunks of twice the parallel slots, each drained before the next, so
    # that the same examples run however the work is timed; without it, one pass over all
    chunk = len(examples) if wanted is None else \
        max(executor.slots if executor is not None else num_threads, 1) * 2
    make_runner = functools.partial(trace_runner, program, list(examples), metric, threshold,
                                    prepare, hindsight)
    run_one = make_runner() if executor is None else None
    found: list[SuccessfulTrace] = []
    start = 0
    while start < len(examples):
        indices = range(start, min(start + chunk, len(examples)))
        results: dict[int, SuccessfulTrace | None] = {}
        work = (imap_unordered(run_one, indices, num_threads) if run_one is not None
                else executor.map(make_runner, indices, program=program))
        try:
            for position, future in work:
                results[indices[position]] = future.result()
        finally:
            work.close()  # on an error: submit no more, wait for what is in flight
        found.extend(r for i in sorted(results) if (r := results[i]) is not None)
        if wanted is not None and len(found) >= wanted:
            return found[:wanted]
        start += chunk
    return found


def trace_runner(
    program: Module,
    examples: Sequence[Example],
    metric: Callable[..., Any],
    threshold: float,
    prepare: Callable[[Module, int], Module] | None,
    hindsight: bool = False,
) -> Callable[[int], SuccessfulTrace | None]:
    """The per-example function of :func:`collect_successful_traces`: the trace of example
    ``i`` when it passes (or, with ``hindsight``, its relabeled steps), else None
    (module-level, so that a Ray actor can build it)."""
    names = {id(p): name for name, p in program.named_predictors()}

    def run_one(index: int) -> SuccessfulTrace | None:
        example = examples[index]
        runner = prepare(program, index) if prepare else program
        runner_names = {id(p): name for name, p in runner.named_predictors()} or names
        try:
            with trace() as t:
                prediction = runner(**example.inputs())
            score = metric(example, prediction, t.steps)
        except BudgetExceeded:
            raise
        except Exception as exc:
            if is_infrastructure_error(exc):
                raise
            return None
        steps = [
            (runner_names[id(s.predictor)], dict(s.inputs), s.outputs.to_dict())
            for s in t.steps
            if id(s.predictor) in runner_names
        ]
        passed = float(score) >= threshold
        if not hindsight:
            return SuccessfulTrace(index, steps) if passed else None
        targets = getattr(score, "predictor_targets", None) or {}
        kept = relabel(steps, targets, passed=passed)
        changed = not passed or kept != steps
        return SuccessfulTrace(index, kept, relabeled=changed) if kept else None

    return run_one


Step = tuple[str, dict[str, Any], dict[str, Any]]


def relabel(steps: list[Step], targets: dict[str, dict[str, Any] | None], *, passed: bool
            ) -> list[Step]:
    """The steps hindsight keeps: the first call of each predictor with a target dict, its
    outputs overwritten by the target's fields (the others keep their traced value); no call
    of a predictor whose target is None; the calls of predictors ``targets`` does not name
    only when the trace ``passed``."""
    kept, done = [], set()
    for name, inputs, outputs in steps:
        if name not in targets:
            if passed:
                kept.append((name, inputs, outputs))
            continue
        target = targets[name]
        if target is not None and name not in done:
            done.add(name)
            kept.append((name, inputs, {**outputs, **target}))
    return kept
