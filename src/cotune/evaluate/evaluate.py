"""Run a program over a dev set in parallel and score it with a metric.

One bad example never sinks a run: its exception is recorded and it scores ``failure_score``
(a wrong or unparsable answer, a prompt too long for the model's context, a metric that raised).

An LM that fails for a reason that is no example's (unreachable, timing out, HTTP errors once
retries are spent, invalid answers, an unusable cache: see
:func:`~cotune.lm.is_infrastructure_error`) is not a score: such an example is counted apart
(``num_lm_errors``), left out of the mean, and past ``max_lm_errors`` of them (by default the
first; always when every example failed so) the evaluation stops with :class:`LMUnavailable`,
naming the LM and its first error.  Three other things stop the run, because continuing would
be wrong rather than merely unlucky: a spent LM budget (:class:`~cotune.lm.BudgetExceeded`,
which optimizers rely on to stop), a missing LM, and more than ``max_errors`` failed examples
(:class:`EvaluationAborted`).  The exceptions carry the results so far.

The per-example path is kept lean (no locks, one small object per example, progress pushed to
the display at most ~10 times a second) because optimizers call ``Evaluate`` thousands of times.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from cotune.core.example import Example, Prediction
from cotune.core.jsonable import jsonable
from cotune.core.parallel import imap_unordered
from cotune.core.predict import NoLMError
from cotune.evaluate.progress import progress_bar
from cotune.lm.types import BudgetExceeded, LMError, is_infrastructure_error
from cotune.lm.usage import UsageMeter, UsageSnapshot, track_usage

logger = logging.getLogger(__name__)

_FATAL: tuple[type[BaseException], ...] = (BudgetExceeded, NoLMError)
"""Exceptions that are never one example's fault: they stop the evaluation and propagate."""

_MAX_ERROR_CHARS = 4000
_PROGRESS_INTERVAL_S = 0.1


@dataclass(slots=True)
class ExampleResult:
    """The outcome of one example.  ``error`` is set when the program or the metric raised."""

    example: Example
    prediction: Prediction | None
    score: float
    error: str | None = None
    error_type: str | None = None
    lm_error: bool = False
    """The LM failed for a reason that is not this example's (see the module docstring): the
    example has no score (``score`` is ``failure_score`` but counts in no mean)."""
    lm: str | None = None
    """Which LM failed, for an ``lm_error``."""

    @property
    def failed(self) -> bool:
        return self.error is not None

    def to_json(self) -> dict[str, Any]:
        prediction = self.prediction
        return {
            "example": jsonable(self.example.to_dict()),
            "prediction": jsonable(
                prediction.to_dict() if isinstance(prediction, Example) else prediction
            ),
            "score": self.score,
            "error": self.error,
            "error_type": self.error_type,
            "lm_error": self.lm_error,
        }


@dataclass
class EvaluationResult:
    """Scores of one program on a dev set.

    ``score`` is the **mean per-example metric value** (failed examples count as
    ``failure_score``; examples the LM failed on count in no mean), so it lies in [0, 1] for
    metrics that return bools or fractions — not a percentage.  ``results`` follows the order
    of the dev set.  After an abort it holds only the examples that finished (still in dev-set
    order) and ``score`` averages over those.
    """

    score: float
    results: list[ExampleResult]
    num_errors: int
    """Examples that failed and scored ``failure_score`` (the LM's failures not included)."""
    usage: UsageSnapshot
    elapsed_s: float
    num_total: int
    """Size of the dev set; more than ``len(results)`` when the run was stopped early."""
    num_lm_errors: int = 0
    """Examples without a score because the LM failed (see :class:`ExampleResult.lm_error`)."""

    @property
    def complete(self) -> bool:
        return len(self.results) == self.num_total

    @property
    def scores(self) -> list[float]:
        return [r.score for r in self.results]

    def mean_of(self, metric: Callable[..., Any]) -> float:
        """Another metric's mean over the same predictions, without calling the program again
        (e.g. retrieval recall next to answer accuracy).  A failed example counts 0, and so
        does an example whose metric raises; examples the LM failed on count in no mean."""
        values = self.values_of(metric)
        return sum(values) / len(values) if values else 0.0

    def values_of(self, metric: Callable[..., Any]) -> list[float]:
        """Another metric's value on each example, as :meth:`mean_of` counts them (for its
        confidence interval); examples the LM failed on are left out."""
        values = []
        for r in self.results:
            if r.lm_error:
                continue
            value = 0.0
            if not r.failed and r.prediction is not None:
                try:
                    value = float(metric(r.example, r.prediction))
                except Exception:  # noqa: BLE001 - a secondary metric must not sink the report
                    logger.warning("secondary metric %s raised on an example",
                                   getattr(metric, "__name__", metric), exc_info=True)
            values.append(value)
        return values

    def to_json(self, *, include_results: bool = True) -> dict[str, Any]:
        data: dict[str, Any] = {
            "score": self.score,
            "num_examples": len(self.results),
            "num_total": self.num_total,
            "num_errors": self.num_errors,
            "num_lm_errors": self.num_lm_errors,
            "elapsed_s": self.elapsed_s,
            "usage": self.usage.to_json(),
        }
        if include_results:
            data["results"] = [r.to_json() for r in self.results]
        return data

    def __repr__(self) -> str:
        done = "" if self.complete else f" of {self.num_total}"
        return (
            f"EvaluationResult(score={self.score:.4f}, examples={len(self.results)}{done}, "
            f"errors={self.num_errors}, lm_errors={self.num_lm_errors}, "
            f"elapsed_s={self.elapsed_s:.2f})"
        )


