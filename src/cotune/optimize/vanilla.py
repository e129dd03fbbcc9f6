"""The no-op baseline, so that the unoptimized program sits in the same tables and run
folders as the optimizers."""

from __future__ import annotations

from cotune.optimize.base import OptimizationRun, Optimizer
from cotune.optimize.registry import register_optimizer
from cotune.optimize.reporting import CostEstimate


@register_optimizer("no optimization: the program as it comes")
class Vanilla(Optimizer):
    """No optimization: the program as it comes, scored on the validation set."""

    name = "vanilla"

    def estimate_cost(self, program, trainset, valset) -> CostEstimate:
        calls = len(valset or []) * len(program.predictors())
        return CostEstimate(calls, {"evaluation": calls})

    def _optimize(self, run: OptimizationRun, student, trainset, valset) -> None:
        evaluation = run.evaluate(student, valset, self.name) if valset else None
        run.offer(student, evaluation, "the unoptimized program")
