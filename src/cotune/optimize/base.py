"""The optimizer interface and the bookkeeping every optimizer shares.

An optimizer takes a program, a training set, an optional validation set, a budget and a seed,
and returns a *new* program (the input is never mutated) plus the record of every candidate it
tried.  Subclasses implement ``estimate_cost`` and ``_optimize``; the base class handles
budgets, usage, journaling (resume) and choosing the result among the candidates, knowing the
noise of their validation scores (:mod:`cotune.optimize.selection`).
"""

from __future__ import annotations

import hashlib
import json
import random
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from cotune.core import Module
from cotune.core.example import Example
from cotune.core.validate import check_bool, check_int, check_number
from cotune.evaluate import Evaluate
from cotune.lm.budget import Budget, use_budget
from cotune.lm.types import BudgetExceeded
from cotune.lm.usage import UsageMeter, UsageSnapshot, track_usage
from cotune.optimize.journal import Journal, MemoryJournal
from cotune.optimize.reporting import CostEstimate, LogReporter, Reporter
from cotune.optimize.selection import NOISE, MinGain, Scored, Selection, check_min_gain
from cotune.optimize.trials import Trial

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
    scores: list[float] | None = None
    """Per-example validation scores behind ``score`` (None when not known)."""
    examples: str | None = None
    """A digest of the examples ``scores`` are on (scores pair only on the same examples)."""
    vs_baseline: dict[str, Any] | None = None
    """The gain over the baseline, its paired interval, and whether it allowed the candidate to
    replace the baseline (None for the baseline and for unscored candidates)."""

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
    trials: list[Trial] = field(default_factory=list)
    """Search trials (e.g. MIPRO's mini-batch trials) beyond the fully scored candidates."""
    selection: dict[str, Any] = field(default_factory=dict)
    """Why ``best_index`` was chosen: the rule, the baseline, the reason, any re-scoring."""

    @property
    def best_score(self) -> float | None:
        return None if self.best_index is None else self.candidates[self.best_index].score

    @property
    def best_candidate(self) -> Candidate | None:
        return None if self.best_index is None else self.candidates[self.best_index]

    def to_json(self) -> dict[str, Any]:
        return {
            "best_index": self.best_index,
            "best_score": self.best_score,
            "stopped_by_budget": self.stopped_by_budget,
            "elapsed_s": self.elapsed_s,
            "usage": self.usage.to_json(),
            "candidates": [c.to_json() for c in self.candidates],
            "trials": [t.to_json() for t in self.trials],
            "selection": self.selection,
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
        self.trials: list[Trial] = []
        self.started = time.monotonic()
        self.selection = Selection(optimizer.min_gain, optimizer.seed)
        self._programs: list[Module] = []

    def rng(self, *salt: object) -> random.Random:
        """A random generator determined by the seed and ``salt`` alone (stable across runs)."""
        text = json.dumps([self.seed, *[str(s) for s in salt]])
        return random.Random(int(hashlib.sha256(text.encode()).hexdigest()[:16], 16))

    def evaluate(self, program: Module, examples: Sequence[Example], key: str) -> dict[str, Any]:
        """Mean metric and per-example scores of ``program`` on ``examples``, journaled under
        ``key`` so that a resumed run does not evaluate it again.  The record also names the
        examples (``"examples"``, a digest); pass it whole to :meth:`offer`."""

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

        return {**self.journal.memo(f"eval:{key}", compute), "examples": examples_digest(examples)}

    def offer(
        self,
        program: Module,
        score: float | Mapping[str, Any] | None,
        description: str,
        **params: Any,
    ) -> Candidate:
        """Record a candidate program.  ``score`` is its validation score, or better the
        record :meth:`evaluate` returned (with the per-example scores that tell a real gain
        from noise).  The first scored candidate is the baseline; a later one replaces it as
        the result only with a gain the optimizer's ``min_gain`` accepts (see
        :mod:`cotune.optimize.selection`)."""
        scores = examples = None
        if isinstance(score, Mapping):
            scores = [float(s) for s in score["scores"]] if score.get("scores") else None
            examples = score.get("examples")
            score = score["score"]
        candidate = Candidate(
            index=len(self.candidates),
            description=description,
            score=score,
            params=params,
            state=program.dump_state(),
            lm_calls=self.meter.snapshot().calls,
            elapsed_s=round(time.monotonic() - self.started, 3),
            scores=scores,
            examples=examples,
        )
        self.candidates.append(candidate)
        self._programs.append(program)
        if score is not None:
            verdict = self.selection.add(Scored(candidate.index, score, scores, examples))
            candidate.vs_baseline = verdict.to_json() if verdict is not None else None
        return candidate

    def record_trial(self, number: int, kind: str, **fields: Any) -> Trial:
        """Record one search trial (see :class:`~cotune.optimize.trials.Trial`), placed at
        the LM calls the run has made so far."""
        trial = Trial(number, kind, self.meter.snapshot().calls, **fields)
        self.trials.append(trial)
        return trial

    def rescore_finalists(self, top: int, more: Sequence[Example]) -> None:
        """Score the baseline and the ``top`` best other candidates on the validation set
        plus ``more`` examples, and choose again from those scores (journaled)."""
        finalists = self.selection.finalists(top)
        if len(finalists) < 2 or not more:
            return
        examples = [*(self.valset or []), *more]

        def scored(index: int) -> Scored:
            state = json.dumps(self.candidates[index].state, sort_keys=True, default=str)
            digest = hashlib.sha256(state.encode()).hexdigest()[:16]
            record = self.evaluate(self._programs[index], examples, f"rescore:{digest}")
            return Scored(index, record["score"], record["scores"], record["examples"])

        self.reporter.message(f"re-scoring {len(finalists)} finalists on {len(examples)} "
                              "validation examples")
        try:
            self.selection.rescore(finalists, scored)
        except BudgetExceeded:
            self.selection.note = "re-scoring was cut short by the budget: chosen without it"
            raise

    @property
    def best_score(self) -> float | None:
        best = self.selection.best
        return None if best is None else best.score

    @property
    def best_index(self) -> int | None:
        if self.selection.chosen is not None:
            return self.selection.chosen
        return len(self.candidates) - 1 if self.candidates else None

    def best_program(self) -> Module | None:
        index = self.best_index
        return None if index is None else self._programs[index]


class Optimizer(ABC):
    """Base class of all optimizers.  ``metric(example, prediction, trace=None)`` returns a
    float or bool; an example counts as a success when its score is >= ``metric_threshold``.

    ``min_gain`` is what a candidate must gain over the baseline (the first candidate scored)
    to become the result: ``"noise"`` (a paired 95% bootstrap interval above 0) or a number
    (a mean gain above it; 0 is plain "the best score wins").  ``rescore_top`` re-scores that
    many of the best candidates, with the baseline, on the extra validation examples given to
    :meth:`optimize` as ``rescore_set`` before choosing.

    ``hindsight``: optimizers that learn from the program's traces (bootstrapped demos,
    fine-tuning records) also learn from failing traces whose metric says what a predictor
    should have answered (``Score.predictor_targets``), with those answers in place of the
    traced ones.
    """

    name: ClassVar[str] = "optimizer"
    executor: Any = None
    """Where the candidates' evaluations and the bootstraps of demos and fine-tuning traces
    run (``Evaluate``'s ``executor``, e.g. a :class:`~cotune.evaluate.ray_executor.RayExecutor`);
    None: ``num_threads`` threads.  Proposals stay in this process."""

    def __init__(
        self,
        metric: Metric,
        *,
        seed: int = 0,
        num_threads: int = 4,
        metric_threshold: float = 1.0,
        min_gain: MinGain = NOISE,
        rescore_top: int = 0,
        hindsight: bool = False,
    ) -> None:
        if isinstance(rescore_top, bool) or not isinstance(rescore_top, int) or rescore_top < 0:
            raise ValueError(f"rescore_top must be a whole number >= 0, got {rescore_top!r}")
        self.metric = metric
        self.seed = check_int("seed", seed)
        self.num_threads = check_int("num_threads", num_threads, minimum=1)
        self.metric_threshold = check_number("metric_threshold", metric_threshold)
        self.min_gain = check_min_gain(min_gain)
        self.rescore_top = check_int("rescore_top", rescore_top, minimum=0)
        self.hindsight = check_bool("hindsight", hindsight)

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
        config = {"optimizer": self.name, "seed": self.seed, "num_threads": self.num_threads,
                  "metric_threshold": self.metric_threshold, "min_gain": self.min_gain,
                  "rescore_top": self.rescore_top}
        if self.hindsight:  # only when on: run folders made before it resume as they were
            config["hindsight"] = True
        return config

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
        rescore_set: Sequence[Example] | None = None,
    ) -> OptimizationResult:
        """Optimize a copy of ``program``.  ``journal`` makes the run resumable; ``workdir``
        receives files the optimizer produces (a new temporary folder when not given);
        ``rescore_set`` holds validation examples beyond ``valset`` for ``rescore_top``."""
        trainset = _checked_examples(trainset, "trainset")
        valset = _checked_examples(valset, "valset") if valset else None
        rescore_set = _checked_examples(rescore_set, "rescore_set") if rescore_set else None
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
                if self.rescore_top and rescore_set:
                    run.rescore_finalists(self.rescore_top, rescore_set)
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
            selection=run.selection.record(),
        )

    def passes(self, score: float | bool) -> bool:
        return float(score) >= self.metric_threshold


def examples_digest(examples: Sequence[Example]) -> str:
    """A short hash of a list of examples (their fields, in order)."""
    text = json.dumps([sorted(ex.to_dict().items()) for ex in examples], default=str,
                      ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _checked_examples(examples: Sequence[Example] | None, name: str) -> list[Example]:
    examples = list(examples or [])
    if not examples:
        raise ValueError(f"{name} is empty")
    for i, ex in enumerate(examples):
        if not isinstance(ex, Example):
            raise TypeError(f"{name}[{i}] is a {type(ex).__name__}, expected an Example")
        ex.input_keys  # noqa: B018 - raises a clear error when inputs are not marked
    return examples