class EvaluationAborted(RuntimeError):
    """More examples failed than ``max_errors`` allows.  ``partial_result`` holds the finished
    examples, failures included, with their error messages."""

    def __init__(self, message: str, partial_result: EvaluationResult) -> None:
        super().__init__(message)
        self.partial_result = partial_result


class LMUnavailable(EvaluationAborted, LMError):
    """The LM failed for a reason that is no example's (see the module docstring) on more
    examples than ``max_lm_errors`` allows, or on every one.  ``lm`` names the LM (backend,
    model, endpoint), ``first_error`` says how it failed first; ``partial_result`` holds the
    examples that finished.  Nothing about the program's quality can be read from it.

    An :class:`~cotune.lm.LMError` too (an infrastructure one), so that one ``except LMError``
    catches the LM's failures wherever they surface."""

    def __init__(
        self, message: str, partial_result: EvaluationResult, *, lm: str | None,
        first_error: str,
    ) -> None:
        super().__init__(message, partial_result)
        self.lm = lm
        self.first_error = first_error

    def describe(self) -> str:
        return str(self)  # the message already names the LM and its first error


class Evaluate:
    """Score programs on a fixed dev set: ``Evaluate(devset, metric)(program)``.

    Args:
        devset: examples with their inputs marked (``Example(...).with_inputs("question")``).
        metric: ``metric(example, prediction, trace=None) -> float | bool``.
        num_threads: examples run at once.  Workers inherit the caller's context, so an LM set
            with ``cotune.context(lm=...)``, budgets and usage meters apply inside them.
        display_progress: show a progress bar with the running score and error count.
        max_errors: abort with :class:`EvaluationAborted` once more examples than this failed
            (None: never).  The LM's own failures are not counted here.
        max_lm_errors: abort with :class:`LMUnavailable` once the LM failed (for a reason that
            is no example's) on more examples than this (None: only when it failed on all).
        failure_score: the score of an example whose program or metric raised.
        executor: runs the examples elsewhere instead of in ``num_threads`` threads, e.g.
            :class:`~cotune.evaluate.ray_executor.RayExecutor` (Ray actors); the results,
            failure handling and usage accounting are the same.

    ``BudgetExceeded`` (with ``partial_result`` attached), ``NoLMError`` and ``KeyboardInterrupt``
    are not example failures: they stop the run and propagate.  The metric is called as
    ``metric(example, prediction)``.
    """

    def __init__(
        self,
        devset: Iterable[Example],
        metric: Callable[..., float | bool],
        *,
        num_threads: int = 8,
        display_progress: bool = True,
        max_errors: int | None = None,
        max_lm_errors: int | None = 0,
        failure_score: float = 0.0,
        description: str = "Evaluating",
        executor: Any = None,
    ) -> None:
        self.devset = list(devset)
        if not self.devset:
            raise ValueError("the dev set is empty")
        if num_threads < 1:
            raise ValueError("num_threads must be >= 1")
        if max_errors is not None and max_errors < 0:
            raise ValueError("max_errors must be >= 0 or None")
        if max_lm_errors is not None and max_lm_errors < 0:
            raise ValueError("max_lm_errors must be >= 0 or None")
        self._inputs = [_inputs_of(i, ex) for i, ex in enumerate(self.devset)]
        self.metric = metric
        self.num_threads = num_threads
        self.display_progress = display_progress
        self.max_errors = max_errors
        self.max_lm_errors = max_lm_errors
        self.failure_score = float(failure_score)
        self.description = description
        self.executor = executor

    def __call__(self, program: Callable[..., Any]) -> EvaluationResult:
        """Run ``program(**example.inputs())`` on every example and score the predictions."""
        n = len(self.devset)
        done: list[ExampleResult | None] = [None] * n
        count = num_errors = num_lm_errors = 0
        total = 0.0
        first_lm_error: ExampleResult | None = None
        run_one = self._runner(program)
        start = time.perf_counter()
        with track_usage() as meter, self._progress(n) as show:
            work = (imap_unordered(run_one, range(n), self.num_threads) if self.executor is None
                    else self.executor.imap(self, program))
            try:
                for index, future in work:
                    result = future.result()  # fatal errors and KeyboardInterrupt re-raise here
                    done[index] = result
                    count += 1
                    if result.lm_error:
                        num_lm_errors += 1
                        first_lm_error = first_lm_error or result
                        if self.max_lm_errors is not None and num_lm_errors > self.max_lm_errors:
                            raise self._lm_unavailable(
                                first_lm_error, num_lm_errors, count,
                                self._result(done, num_errors, num_lm_errors, meter, start))
                        continue
                    total += result.score
                    if result.error is not None:
                        num_errors += 1
                        if self.max_errors is not None and num_errors > self.max_errors:
                            partial = self._result(done, num_errors, num_lm_errors, meter, start)
                            raise EvaluationAborted(
                                f"{num_errors} examples failed (max_errors={self.max_errors}); "
                                f"last error, {result.error_type}: {result.error[:500]}",
                                partial,
                            )
                    if show is not None:
                        show(count, count - num_lm_errors, total, num_errors + num_lm_errors)
            except BudgetExceeded as exc:
                exc.partial_result = self._result(  # type: ignore[attr-defined]
                    done, num_errors, num_lm_errors, meter, start
                )
                raise
            finally:
                work.close()  # stop submitting; wait for what is in flight
            if show is not None:
                show(count, count - num_lm_errors, total, num_errors + num_lm_errors, final=True)
        result = self._result(done, num_errors, num_lm_errors, meter, start)
        if first_lm_error is not None and num_lm_errors == count:
            raise self._lm_unavailable(first_lm_error, num_lm_errors, count, result)
        return result

    @staticmethod
    def _lm_unavailable(
        first: ExampleResult, failed: int, finished: int, partial: EvaluationResult
    ) -> LMUnavailable:
        error = first.error or "?"
        so_far = "" if finished == partial.num_total else " so far"
        return LMUnavailable(
            f"the LM failed on {failed} of the {finished} examples evaluated{so_far}: {error}",
            partial, lm=first.lm, first_error=error,
        )

    # -- internals ---------------------------------------------------------------------------

    def _runner(self, program: Callable[..., Any]) -> Callable[[int], ExampleResult]:
        """The per-example function run in the workers (closure: no attribute look-ups)."""
        devset, inputs, metric, failure = self.devset, self._inputs, self.metric, self.failure_score

        def run_one(index: int) -> ExampleResult:
            example = devset[index]
            try:
                prediction = program(**inputs[index])
            except _FATAL:
                raise
            except Exception as exc:
                return _failure(example, None, failure, exc, index, "program")
            try:
                score = float(metric(example, prediction))
            except _FATAL:
                raise
            except Exception as exc:
                return _failure(example, prediction, failure, exc, index, "metric")
            return ExampleResult(example, prediction, score)

        return run_one

    def _result(
        self,
        done: list[ExampleResult | None],
        num_errors: int,
        num_lm_errors: int,
        meter: UsageMeter,
        start: float,
    ) -> EvaluationResult:
        results = [r for r in done if r is not None]
        scored = [r.score for r in results if not r.lm_error]
        return EvaluationResult(
            score=sum(scored) / len(scored) if scored else 0.0,
            results=results,
            num_errors=num_errors,
            usage=meter.snapshot(),
            elapsed_s=time.perf_counter() - start,
            num_total=len(done),
            num_lm_errors=num_lm_errors,
        )

    @contextmanager
    def _progress(self, total: int) -> Iterator[Callable[..., None] | None]:
        """A throttled progress callback ``show(done, scored, score_sum, errors)``, or None
        when off."""
        if not self.display_progress:
            yield None
            return
        with progress_bar(self.description, "score {task.fields[score]:.3f}  errors "
                          "{task.fields[errors]}", total, score=0.0, errors=0) as update:
            if update is None:
                yield None
                return
            next_push = 0.0

            def show(done: int, scored: int, score_sum: float, errors: int,
                     final: bool = False) -> None:
                nonlocal next_push
                now = time.monotonic()
                if now < next_push and not final:
                    return
                next_push = now + _PROGRESS_INTERVAL_S
                update(done, score=score_sum / scored if scored else 0.0, errors=errors)

            yield show


