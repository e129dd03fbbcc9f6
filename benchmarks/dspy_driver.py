"""DSPy's side of ``benchmarks/vs_dspy.py``; runs inside the DSPy venv (``dspy==3.4.1``).

Only DSPy's public API and the standard library: no cotune here.

    python dspy_driver.py optimize [--task iris|gsm8k] --split split.json --api-base URL \\
        --model openai/NAME --optimizer zero-shot|random-search|mipro-light|gepa-light \\
        [--gepa-metric-calls N] --out result.json
    python dspy_driver.py overhead --api-base STUB_URL -n 2000 --threads 1 8 --out result.json

``optimize`` builds the Iris program (one ``dspy.Predict``, the same fields and instruction as
cotune's) or the GSM8K one (one ``dspy.ChainOfThought``, likewise cotune's), optimizes it on the
split's train/val examples, scores it with ``dspy.Evaluate`` on val and test, and writes accuracies
and wall time as JSON. ``gepa-light`` is ``dspy.GEPA(auto="light")`` (or ``max_metric_calls=N``)
with the feedback metric "Correct." / "Expected X, got Y." (GSM8K: cotune's words, "Expected the
number X; the answer gave Y.") and a reflection LM of the same model at temperature 1.0
(``--reflection-api-base`` lets the caller count its requests apart). ``overhead`` times
``dspy.Evaluate`` of ``Predict("question -> answer")`` against an instant stub server. DSPy's cache
is off.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network fetch at import
os.environ.setdefault("DSPY_CACHEDIR", tempfile.mkdtemp(prefix="dspy-cache-"))

import dspy  # noqa: E402 - after the environment it reads

OPTIMIZERS = ("zero-shot", "random-search", "mipro-light", "gepa-light")


class ClassifyIris(dspy.Signature):
    """Given the petal and sepal dimensions in cm, predict the iris species."""

    petal_length: float = dspy.InputField()
    petal_width: float = dspy.InputField()
    sepal_length: float = dspy.InputField()
    sepal_width: float = dspy.InputField()
    species: Literal["setosa", "versicolor", "virginica"] = dspy.OutputField()


def species_match(example: dspy.Example, prediction: Any, trace: Any = None) -> float:
    return float(getattr(prediction, "species", None) == example.species)


def species_feedback(gold: dspy.Example, pred: Any, trace: Any = None, pred_name: Any = None,
                     pred_trace: Any = None) -> dspy.Prediction:
    """GEPA's metric: the score and a line of feedback on it."""
    got = getattr(pred, "species", None)
    score = float(got == gold.species)
    feedback = "Correct." if score else f"Expected {gold.species}, got {got}."
    return dspy.Prediction(score=score, feedback=feedback)


class SolveMath(dspy.Signature):
    """Solve the math word problem."""

    question: str = dspy.InputField()
    answer: float = dspy.OutputField(desc="the final answer, as a number only")


def read_number(value: Any) -> float | None:
    """The last number in an answer (``"$1,080."`` -> 1080.0): cotune's GSM8K reading, without
    its ``####`` marker handling (this driver may not import cotune)."""
    if isinstance(value, int | float):
        return float(value)
    found = re.findall(r"-?\d[\d,]*(?:\.\d+)?", str(value or ""))
    return float(found[-1].replace(",", "")) if found else None


def number_match(example: dspy.Example, prediction: Any, trace: Any = None) -> float:
    got = read_number(getattr(prediction, "answer", None))
    gold = float(example.answer)
    return float(got is not None and abs(got - gold) <= 1e-6 * max(1.0, abs(gold)))


def number_feedback(gold: dspy.Example, pred: Any, trace: Any = None, pred_name: Any = None,
                    pred_trace: Any = None) -> dspy.Prediction:
    score = number_match(gold, pred)
    if score:
        return dspy.Prediction(score=score, feedback=f"Correct: {gold.answer}.")
    got = read_number(getattr(pred, "answer", None))
    said = "no number" if got is None else f"{got:g}"
    return dspy.Prediction(score=score,
                           feedback=f"Expected the number {gold.answer}; the answer gave {said}.")


TASKS = {
    # name: (program factory, metric, GEPA's feedback metric)
    "iris": (lambda: dspy.Predict(ClassifyIris), species_match, species_feedback),
    "gsm8k": (lambda: dspy.ChainOfThought(SolveMath), number_match, number_feedback),
}


def load_split(path: Path) -> dict[str, list[dspy.Example]]:
    """``{"input_keys": [...], "train": [{...}], "val": [...], "test": [...]}`` -> Examples."""
    data = json.loads(path.read_text())
    keys = data["input_keys"]
    return {
        name: [dspy.Example(**row).with_inputs(*keys) for row in data[name]]
        for name in ("train", "val", "test")
    }


def disable_cache() -> None:
    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)


def accuracy(program: dspy.Module, examples: list[dspy.Example], threads: int,
             metric: Any) -> float | None:
    if not examples:
        return None
    evaluate = dspy.Evaluate(devset=examples, metric=metric, num_threads=threads,
                             display_progress=False, max_errors=len(examples) + 1)
    result = evaluate(program)
    return sum(float(score) for _, _, score in result.results) / len(examples)


