"""BetterTogether (Soylu, Potts, Khattab, 2024): alternate prompt and weight optimization.

A strategy such as ``"p -> w -> p"`` names the steps in order: ``p`` optimizes the prompts
(by default bootstrap random search), ``w`` fine-tunes the weights on the program's own passing
traces (:class:`BootstrapFinetune`), so the same LM teaches itself.  Every step starts from the
previous step's program, on a freshly shuffled training set, and its result is scored on the
validation set.  The first step's program is the baseline; a later step's replaces it only with
a validation gain ``min_gain`` accepts (by default beyond noise), and the best such step wins
(the last one when there is no validation set).

Each step runs as a full sub-optimization that shares the run's budget, usage meter and journal
(under a per-step key prefix), so a resumed run replays the finished steps from the journal.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from cotune.core import Module
from cotune.core.example import Example
from cotune.core.validate import check_mapping
from cotune.finetune.errors import NoTrainingDataError
from cotune.lm.types import BudgetExceeded
from cotune.optimize.base import OptimizationResult, OptimizationRun, Optimizer
from cotune.optimize.finetune import BootstrapFinetune, FineTuner
from cotune.optimize.gepa import GEPA
from cotune.optimize.journal import Journal
from cotune.optimize.random_search import BootstrapRandomSearch
from cotune.optimize.registry import register_optimizer
from cotune.optimize.reporting import CostEstimate

ARROW = "->"


class PrefixedJournal(Journal):
    """A view of another journal in which every key gets ``prefix``: sub-optimizations keep
    their own key spaces in the run's one journal (and its replay accounting)."""

    def __init__(self, inner: Journal, prefix: str) -> None:
        self.inner = inner
        self.prefix = prefix

    def get(self, key: str, default: Any = None) -> Any:
        return self.inner.get(self.prefix + key, default)

    def put(self, key: str, value: Any) -> None:
        self.inner.put(self.prefix + key, value)

    def keys(self, prefix: str = "") -> list[str]:
        return [k[len(self.prefix):] for k in self.inner.keys(self.prefix + prefix)]

    def memo(self, key: str, compute: Callable[[], Any]) -> Any:
        return self.inner.memo(self.prefix + key, compute)

    def recorded(self, value: Any) -> Any:
        return self.inner.recorded(value)


def parse_strategy(strategy: str, valid: Sequence[str]) -> list[str]:
    """``"p -> w -> p"`` -> ``["p", "w", "p"]``; a ValueError naming the valid steps otherwise."""
    names = ", ".join(repr(v) for v in valid)
    if not isinstance(strategy, str) or not strategy.strip():
        raise ValueError(f"empty strategy: give steps joined by '->', e.g. 'p -> w -> p' "
                         f"(valid steps: {names})")
    steps = [part.strip() for part in strategy.split(ARROW)]
    if any(not s for s in steps):
        raise ValueError(f"malformed strategy {strategy!r}: every '->' needs a step on both "
                         f"sides, e.g. 'p -> w -> p' (valid steps: {names})")
    unknown = [s for s in steps if s not in valid]
    if unknown:
        raise ValueError(f"strategy {strategy!r}: unknown step(s) {unknown}; valid steps: {names}")
    return steps


@register_optimizer("BetterTogether: prompt (p) and weight (w) steps, e.g. 'p -> w -> p'",
                    arg="strategy")
