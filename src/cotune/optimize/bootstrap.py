"""Few-shot optimizers: labelled demos, and demos bootstrapped from the program's own traces."""

from __future__ import annotations

import functools
import random
from collections.abc import Sequence
from typing import Any

from cotune.core import Module
from cotune.core.example import Example
from cotune.core.jsonable import demo_from_json, demo_to_json
from cotune.core.predict import is_same_query, labelled_demo
from cotune.core.validate import check_int
from cotune.optimize.base import OptimizationRun, Optimizer
from cotune.optimize.registry import register_optimizer
from cotune.optimize.reporting import CostEstimate
from cotune.optimize.traces import SuccessfulTrace, collect_successful_traces


def demo_sets_from_traces(
    program: Module, traces: Sequence[SuccessfulTrace], max_demos: int
) -> dict[str, list[Example]]:
    """Per predictor name, up to ``max_demos`` demos (one per trace, first call of each)."""
    demos: dict[str, list[Example]] = {name: [] for name, _ in program.named_predictors()}
    for t in traces:
        used: set[str] = set()
        for name, inputs, outputs in t.steps:
            if name in used or name not in demos or len(demos[name]) >= max_demos:
                continue
            used.add(name)
            demos[name].append(Example({**inputs, **outputs}, input_keys=inputs.keys()))
    return demos


def demos_to_json(demo_sets: dict[str, list[Example]]) -> dict[str, Any]:
    return {
        name: [demo_to_json(d) for d in demos]
        for name, demos in demo_sets.items()
    }


def demos_from_json(data: dict[str, Any]) -> dict[str, list[Example]]:
    return {
        name: [demo_from_json(d) for d in demos]
        for name, demos in data.items()
    }


def without_example(program: Module, example: Example) -> Module:
    """A copy of ``program`` whose demos exclude ``example`` (no example is its own demo)."""
    copy = program.deepcopy()
    for p in copy.predictors():
        p.demos = [d for d in p.demos if not is_same_query(example, d.inputs())]
    return copy


def sample_labelled_demos(
    program: Module, trainset: Sequence[Example], k: int, rng: random.Random
) -> None:
    """Give each predictor of ``program`` ``k`` (or all there are) of the training examples
    that make complete labelled demos for it, drawn with ``rng``."""
    for p in program.predictors():
        usable = [d for ex in trainset if (d := labelled_demo(p, ex)) is not None]
        p.demos = rng.sample(usable, min(k, len(usable)))


def _without_example_at(trainset: Sequence[Example], program: Module, index: int) -> Module:
    return without_example(program, trainset[index])


@register_optimizer("labelled demos sampled from the training set")
class LabeledFewShot(Optimizer):
    """Demos sampled (with the seed) from labelled training examples."""

    name = "labeled"

    def __init__(self, metric: Any = None, *, k: int = 4, **kwargs: Any) -> None:
        super().__init__(metric, **kwargs)
        self.k = check_int("k", k, minimum=0)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "k": self.k}

    def estimate_cost(self, program, trainset, valset) -> CostEstimate:
        return CostEstimate(0, exact=True)

    def _optimize(self, run, student, trainset, valset) -> None:
        sample_labelled_demos(student, trainset, self.k, run.rng("labeled"))
        run.offer(student, None, f"{self.k} labelled demos")


@register_optimizer("demos bootstrapped from the program's own traces")
class BootstrapFewShot(Optimizer):
    """Run a teacher (by default the student itself) over the training set, keep the traces
    whose final answer passes the metric, and make each predictor step a demo for that
    predictor; labelled demos fill the remaining slots."""

    name = "bootstrap"

    def __init__(
        self,
        metric: Any,
        *,
        max_bootstrapped_demos: int = 4,
        max_labeled_demos: int = 4,
        teacher: Module | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(metric, **kwargs)
        self.max_bootstrapped_demos = check_int("max_bootstrapped_demos", max_bootstrapped_demos,
                                                minimum=0)
        self.max_labeled_demos = check_int("max_labeled_demos", max_labeled_demos, minimum=0)
        if teacher is not None and not isinstance(teacher, Module):
            raise ValueError(f"teacher must be a cotune Module, got {type(teacher).__name__}")
        self.teacher = teacher

    def config(self) -> dict[str, Any]:
        return {**super().config(), "max_bootstrapped_demos": self.max_bootstrapped_demos,
                "max_labeled_demos": self.max_labeled_demos}

    def estimate_cost(self, program, trainset, valset) -> CostEstimate:
        calls = len(trainset) * len(program.predictors())
        return CostEstimate(calls, {"bootstrap": calls})

    def _optimize(self, run, student, trainset, valset) -> None:
        demo_sets = bootstrap_demo_sets(
            run, student, trainset, self.max_bootstrapped_demos, self.max_labeled_demos,
            key="bootstrap", teacher=self.teacher, threshold=self.metric_threshold,
            hindsight=self.hindsight,
        )
        apply_demo_sets(student, demo_sets)
        evaluation = run.evaluate(student, valset, "bootstrap") if valset else None
        run.offer(student, evaluation, "bootstrapped demos",
                  demos={k: len(v) for k, v in demo_sets.items()})


def bootstrap_demo_sets(
    run: OptimizationRun,
    student: Module,
    trainset: list[Example],
    max_bootstrapped: int,
    max_labeled: int,
    *,
    key: str,
    teacher: Module | None = None,
    threshold: float = 1.0,
    hindsight: bool = False,
) -> dict[str, list[Example]]:
    """Bootstrapped (then labelled) demo sets per predictor, journaled under ``key``
    (``hindsight``: relabeled failing traces count too, see :mod:`cotune.optimize.traces`)."""

    def compute() -> dict[str, Any]:
        source = teacher if teacher is not None else student
        traces = [] if max_bootstrapped <= 0 else collect_successful_traces(
            source, trainset, run.metric, threshold=threshold, num_threads=run.num_threads,
            # with hindsight a kept trace may credit one predictor only: go through them all
            wanted=None if hindsight else max_bootstrapped,
            prepare=functools.partial(_without_example_at, trainset),
            executor=run.optimizer.executor, hindsight=hindsight,
        )
        sets = demo_sets_from_traces(student, traces, max_bootstrapped)
        used = {t.example_index for t in traces}
        for name, p in student.named_predictors():
            labelled = [
                d for i, ex in enumerate(trainset)
                if i not in used and (d := labelled_demo(p, ex)) is not None
            ]
            sets[name].extend(labelled[:max_labeled])
        return demos_to_json(sets)

    return demos_from_json(run.journal.memo(f"demos:{key}", compute))


def apply_demo_sets(program: Module, demo_sets: dict[str, list[Example]]) -> None:
    for name, p in program.named_predictors():
        p.demos = list(demo_sets.get(name, []))
