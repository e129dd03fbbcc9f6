"""Every optimizer in cotune, plugged into the shared suite."""

from optimizer_suite import OptimizerSuite

from cotune.optimize import BootstrapFewShot, BootstrapRandomSearch, LabeledFewShot


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
