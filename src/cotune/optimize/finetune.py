"""BootstrapFinetune: BetterTogether's weight step ("w").

Run the program, with its current prompts, over the training set; keep the traces whose final
answer passes the metric (with ``hindsight``, also the failing traces' steps that the metric
relabels with what they should have answered); turn every predictor call of those traces into
a chat record rendered by the adapter exactly as the prompt is rendered at inference (same
instruction, same demos), with the traced output as the target; LoRA-tune each predictor's
LM on those records and point the predictors at the tuned LM.  Predictors that share an LM
share one adapter (multi-task), unless ``per_predictor``.

With a validation set the program as given is scored on it first: it is the baseline, and the
tuned program replaces it only with a gain beyond noise (``min_gain``), so a LoRA that learned
to do worse is reported and refused instead of returned.

Resume: the records and, once trained, each adapter's description (path and sha256) are
journaled, so a rerun rebuilds the tuned LM from the adapter file instead of training again.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any, Protocol

from cotune.core import Module
from cotune.core.example import Example
from cotune.core.predict import Predict
from cotune.core.runtime import ChatModel, current_lm
from cotune.core.validate import check_bool
from cotune.finetune.errors import NoTrainingDataError
from cotune.finetune.records import RECORDS_FILE, write_records
from cotune.lm.base import LM
from cotune.lm.description import AdapterFileError, has_lora
from cotune.lm.factory import lm_from_description
from cotune.optimize.base import OptimizationRun, Optimizer
from cotune.optimize.registry import register_optimizer
from cotune.optimize.reporting import CostEstimate, Reporter
from cotune.optimize.traces import SuccessfulTrace, collect_successful_traces

Record = dict[str, list[dict[str, str]]]


class FineTuner(Protocol):
    """What BootstrapFinetune needs from a trainer (``cotune.finetune.LoraTrainer``).

    A trainer may also offer ``load_tuned(lm, description) -> LM``, rebuilding a tuned LM from
    its ``describe()`` on resume; without it, llama.cpp descriptions are rebuilt by
    :func:`restore_tuned_lm`.
    """

    def fine_tune(self, lm: Any, records: list[Record], out_dir: Path) -> Any: ...


@dataclass
class TrainingGroup:
    """Predictors that get one adapter together: those sharing an LM (or a single one)."""

    lm: ChatModel
    predictors: list[str]


@register_optimizer("LoRA fine-tuning on the program's own passing traces")
class BootstrapFinetune(Optimizer):
    """Fine-tune each predictor's LM on the program's own successful traces.

    Args:
        trainer: any object with ``fine_tune(lm, records, out_dir) -> LM``; by default a
            ``cotune.finetune.LoraTrainer()`` (created on first use: torch is imported lazily).
        lora: LoRA settings of the default trainer (a ``LoraSettings`` or its fields as a
            dict, e.g. ``{"epochs": 1}``); not with ``trainer``.
        per_predictor: one adapter per predictor instead of one per distinct LM.
        train_without_demos: render training prompts without the predictors' demos (the tuned
            LM should then be used zero-shot).
        evaluate_baseline: score the program as given on the validation set before tuning (one
            extra pass over it), so that the tuned program replaces it only with a gain the
            ``min_gain`` rule accepts; BetterTogether turns this off for its "w" step, whose
            input it has scored already.
    """

    name = "finetune"

    def __init__(
        self,
        metric: Any,
        *,
        trainer: FineTuner | None = None,
        lora: Any = None,
        per_predictor: bool = False,
        train_without_demos: bool = False,
        evaluate_baseline: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(metric, **kwargs)
        if trainer is not None and lora is not None:
            raise ValueError("give LoRA settings to your trainer, not to BootstrapFinetune")
        self._trainer = trainer
        self.lora = dict(lora) if isinstance(lora, Mapping) else lora
        if isinstance(self.lora, dict):
            _check_lora(self.lora)
        elif self.lora is not None and not is_dataclass(self.lora):
            raise ValueError(f"lora must be a table of LoRA settings, got {self.lora!r}")
        self.per_predictor = check_bool("per_predictor", per_predictor)
        self.train_without_demos = check_bool("train_without_demos", train_without_demos)
        self.evaluate_baseline = check_bool("evaluate_baseline", evaluate_baseline)

    @property
    def trainer(self) -> FineTuner:
        if self._trainer is None:
            from cotune.finetune import LoraSettings, LoraTrainer

            settings = LoraSettings(**self.lora) if isinstance(self.lora, dict) else self.lora
            self._trainer = LoraTrainer(settings) if settings is not None else LoraTrainer()
        return self._trainer

    def config(self) -> dict[str, Any]:
        return {**super().config(), "per_predictor": self.per_predictor,
                "train_without_demos": self.train_without_demos,
                "evaluate_baseline": self.evaluate_baseline,
                "trainer": describe_trainer(self.trainer)}

    def estimate_cost(self, program, trainset, valset) -> CostEstimate:
        per_run = len(program.predictors())
        bootstrap = len(trainset) * per_run
        evaluation = len(valset or []) * per_run
        parts = {"bootstrap": bootstrap, "evaluation": evaluation}
        if self.evaluate_baseline and valset:
            parts["baseline"] = evaluation
        return CostEstimate(sum(parts.values()), parts)

    def _optimize(self, run, student, trainset, valset) -> None:
        groups = training_groups(student, per_predictor=self.per_predictor)
        if self.evaluate_baseline and valset:
            # a copy: the student's predictors are pointed at the tuned LM below
            run.offer(student.deepcopy(), run.evaluate(student, valset, "baseline"),
                      "baseline: the program as given, before fine-tuning")
        data = run.journal.memo(
            "finetune:records", lambda: self._collect_records(run, student, trainset, groups)
        )
        if data["passed"] == 0:
            hint = ("" if self.hindsight else
                    "; hindsight=True would also learn from failing traces, where the metric "
                    "gives targets")
            raise NoTrainingDataError(
                f"no trace passed the metric (threshold {self.metric_threshold}) on the "
                f"{data['tried']} training examples tried: nothing to fine-tune on{hint}"
            )
        adapters = []
        for n, (group, records) in enumerate(zip(groups, data["records"], strict=True)):
            if not records:  # these predictors never ran in a passing trace
                continue
            tuned = self._tuned_lm(run, n, group, records)
            for p in _predictors(student, group.predictors):
                p.lm = tuned
            adapters.append({"predictors": group.predictors, "records": len(records),
                             "lm": tuned.describe()})
        evaluation = run.evaluate(student, valset, "finetune") if valset else None
        relabeled = data.get("relabeled", 0)
        source = (f"{data['passed']} traces, {relabeled} of them relabeled by hindsight"
                  if self.hindsight else f"{data['passed']} passing traces")
        run.offer(student, evaluation, f"fine-tuned on {source}", adapters=adapters)

    def _collect_records(
        self, run: OptimizationRun, student: Module, trainset: list[Example],
        groups: list[TrainingGroup],
    ) -> dict[str, Any]:
        run.reporter.message(f"collecting fine-tuning traces on {len(trainset)} examples")
        traces = collect_successful_traces(
            student, trainset, run.metric, threshold=self.metric_threshold,
            num_threads=run.num_threads, executor=run.optimizer.executor,
            hindsight=self.hindsight,
        )
        records = training_records(student, traces, with_demos=not self.train_without_demos)
        group_of = {name: i for i, g in enumerate(groups) for name in g.predictors}
        grouped: list[list[Record]] = [[] for _ in groups]
        for name, record in records:
            grouped[group_of[name]].append(record)
        return {"tried": len(trainset), "passed": len(traces),
                "relabeled": sum(t.relabeled for t in traces), "records": grouped}

    def _tuned_lm(
        self, run: OptimizationRun, n: int, group: TrainingGroup, records: list[Record]
    ) -> Any:
        """The LM tuned for ``group``: rebuilt from the journal when a previous attempt
        trained it, else trained now (and journaled)."""
        key = f"finetune:adapter{n}"
        saved = run.journal.get(key)
        if saved is not None:
            restored = self._restore(group.lm, saved["lm"], run.reporter)
            if restored is not None:
                return restored
        out_dir = (run.workdir / f"finetune-{n}").resolve()  # recorded in program.json
        out_dir.mkdir(parents=True, exist_ok=True)
        run.reporter.message(
            f"fine-tuning {group.lm.model} for "
            f"{', '.join(group.predictors)} on {len(records)} records in {out_dir}"
        )
        tuned = self.trainer.fine_tune(group.lm, records, out_dir)
        if not (out_dir / RECORDS_FILE).is_file():  # a trainer that keeps no records of its own
            write_records(out_dir / RECORDS_FILE, records)
        run.journal.put(key, {"lm": tuned.describe(), "predictors": group.predictors,
                              "records": len(records)})
        return tuned

    def _restore(self, base: ChatModel, description: Any, reporter: Reporter) -> Any:
        load_tuned = getattr(self.trainer, "load_tuned", None)
        try:
            if callable(load_tuned):
                return load_tuned(base, description)
            return restore_tuned_lm(description, like=base)
        except (AdapterFileError, FileNotFoundError) as exc:
            reporter.message(f"cannot reuse the journaled adapter ({exc}); training again")
            return None


# -- training data -------------------------------------------------------------------------------


def training_groups(program: Module, *, per_predictor: bool = False) -> list[TrainingGroup]:
    """Predictors grouped by the LM that answers them (the same LM object), in program order.
    A predictor without an LM of its own uses the one of the current context."""
    groups: list[TrainingGroup] = []
    by_lm: dict[int, TrainingGroup] = {}
    for name, p in program.named_predictors():
        lm = p.lm or current_lm()
        if lm is None:
            raise ValueError(
                f"predictor {name!r} has no LM to fine-tune: bind one or use cotune.context(lm=)"
            )
        group = None if per_predictor else by_lm.get(id(lm))
        if group is None:
            group = TrainingGroup(lm, [])
            groups.append(group)
            by_lm[id(lm)] = group
        group.predictors.append(name)
    return groups


def training_records(
    program: Module, traces: Sequence[SuccessfulTrace], *, with_demos: bool = True
) -> list[tuple[str, Record]]:
    """``(predictor name, chat record)`` for every predictor call of ``traces``, in order.

    The record is the exact prompt the predictor sends at inference (its instruction, its
    demos minus any demo of this very query, as ``Predict`` drops it) plus the traced answer.
    """
    predictors = dict(program.named_predictors())
    records = []
    for t in traces:
        for name, inputs, outputs in t.steps:
            p = predictors.get(name)
            if p is None:
                continue
            adapter = p.effective_adapter()  # the one that formats its prompts at inference
            render = getattr(adapter, "format_training_example", None)
            if not callable(render):
                raise TypeError(f"{type(adapter).__name__} cannot render training examples "
                                "(no format_training_example)")
            demos = p.demos_for(inputs) if with_demos else []
            records.append((name, render(p.active_signature, demos, inputs, outputs)))
    return records


def _predictors(program: Module, names: Sequence[str]) -> list[Predict]:
    by_name = dict(program.named_predictors())
    return [by_name[n] for n in names]


# -- describing and rebuilding tuned LMs ---------------------------------------------------------


def describe_trainer(trainer: Any) -> dict[str, Any]:
    settings = getattr(trainer, "settings", None)
    entry: dict[str, Any] = {"class": type(trainer).__name__}
    if is_dataclass(settings) and not isinstance(settings, type):
        entry["settings"] = json.loads(json.dumps(asdict(settings), default=str))
    return entry


def restore_tuned_lm(description: Any, *, like: Any = None) -> LM:
    """A fine-tuned LM (a local GGUF model with a LoRA adapter) rebuilt from its journaled
    ``describe()`` by :func:`cotune.lm.lm_from_description`, which checks that the files are
    the ones recorded; ``like``: the base LM it was trained from, whose runtime settings it
    gets, exactly as the trainer built it."""
    if not has_lora(description):
        raise AdapterFileError(
            f"cannot rebuild a fine-tuned LM from {description!r}: only llama.cpp LMs with a "
            "LoRA adapter can be rebuilt"
        )
    return lm_from_description(description, like=like)


def _check_lora(settings: dict[str, Any]) -> None:
    """LoRA settings given as a table are checked now, not when training starts."""
    from cotune.finetune.settings import LoraSettings

    try:
        LoraSettings(**settings)
    except TypeError as exc:
        known = ", ".join(LoraSettings.__dataclass_fields__)
        raise ValueError(f"lora: {exc}; known settings: {known}") from None
    except ValueError as exc:
        raise ValueError(f"lora: {exc}") from None