def compile_program(name: str, task: str, split: dict, threads: int, seed: int,
                    reflection_lm: dspy.LM | None = None, info: dict | None = None,
                    gepa_metric_calls: int | None = None):
    """The optimizer's program for the task (zero-shot: the program as it comes); what the
    optimizer reports of its own run goes into ``info``."""
    info = {} if info is None else info
    make_program, metric, feedback_metric = TASKS[task]
    program = make_program()
    train, val = split["train"], split["val"] or None
    max_errors = len(split["train"]) + len(split["val"]) + 1  # never stop on parse failures
    if name == "zero-shot":
        return program
    if name == "random-search":
        optimizer = dspy.BootstrapFewShotWithRandomSearch(
            metric=metric, num_threads=threads, max_errors=max_errors)
        return optimizer.compile(program, trainset=train, valset=val)
    if name == "mipro-light":
        optimizer = dspy.MIPROv2(metric=metric, auto="light", num_threads=threads,
                                 seed=seed, max_errors=max_errors)
        minibatch_size = min(35, len(val or train))  # DSPy's default, or the whole valset
        return optimizer.compile(program, trainset=train, valset=val,
                                 minibatch_size=minibatch_size)
    if name == "gepa-light":
        budget = ({"max_metric_calls": gepa_metric_calls} if gepa_metric_calls
                  else {"auto": "light"})
        optimizer = dspy.GEPA(metric=feedback_metric, reflection_lm=reflection_lm,
                              num_threads=threads, seed=seed, track_stats=True, **budget)
        compiled = optimizer.compile(program, trainset=train, valset=val)
        details = compiled.detailed_results
        info.update(metric_budget=optimizer.max_metric_calls,
                    metric_calls=details.total_metric_calls,
                    full_val_evals=details.num_full_val_evals,
                    candidates=len(details.candidates),
                    candidate_val_scores=list(details.val_aggregate_scores))
        return compiled
    raise ValueError(f"unknown optimizer {name!r}; use one of {OPTIMIZERS}")


def run_optimize(args: argparse.Namespace) -> dict[str, Any]:
    disable_cache()
    split = load_split(args.split)
    lm = dspy.LM(args.model, api_base=args.api_base, api_key="EMPTY", temperature=0.0,
                 max_tokens=args.max_tokens, cache=False)
    dspy.configure(lm=lm)
    reflection_lm = dspy.LM(args.model, api_base=args.reflection_api_base or args.api_base,
                            api_key="EMPTY", temperature=1.0, max_tokens=args.max_tokens,
                            cache=False)
    info: dict[str, Any] = {}
    started = time.perf_counter()
    program = compile_program(args.optimizer, args.task, split, args.threads, args.seed,
                              reflection_lm, info, args.gepa_metric_calls)
    optimized_s = time.perf_counter() - started
    metric = TASKS[args.task][1]
    val = accuracy(program, split["val"], args.threads, metric)
    test = accuracy(program, split["test"], args.threads, metric)
    predictor = program.predictors()[0]
    return {
        "task": args.task,
        "optimizer": args.optimizer,
        "dspy_version": dspy.__version__,
        "val_accuracy": val,
        "test_accuracy": test,
        "optimize_s": round(optimized_s, 3),
        "wall_s": round(time.perf_counter() - started, 3),
        "instruction": predictor.signature.instructions,
        "demos": len(predictor.demos),
        **info,
    }


def run_overhead(args: argparse.Namespace) -> dict[str, Any]:
    disable_cache()
    lm = dspy.LM("openai/stub", api_base=args.api_base, api_key="EMPTY", temperature=0.0,
                 cache=False)
    program = dspy.Predict("question -> answer")
    devset = [dspy.Example(question=f"What is {i} plus {i}?", answer="42").with_inputs("question")
              for i in range(args.examples)]

    def metric(example: dspy.Example, prediction: Any, trace: Any = None) -> bool:
        return prediction.answer == example.answer

    rows = []
    with dspy.context(lm=lm):
        for threads in args.threads:
            def evaluate(examples: list, t: int = threads) -> float:
                return dspy.Evaluate(devset=examples, metric=metric, num_threads=t,
                                     display_progress=False)(program).score

            evaluate(devset[:50])  # warm up: connections, imports
            best = None
            for _ in range(args.repeats):
                wall0, cpu0 = time.perf_counter(), time.process_time()
                score = evaluate(devset)
                wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
                if best is None or wall < best["wall_s"]:
                    best = {"case": "dspy.Evaluate + dspy.LM", "threads": threads,
                            "examples_per_s": args.examples / wall,
                            "cpu_ms_per_example": 1e3 * cpu / args.examples,
                            "wall_s": wall, "score": score}
            rows.append(best)
            lm.history.clear()  # DSPy keeps every call: don't let memory grow across rows
    return {"dspy_version": dspy.__version__, "examples": args.examples,
            "repeats": args.repeats, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    opt = commands.add_parser("optimize", help="optimize and score the task's program")
    opt.add_argument("--task", choices=TASKS, default="iris")
    opt.add_argument("--split", type=Path, required=True, help="the split as JSON")
    opt.add_argument("--api-base", required=True, help="the OpenAI-compatible base URL (…/v1)")
    opt.add_argument("--model", required=True, help="LiteLLM-style name, e.g. openai/qwen")
    opt.add_argument("--optimizer", choices=OPTIMIZERS, required=True)
    opt.add_argument("--threads", type=int, default=2)
    opt.add_argument("--seed", type=int, default=0)
    opt.add_argument("--max-tokens", type=int, help="the LM's cap per answer (default: none)")
    opt.add_argument("--reflection-api-base", help="GEPA's reflection LM's base URL "
                     "(default: --api-base)")
    opt.add_argument("--gepa-metric-calls", type=int,
                     help="gepa-light: this max_metric_calls instead of auto='light'")
    opt.add_argument("--out", type=Path, required=True)
    over = commands.add_parser("overhead", help="examples/s of dspy.Evaluate on a stub server")
    over.add_argument("--api-base", required=True)
    over.add_argument("-n", "--examples", type=int, default=2000)
    over.add_argument("--threads", type=int, nargs="+", default=[1, 8])
    over.add_argument("--repeats", type=int, default=3)
    over.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    result = run_optimize(args) if args.command == "optimize" else run_overhead(args)
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