class BetterTogether(Optimizer):
    """Compose prompt ("p") and weight ("w") optimization by a strategy string.

    Args:
        strategy: steps joined by ``->``, e.g. ``"p -> w"``, ``"w -> p"``, ``"p -> w -> p"``.
        prompt_optimizer: the "p" step (default: BootstrapRandomSearch).
        weight_optimizer: the "w" step (default: BootstrapFinetune with ``trainer``).
        trainer: the fine-tuning trainer of the default "w" step (default: LoraTrainer).
        lora: LoRA settings of the default trainer (see :class:`BootstrapFinetune`).
        prompt_options: keyword arguments of the default "p" step, e.g.
            ``{"num_candidates": 4}``.
        gepa_options: keyword arguments of the "g" step (GEPA as the prompt step, e.g.
            ``strategy="g -> w -> g"``).
        steps: more steps by name, or replacements for "p" and "w".
    """

    name = "bettertogether"

    def __init__(
        self,
        metric: Any,
        *,
        strategy: str = "p -> w -> p",
        prompt_optimizer: Optimizer | None = None,
        weight_optimizer: Optimizer | None = None,
        trainer: FineTuner | None = None,
        lora: Any = None,
        prompt_options: Mapping[str, Any] | None = None,
        gepa_options: Mapping[str, Any] | None = None,
        steps: Mapping[str, Optimizer] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(metric, **kwargs)
        check_mapping("prompt_options", prompt_options, allow_none=True)
        shared = {"seed": self.seed, "num_threads": self.num_threads,
                  "metric_threshold": self.metric_threshold, "min_gain": self.min_gain,
                  "hindsight": self.hindsight}
        self.steps: dict[str, Optimizer] = {
            "p": prompt_optimizer
            or BootstrapRandomSearch(metric, **{**shared, **(prompt_options or {})}),
            "w": weight_optimizer
            or BootstrapFinetune(metric, trainer=trainer, lora=lora, evaluate_baseline=False,
                                 **shared),
            **(steps or {}),
        }
        self.steps.setdefault("g", GEPA(metric, **{**shared, **(gepa_options or {})}))
        self.strategy = parse_strategy(strategy, list(self.steps))

    def config(self) -> dict[str, Any]:
        used = dict.fromkeys(self.strategy)
        return {**super().config(), "strategy": f" {ARROW} ".join(self.strategy),
                "steps": {name: self.steps[name].config() for name in used}}

    def estimate_cost(self, program, trainset, valset) -> CostEstimate:
        breakdown: dict[str, int] = {}
        for i, name in enumerate(self.strategy):
            estimate = self.steps[name].estimate_cost(program, trainset, valset)
            breakdown[f"step {i} ({name})"] = estimate.lm_calls
        return CostEstimate(sum(breakdown.values()), breakdown)

    def _optimize(self, run, student, trainset, valset) -> None:
        program, score = student, None
        for i, name in enumerate(self.strategy):
            order = list(trainset)
            run.rng("shuffle", i).shuffle(order)
            run.reporter.message(f"BetterTogether step {i}: {name} "
                                 f"({self._prefix(i)})")
            program, score, error = self._run_step(run, i, name, program, score, order, valset)
            run.offer(program, score, f"step {i}: {name}" + (" (skipped)" if error else ""),
                      step=i, step_name=name, strategy_prefix=self._prefix(i), error=error)
            run.record_trial(i, "step", params={"name": name,
                                                "strategy_prefix": self._prefix(i)},
                             score=score["score"] if score else None, error=error,
                             candidate=len(run.candidates) - 1)

    def _run_step(
        self, run: OptimizationRun, i: int, name: str, program: Module,
        score: dict[str, Any] | None, trainset: list[Example], valset: list[Example] | None,
    ) -> tuple[Module, dict[str, Any] | None, str | None]:
        """(the step's program, its validation evaluation, the error that skipped the step)."""
        try:
            result = self._sub_optimize(run, i, name, program, trainset, valset)
        except NoTrainingDataError as exc:
            run.reporter.message(f"step {i} ({name}) skipped, the program is unchanged: {exc}")
            if score is None and valset:
                score = run.evaluate(program, valset, f"step{i}:{name}")
            return program, score, str(exc)
        if result.stopped_by_budget:
            raise BudgetExceeded(f"the budget ran out during step {i} ({name})")
        if not valset:  # a step may score on the training set; that must not pick the winner
            return result.program, None, None
        best = result.best_candidate  # the step's own validation score, when it has one
        if best is not None and best.score is not None:
            return result.program, {"score": best.score, "scores": best.scores,
                                    "examples": best.examples}, None
        return result.program, run.evaluate(result.program, valset, f"step{i}:{name}"), None

    def _sub_optimize(
        self, run: OptimizationRun, i: int, name: str, program: Module,
        trainset: list[Example], valset: list[Example] | None,
    ) -> OptimizationResult:
        return self.steps[name].optimize(
            program, trainset, valset,
            journal=PrefixedJournal(run.journal, f"step{i}:{name}:"),
            reporter=run.reporter,
            workdir=run.workdir / f"step{i}-{name}",
        )

    def _prefix(self, i: int) -> str:
        return f" {ARROW} ".join(self.strategy[: i + 1])
