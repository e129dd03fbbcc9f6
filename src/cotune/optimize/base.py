"""The optimizer interface and the bookkeeping every optimizer shares.

An optimizer takes a program, a training set, an optional validation set, a budget and a seed,
and returns a *new* program (the input is never mutated) plus the record of every candidate it
tried.  Subclasses implement ``estimate_cost`` and ``_optimize``; the base class handles
budgets, usage, journaling (resume) and picking the best candidate.
"""

from __future__ import annotations

import hashlib
import json
import random
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from cotune.core.example import Example
from cotune.core.module import Module
from cotune.evaluate import Evaluate
from cotune.lm.budget import Budget, use_budget
from cotune.lm.types import BudgetExceeded
from cotune.lm.usage import UsageMeter, UsageSnapshot, track_usage
from cotune.optimize.journal import Journal, MemoryJournal
from cotune.optimize.reporting import CostEstimate, LogReporter, Reporter

Metric = Callable[..., float | bool]


@dataclass
class Candidate:
    """One program the optimizer scored (or, without a validation set, produced)."""

    index: int
    description: str
    score: float | None
    """Mean metric on the full validation set; None when not fully evaluated."""
    params: dict[str, Any] = field(default_factory=dict)
    state: dict[str, Any] | None = None
    """The program's learnable state (``Module.dump_state()``)."""
    lm_calls: int = 0
    """LM calls the run had made when this candidate was recorded (the x axis of a report)."""
    elapsed_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class OptimizationResult:
    program: Module
    candidates: list[Candidate]
    best_index: int | None
    usage: UsageSnapshot
    stopped_by_budget: bool
    elapsed_s: float
    trials: list[dict[str, Any]] = field(default_factory=list)
    """Search trials (e.g. MIPRO's mini-batch trials) beyond the fully scored candidates."""

    @property
    def best_score(self) -> float | None:
        return None if self.best_index is None else self.candidates[self.best_index].score

    def to_json(self) -> dict[str, Any]:
        return {
            "best_index": self.best_index,
            "best_score": self.best_score,
            "stopped_by_budget": self.stopped_by_budget,
            "elapsed_s": self.elapsed_s,
            "usage": self.usage.to_json(),
            "candidates": [c.to_json() for c in self.candidates],
            "trials": self.trials,
        }


class OptimizationRun:
    """What an optimizer works with during one ``optimize()`` call."""

    def __init__(
        self,
        optimizer: Optimizer,
        journal: Journal,
        reporter: Reporter,
        meter: UsageMeter,
        valset: list[Example] | None,
        workdir: Path,
    ) -> None:
        self.optimizer = optimizer
        self.metric = optimizer.metric
        self.seed = optimizer.seed
        self.num_threads = optimizer.num_threads
        self.journal = journal
        self.reporter = reporter
        self.meter = meter
        self.valset = valset
        self.workdir = workdir
        """Where the optimizer writes files (e.g. LoRA adapters): inside the run folder."""
        self.candidates: list[Candidate] = []
        self.trials: list[dict[str, Any]] = []
        self.started = time.monotonic()
        self._best: tuple[float, int] | None = None
        self._programs: list[Module] = []

    def rng(self, *salt: object) -> random.Random:
        """A random generator determined by the seed and ``salt`` alone (stable across runs)."""
        text = json.dumps([self.seed, *[str(s) for s in salt]])
        return random.Random(int(hashlib.sha256(text.encode()).hexdigest()[:16], 16))

    def evaluate(self, program: Module, examples: Sequence[Example], key: str) -> dict[str, Any]:
        """Mean metric and per-example scores of ``program`` on ``examples``, journaled under
        ``key`` so that a resumed run does not evaluate it again."""

        def compute() -> dict[str, Any]:
            result = Evaluate(
                list(examples), self.metric, num_threads=self.num_threads,
                display_progress=False, executor=self.optimizer.executor,
            )(program)
            return {
                "score": result.score,
                "scores": [r.score for r in result.results],
                "errors": result.num_errors,
            }

        return self.journal.memo(f"eval:{key}", compute)

    def offer(
        self, program: Module, score: float | None, description: str, **params: Any
    ) -> Candidate:
        """Record a candidate program; the best scored one (first on ties) is the result."""
        candidate = Candidate(
            index=len(self.candidates),
            description=description,
            score=score,
            params=params,
            state=program.dump_state(),
            lm_calls=self.meter.snapshot().calls,
            elapsed_s=round(time.monotonic() - self.started, 3),
        )
        self.candidates.append(candidate)
        self._programs.append(program)
        if score is not None and (self._best is None or score > self._best[0]):
            self._best = (score, candidate.index)
        return candidate

    @property
    def best_score(self) -> float | None:
        return None if self._best is None else self._best[0]

    @property
    def best_index(self) -> int | None:
        if self._best is not None:
            return self._best[1]
        return len(self.candidates) - 1 if self.candidates else None

    def best_program(self) -> Module | None:
        index = self.best_index
        return None if index is None else self._programs[index]