def _inputs_of(index: int, example: Any) -> dict[str, Any]:
    if not isinstance(example, Mapping) or not hasattr(example, "inputs"):
        raise TypeError(f"devset[{index}] is a {type(example).__name__}, not a cotune Example")
    try:
        return example.inputs()
    except ValueError:
        raise ValueError(
            f"devset[{index}] has no inputs marked, so Evaluate cannot tell which fields to pass "
            f"to the program: use Example(...).with_inputs(...), e.g. "
            f".with_inputs({next(iter(example), 'question')!r}); fields: {sorted(example)}"
        ) from None


def _failure(
    example: Example,
    prediction: Prediction | None,
    score: float,
    exc: Exception,
    index: int,
    stage: str,
) -> ExampleResult:
    logger.debug("example %d: %s raised %s", index, stage, type(exc).__name__, exc_info=exc)
    lm_error = is_infrastructure_error(exc)
    message = exc.describe() if isinstance(exc, LMError) and lm_error else str(exc) or repr(exc)
    if stage == "metric":
        message = f"metric failed: {message}"
    return ExampleResult(example, prediction, score, message[:_MAX_ERROR_CHARS],
                         type(exc).__name__, lm_error=lm_error,
                         lm=getattr(exc, "lm", None) if lm_error else None)

