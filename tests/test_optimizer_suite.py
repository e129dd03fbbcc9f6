"""Every optimizer in cotune, plugged into the shared suite."""

from optimizer_suite import OptimizerSuite
from test_better_together import StubTrainer

from cotune.optimize import (
    BetterTogether,
    BootstrapFewShot,
    BootstrapFinetune,
    BootstrapRandomSearch,
    LabeledFewShot,
    Vanilla,
)


class TestLabeledFewShot(OptimizerSuite):
    def make_optimizer(self, metric, seed):
        return LabeledFewShot(metric, k=3, seed=seed)


class TestBootstrapFewShot(OptimizerSuite):
    def make_optimizer(self, metric, seed):
        return BootstrapFewShot(metric, max_bootstrapped_demos=3, max_labeled_demos=2, seed=seed)


class TestBootstrapRandomSearch(OptimizerSuite):
    def make_optimizer(self, metric, seed):
        return BootstrapRandomSearch(metric, num_candidates=3, max_bootstrapped_demos=3,
                                     seed=seed, num_threads=2)


class TestBootstrapFinetune(OptimizerSuite):
    # the stub's tuned LM saves as no LM (like a context LM), so a saved program round-trips
    def make_optimizer(self, metric, seed):
        return BootstrapFinetune(metric, trainer=StubTrainer(saveable=False), seed=seed,
                                 num_threads=2)


class TestBetterTogether(OptimizerSuite):
    def make_optimizer(self, metric, seed):
        p = BootstrapRandomSearch(metric, num_candidates=2, max_bootstrapped_demos=3, seed=seed,
                                  num_threads=2)
        return BetterTogether(metric, strategy="p -> w -> p", prompt_optimizer=p,
                              trainer=StubTrainer(saveable=False), seed=seed, num_threads=2)


class TestVanilla(OptimizerSuite):
    def make_optimizer(self, metric, seed):
        return Vanilla(metric, seed=seed)
