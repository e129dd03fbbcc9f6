"""Bootstrap random search (the MIPRO paper's BRS baseline; BetterTogether's "p" step)."""

from __future__ import annotations

from typing import Any

from cotune.core.validate import check_int
from cotune.optimize.base import Optimizer
from cotune.optimize.bootstrap import (
    apply_demo_sets,
    bootstrap_demo_sets,
    sample_labelled_demos,
)
from cotune.optimize.registry import register_optimizer
from cotune.optimize.reporting import CostEstimate


@register_optimizer("bootstrap random search over demo sets")
class BootstrapRandomSearch(Optimizer):
    """Evaluate several demo-set candidates on the validation set and keep the best:
    zero-shot, labelled demos only, an unshuffled bootstrap, then ``num_candidates`` bootstraps
    of a shuffled training set with a random number of demos each."""

    name = "random-search"

    def __init__(
        self,
        metric: Any,
        *,
        num_candidates: int = 8,
        max_bootstrapped_demos: int = 4,
        max_labeled_demos: int = 4,
        **kwargs: Any,
    ) -> None:
        super().__init__(metric, **kwargs)
        self.num_candidates = check_int("num_candidates", num_candidates, minimum=0)
        self.max_bootstrapped_demos = check_int("max_bootstrapped_demos", max_bootstrapped_demos,
                                                minimum=0)
        self.max_labeled_demos = check_int("max_labeled_demos", max_labeled_demos, minimum=0)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "num_candidates": self.num_candidates,
                "max_bootstrapped_demos": self.max_bootstrapped_demos,
                "max_labeled_demos": self.max_labeled_demos}

    def estimate_cost(self, program, trainset, valset) -> CostEstimate:
        per_run = len(program.predictors())
        evaluations = (self.num_candidates + 3) * len(valset or trainset) * per_run
        bootstraps = (self.num_candidates + 1) * len(trainset) * per_run
        return CostEstimate(evaluations + bootstraps,
                            {"evaluation": evaluations, "bootstrap (at most)": bootstraps})

    def _optimize(self, run, student, trainset, valset) -> None:
        evalset = valset or trainset
        run.reporter.start_phase("demo-set candidates", self.num_candidates + 3)
        for seed in range(-3, self.num_candidates):
            candidate = student.reset_copy()
            if seed == -3:
                description = "zero-shot"
            elif seed == -2:
                sample_labelled_demos(candidate, trainset, self.max_labeled_demos,
                                      run.rng("labelled", seed))
                description = f"{self.max_labeled_demos} labelled demos"
            else:
                order = list(trainset)
                k = self.max_bootstrapped_demos
                if seed >= 0:
                    rng = run.rng("shuffle", seed)
                    rng.shuffle(order)
                    k = rng.randint(1, self.max_bootstrapped_demos)
                demo_sets = bootstrap_demo_sets(
                    run, candidate, order, k, self.max_labeled_demos, key=f"candidate{seed}",
                    threshold=self.metric_threshold, hindsight=self.hindsight,
                )
                apply_demo_sets(candidate, demo_sets)
                description = ("unshuffled" if seed == -1 else f"shuffled #{seed}") + \
                    f" bootstrap, up to {k} bootstrapped demos"
            evaluation = run.evaluate(candidate, evalset, f"candidate{seed}")
            run.offer(candidate, evaluation, description, candidate_seed=seed)
            run.reporter.advance(run.best_score)