class Optimizer(ABC):
    """Base class of all optimizers.  ``metric(example, prediction, trace=None)`` returns a
    float or bool; an example counts as a success when its score is >= ``metric_threshold``."""

    name: ClassVar[str] = "optimizer"
    executor: Any = None
    """Where the candidates' evaluations run (``Evaluate``'s ``executor``, e.g. a
    :class:`~cotune.evaluate.ray_executor.RayExecutor`); None: ``num_threads`` threads.
    Bootstrapping and proposals stay in threads."""

    def __init__(
        self,
        metric: Metric,
        *,
        seed: int = 0,
        num_threads: int = 4,
        metric_threshold: float = 1.0,
    ) -> None:
        self.metric = metric
        self.seed = seed
        self.num_threads = num_threads
        self.metric_threshold = metric_threshold

    @abstractmethod
    def estimate_cost(
        self, program: Module, trainset: Sequence[Example], valset: Sequence[Example] | None
    ) -> CostEstimate:
        """Projected LM calls, printed before the run starts."""

    @abstractmethod
    def _optimize(
        self,
        run: OptimizationRun,
        student: Module,
        trainset: list[Example],
        valset: list[Example] | None,
    ) -> None:
        """Offer candidates to ``run``; the base class returns the best one."""

    def config(self) -> dict[str, Any]:
        """The settings that define this optimizer (written to the run folder)."""
        return {"optimizer": self.name, "seed": self.seed, "num_threads": self.num_threads,
                "metric_threshold": self.metric_threshold}

    def optimize(
        self,
        program: Module,
        trainset: Sequence[Example],
        valset: Sequence[Example] | None = None,
        *,
        budget: Budget | None = None,
        journal: Journal | None = None,
        reporter: Reporter | None = None,
        workdir: str | Path | None = None,
    ) -> OptimizationResult:
        """Optimize a copy of ``program``.  ``journal`` makes the run resumable; ``workdir``
        receives files the optimizer produces (a new temporary folder when not given)."""
        trainset = _checked_examples(trainset, "trainset")
        valset = _checked_examples(valset, "valset") if valset else None
        reporter = reporter or LogReporter()
        reporter.projected(self.name, self.estimate_cost(program, trainset, valset))
        student = program.deepcopy()
        started = time.monotonic()
        stopped = False
        with ExitStack() as stack:
            meter = stack.enter_context(track_usage())
            if budget is not None:
                stack.enter_context(use_budget(budget))
            if workdir is None:  # kept afterwards: a returned program may point at its files
                workdir = tempfile.mkdtemp(prefix="cotune-run-")
            if journal is None:  # not `journal or ...`: an empty SQLiteJournal is falsy
                journal = MemoryJournal()
            run = OptimizationRun(self, journal, reporter, meter, valset, Path(workdir))
            try:
                self._optimize(run, student, trainset, valset)
            except BudgetExceeded as exc:
                stopped = True
                reporter.message(f"budget spent ({exc}); returning the best program so far")
            finally:
                reporter.end_phase()
        best = run.best_program()
        return OptimizationResult(
            program=best if best is not None else student,
            candidates=run.candidates,
            best_index=run.best_index,
            usage=meter.snapshot(),
            stopped_by_budget=stopped,
            elapsed_s=time.monotonic() - started,
            trials=run.trials,
        )

    def passes(self, score: float | bool) -> bool:
        return float(score) >= self.metric_threshold


def _checked_examples(examples: Sequence[Example] | None, name: str) -> list[Example]:
    examples = list(examples or [])
    if not examples:
        raise ValueError(f"{name} is empty")
    for i, ex in enumerate(examples):
        if not isinstance(ex, Example):
            raise TypeError(f"{name}[{i}] is a {type(ex).__name__}, expected an Example")
        ex.input_keys  # noqa: B018 - raises a clear error when inputs are not marked
    return examples
