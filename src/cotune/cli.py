"""The ``cotune`` command line."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cotune.lm.redact import RedactingFilter, redact
from cotune.optimize.registry import optimizer_help, preset_help, registered_optimizers

if TYPE_CHECKING:  # imported where used: the CLI starts fast
    from cotune.optimize import Candidate, Trial
    from cotune.runs.bench import BenchSpec
    from cotune.runs.view import RunResult, RunView

app = typer.Typer(
    help="Optimize LM programs end to end: prompts and LoRA weights.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(stderr=True)
T = TypeVar("T")

ModelOpt = Annotated[
    str, typer.Option(help="Packaged model name (see `cotune models`), a GGUF path, or the "
                      "model name on --base-url; server:NAME runs it on the batched "
                      "llama-server engine.")
]
BaseUrlOpt = Annotated[
    str | None, typer.Option(help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1; "
                              "several, comma-separated, are replicas served as one pool")
]
MlflowOpt = Annotated[
    str | None, typer.Option("--mlflow", metavar="URI", help="Log the finished run (each bench "
                             "cell) to this MLflow tracking URI, e.g. sqlite:///mlflow.db "
                             "(needs cotune[mlflow]).")
]
TimeoutOpt = Annotated[
    float | None, typer.Option(help="Seconds per request to --base-url (default 120); a request "
                               "that takes longer is retried, then an error.")
]
LM_FAILURE_EXIT = 3
"""Exit status when the LM failed (unreachable, erroring, invalid answers): no result, retry."""
NCtxOpt = Annotated[
    int | None, typer.Option("--n-ctx", min=1, help="Context length of the embedded engine "
                             "(default: the model's trained length, capped to fit memory).")
]


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING)
    for handler in logging.getLogger().handlers:  # no secret in a log line either
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())


@app.command()
def evaluate(
    task: Annotated[str, typer.Option(help="Task name (see `cotune tasks`).")] = "iris",
    model: ModelOpt = "smollm2-135m",
    base_url: BaseUrlOpt = None,
    n_ctx: NCtxOpt = None,
    split: Annotated[str, typer.Option(help="train, val or test")] = "test",
    limit: Annotated[int | None, typer.Option(help="Evaluate only the first N examples.")] = None,
    demos: Annotated[int, typer.Option(
        help="Add N labelled demos from the train split (default 0: the program as it is).")]
    = 0,
    program: Annotated[
        Path | None, typer.Option(help="A saved program (JSON) to load into the task's program.")
    ] = None,
    threads: Annotated[int, typer.Option(help="Worker threads.")] = 4,
    seed: Annotated[int, typer.Option(help="Seed of the data split.")] = 0,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Bypass the LM cache.")] = False,
    out: Annotated[Path | None, typer.Option(help="Write per-example results as JSON.")] = None,
    timeout: TimeoutOpt = None,
) -> None:
    """Evaluate a task's program on one split and print the score."""
    _guarded(lambda: _check_evaluate_options(limit, demos, threads))
    result, the_task, prog, devset = _guarded(lambda: _run_evaluation(
        task, model, base_url, split, limit, demos, program, threads, seed, no_cache, timeout,
        n_ctx))
    from cotune.evaluate.stats import bootstrap_ci
    from cotune.runs.formatting import format_score
    from cotune.runs.optimize import compare_with_reference
    from cotune.runs.view import ReferenceComparison

    interval = bootstrap_ci(result.scores, seed=seed) if result.scores else None
    table = Table(title=f"{task} / {split}")
    table.add_column("score", justify="right", no_wrap=True)  # with its 95% interval
    for column in ("examples", "errors", "LM calls", "cache hits", "tokens", "wall s"):
        table.add_column(column, justify="right", no_wrap=column == "examples")
    u = result.usage
    table.add_row(
        format_score(result.score, interval), str(len(result.results)),
        str(result.num_errors), str(u.calls), str(u.cache_hits), str(u.total_tokens),
        f"{result.elapsed_s:.1f}",
    )
    Console().print(table)
    metrics: dict[str, Any] = {}
    for name, metric in the_task.extra_metrics.items():
        values = result.values_of(metric)
        metric_interval = bootstrap_ci(values, seed=seed) if values else None
        metrics[name] = {"mean": result.mean_of(metric), "values": values,
                         "interval": metric_interval.to_json() if metric_interval else None}
        console.print(f"{name}: {format_score(metrics[name]['mean'], metric_interval)}",
                      markup=False, highlight=False)
    # the task's no-LM baseline (BM25 on the claim alone, say), paired on the same examples
    reference = compare_with_reference(
        the_task, prog, devset,
        {"scores": result.scores, "metric_scores": {n: m["values"] for n, m in metrics.items()}},
        seed)
    comparison = ReferenceComparison.from_json(reference)
    if comparison is not None:
        console.print(comparison.sentence(split), markup=False, highlight=False)
    elif reference and reference.get("error"):
        console.print(reference["error"], markup=False, highlight=False)
    if out is not None:
        from cotune.runs.folder import write_atomic

        record = {"task": task, "split": split, "seed": seed, **result.to_json(),
                  "interval": interval.to_json() if interval else None,
                  "metrics": metrics, "reference": reference}
        _guarded(lambda: write_atomic(out, json.dumps(record, indent=2, ensure_ascii=False)))
        console.print(f"per-example results written to {out}", markup=False, highlight=False)


def _check_evaluate_options(limit: int | None, demos: int, threads: int) -> None:
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be >= 1 (leave it out to evaluate the whole split), "
                         f"got {limit}")
    if demos < 0:
        raise ValueError(f"--demos must be >= 0, got {demos}")
    if threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")


def _run_evaluation(task: str, model: str, base_url: str | None, split: str, limit: int | None,
                    demos: int, program: Path | None, threads: int, seed: int,
                    no_cache: bool, timeout: float | None, n_ctx: int | None
                    ) -> tuple[Any, Any, Any, list[Any]]:
    """The evaluation's result, the task, the program it scored and the examples."""
    from cotune.core.runtime import context
    from cotune.evaluate import Evaluate
    from cotune.lm.cache import cache_disabled
    from cotune.lm.factory import make_lm
    from cotune.runs.programs import load_program
    from cotune.tasks import get_task
    from cotune.tasks.demos import labelled_demos

    if n_ctx is not None and base_url:
        raise ValueError("--n-ctx applies to the embedded engine, not to a --base-url server")
    the_task = get_task(task)
    splits = the_task.load_splits(seed=seed)
    devset = splits.get(split)
    if limit is not None:
        devset = devset[:limit]
    if not devset:
        raise ValueError(f"the {split} split of {task} is empty: nothing to evaluate")
    prog = the_task.make_program()
    if program is not None:
        if not program.is_file():
            raise FileNotFoundError(f"saved program not found: {program}")
        load_program(prog, program, restore_lms=True)  # fine-tuned LMs come back too
    elif demos:
        for predictor in prog.predictors():
            predictor.demos = labelled_demos(splits.train, demos, seed=seed, predictor=predictor)

    console.print(f"{task}: {len(devset)} {split} examples, model {model}"
                  + (f" at {redact(base_url)}" if base_url else " (llama-server)"
                     if model.startswith("server:") else " (embedded llama.cpp)"),
                  markup=False, highlight=False)
    lm = make_lm(model, base_url, timeout=timeout, **({"n_ctx": n_ctx} if n_ctx else {}))
    evaluator = Evaluate(devset, the_task.metric, num_threads=threads, display_progress=True)
    with context(lm=lm):
        if no_cache:
            with cache_disabled():
                return evaluator(prog), the_task, prog, devset
        return evaluator(prog), the_task, prog, devset


def _fail(message: str) -> typer.Exit:
    """One clear line on stderr and exit status 1 (no traceback for expected errors)."""
    console.print(f"[bold red]error:[/] {escape(redact(message))}", highlight=False,
                  soft_wrap=True)
    return typer.Exit(1)


def _parse_options(pairs: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; a value is read as JSON when it parses (numbers, true, lists)."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise _fail(f"--set expects KEY=VALUE, got {pair!r}")
        try:
            options[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip()] = value
    return options


def _optimizer_options(pairs: list[str], strategy: str | None) -> dict[str, Any]:
    options = _parse_options(pairs)
    if strategy is not None:
        options["strategy"] = strategy
    return options


def _default_run_dir(task: str, optimizer: str, seed: int) -> Path:
    return Path("runs") / f"{Path(task).stem}-{optimizer}-seed{seed}"


@app.command()
def optimize(
    task: Annotated[str, typer.Option(help="Task name (see `cotune tasks`) or a task file "
                                      "(a .py exposing program, trainset/valset/testset, "
                                      "metric).")] = "iris",
    optimizer: Annotated[str, typer.Option(
        help=f"{optimizer_help()} (`cotune optimizers` says what each does).")] = "mipro",
    strategy: Annotated[str | None, typer.Option(
        help="bettertogether's steps, e.g. 'p -> w -> p' (p: prompts, w: LoRA weights).")]
    = None,
    preset: Annotated[str | None, typer.Option(help=f"The preset of {preset_help()}.")]
    = None,
    model: ModelOpt = "smollm2-135m",
    base_url: BaseUrlOpt = None,
    n_ctx: NCtxOpt = None,
    seed: Annotated[int, typer.Option(help="Seeds the data split and the optimizer.")] = 0,
    train_size: Annotated[int | None, typer.Option(help="Use the first N training examples.")]
    = None,
    val_size: Annotated[int | None, typer.Option(help="Use the first N validation examples.")]
    = None,
    test_size: Annotated[int | None, typer.Option(help="Use the first N test examples.")] = None,
    rescore_size: Annotated[int | None, typer.Option(
        help="N more validation examples (after the first --val-size) to re-score the "
             "finalists on before choosing: the best one, or the best K with "
             "--set rescore_top=K.")] = None,
    max_calls: Annotated[int | None, typer.Option(
        help="At most N LM calls in all: the test evaluations' are reserved from them, the "
             "optimization stops when the rest is spent.")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Stop after N tokens.")] = None,
    max_seconds: Annotated[float | None, typer.Option(help="Stop after S seconds.")] = None,
    threads: Annotated[int, typer.Option(help="Worker threads.")] = 4,
    timeout: TimeoutOpt = None,
    run_dir: Annotated[Path | None, typer.Option(
        help="The run folder (default runs/TASK-OPTIMIZER-seedN). A folder holding a run of "
             "the same configuration is resumed.")] = None,
    cache_dir: Annotated[Path | None, typer.Option(
        help="Keep the LM cache in DIR/lm_cache.sqlite (e.g. the run folder) instead of the "
             "shared user cache.")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Bypass the LM cache.")] = False,
    force: Annotated[bool, typer.Option(
        "--force", help="Discard a run of another configuration in --run-dir and start over "
                        "(its LM cache is kept).")] = False,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Optimizer option KEY=VALUE, repeatable (e.g. --set num_candidates=4).")]
    = None,
    mlflow: MlflowOpt = None,
) -> None:
    """Optimize a task's program; write (or resume) a run folder."""
    from cotune.optimize.reporting import ConsoleReporter
    from cotune.runs.optimize import RunSpec, run_optimization

    options = _optimizer_options(set_ or [], strategy)
    spec = _guarded(lambda: RunSpec(
        task=task, optimizer=optimizer, model=model, base_url=base_url, seed=seed,
        train_size=train_size, val_size=val_size, test_size=test_size,
        rescore_size=rescore_size, preset=preset, options=options, max_calls=max_calls,
        max_tokens=max_tokens, max_seconds=max_seconds, threads=threads,
        cache_dir=str(cache_dir) if cache_dir is not None else None, use_cache=not no_cache,
        timeout=timeout, mlflow=mlflow, n_ctx=n_ctx,
    ))
    folder = run_dir or _default_run_dir(task, optimizer, seed)
    console.print(f"[bold]{escape(task)}[/] with [bold]{escape(optimizer)}[/], model "
                  f"[cyan]{escape(model)}[/]"
                  + (f" at {escape(redact(base_url))}" if base_url else "")
                  + f"; run folder {escape(str(folder))}")
    summary = _guarded(lambda: run_optimization(spec, folder, reporter=ConsoleReporter(),
                                                force=force))
    _print_summary(summary)


def _guarded(action: Callable[[], T]) -> T:
    """Run ``action``; turn an error into one line and exit status 1 (``-v``: traceback)."""
    try:
        return action()
    except typer.Exit:
        raise
    except KeyboardInterrupt:
        raise _fail("interrupted; run the same command again to resume") from None
    except Exception as exc:
        if logging.getLogger().isEnabledFor(logging.INFO):  # --verbose: the whole story
            console.print_exception()
        from cotune.lm.types import LMError, is_infrastructure_error

        if isinstance(exc, LMError) and is_infrastructure_error(exc):
            _fail(f"{exc.describe()}; fix the LM or wait for it, then run the same command "
                  "again")
            raise typer.Exit(LM_FAILURE_EXIT) from None
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        name = "" if _speaks_for_itself(exc) else f"{type(exc).__name__}: "
        raise _fail(f"{name}{message}") from None


def _speaks_for_itself(exc: Exception) -> bool:
    """cotune's own errors and the usual bad-input ones carry a complete message."""
    return type(exc).__module__.startswith("cotune.") or isinstance(
        exc, (KeyError, ValueError, OSError, ImportError)
    )


def _print_summary(summary: Any) -> None:
    from cotune.runs.formatting import format_gain, format_score
    from cotune.runs.view import ReferenceComparison

    total = summary.usage["total"]
    table = Table(title=f"run {summary.run_dir}")
    for column in ("val score", "test score", "LM calls", "cache hits", "backend calls",
                   "tokens", "wall s"):
        table.add_column(column, justify="right")
    table.add_row(_score(summary.val_score), _score(summary.test_score), str(total["calls"]),
                  str(total["cache_hits"]), str(total["backend_calls"]),
                  str(total["total_tokens"]), f"{summary.wall_s:.1f}")
    out = Console()
    out.print(table)
    val = format_score(summary.val_score, summary.val_interval)
    test = format_score(summary.test_score, summary.test_interval)
    out.print(f"with 95% bootstrap intervals: val {val}, test {test}", highlight=False)
    if summary.baseline_test_score is not None:
        out.print(f"test vs the unoptimized program ({_score(summary.baseline_test_score)}): "
                  f"{format_gain(summary.test_gain)}", highlight=False)
    if summary.test_metrics:
        from cotune.runs.formatting import format_metrics

        out.print(f"other test metrics: {format_metrics(summary.test_metrics)}")
    reference = ReferenceComparison.from_json(summary.reference)
    if reference is not None:  # else its error was shown
        out.print(reference.sentence(), highlight=False, markup=False)
    if summary.advice:
        out.print(f"the baseline stayed: {summary.advice}", highlight=False,
                  markup=False)
    if summary.stopped_by_budget:
        out.print("stopped by the budget: the program is the best found before it ran out")
    out.print(f"run folder: {summary.run_dir}  (cotune show {summary.run_dir})", highlight=False,
              markup=False)


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


@app.command()
def show(run: Annotated[Path, typer.Argument(help="A run folder.")]) -> None:
    """Show a run: the winning instruction and demos per predictor, the score path, the cost."""
    from cotune.runs.view import RunView

    view = _guarded(lambda: RunView.load(run))
    if not view.exists:
        raise _fail(f"{run} is not a cotune run folder (no config.json)")
    if view.problems:
        raise _fail(next(iter(view.problems.values())))
    out = Console()
    _show_header(out, view)
    if not view.complete:
        out.print("no result yet: the run has not finished (rerun its command to resume it)")
        return
    try:
        _show_run(out, view)
    except (KeyError, IndexError, TypeError, AttributeError) as exc:
        raise _fail(f"{run} holds malformed results ({type(exc).__name__}: {exc}); "
                    "rerun its command to rewrite them") from None


def _show_run(out: Console, view: RunView) -> None:
    best = view.best
    _show_predictors(out, view.original, best.state if best is not None else None)
    _show_score_path(out, view.candidates, view.best_index)
    _show_trials(out, view.search_trials)
    _show_cost(out, view.result)


def _show_header(out: Console, view: RunView) -> None:
    config, status = view.config, view.status
    optimizer = config.get("optimizer", {})
    model = config.get("model", {})
    out.print(f"[bold]run[/] {escape(str(view.path))}", highlight=False)
    out.print(f"task {config.get('task', {}).get('name')}, optimizer {optimizer.get('name')}"
              + (f" ({optimizer['preset']})" if optimizer.get("preset") else "")
              + f", model {model.get('name') or model.get('identity')}, seed {config.get('seed')}"
              + f", splits {_sizes(config.get('splits', {}))}", highlight=False, markup=False)
    state = f"status {status.get('state', 'unknown')} (attempt {status.get('attempt', 0)})"
    if status.get("error"):
        state += f": {status['error']}"
    if status.get("rerun_error"):
        state += f"; its last rerun did not complete ({status['rerun_error']})"
    if status.get("state") == "running" and not view.in_use:
        state += ", but no process is running it (killed?): rerun its command to resume"
    out.print(redact(state), highlight=False, markup=False)


def _sizes(splits: dict[str, Any]) -> str:
    return "/".join(str(splits.get(k, "?")) for k in ("train", "val", "test"))


def _show_predictors(out: Console, original: Any, winner: Any) -> None:
    if not isinstance(winner, dict):
        out.print("no candidate was recorded")
        return
    originals = (original or {}).get("predictors", {})
    for name, entry in winner["predictors"].items():
        out.print(f"\n[bold]predictor {escape(name)}[/]")
        before = originals.get(name, {}).get("instruction")
        if before is not None and before != entry["instruction"]:
            _line(out, _labelled("  original instruction: ", before))
            _line(out, _labelled("  winning instruction:  ", entry["instruction"]))
        else:
            _line(out, _labelled("  instruction (unchanged): ", entry["instruction"]))
        _line(out, f"  demos: {len(entry['demos'])}")
        for i, demo in enumerate(entry["demos"], 1):
            _line(out, f"   {i}. {_render_demo(demo)}")


def _labelled(label: str, text: str, limit: int = 2000) -> str:
    """``label`` + ``text``, continuation lines indented under the text; a very long text is cut
    (program.json has all of it)."""
    if len(text) > limit:
        text = text[:limit] + f" ... ({len(text) - limit} more characters in program.json)"
    return label + text.strip().replace("\n", "\n" + " " * len(label))


def _line(out: Console, text: str) -> None:
    """Plain text, unwrapped (the terminal wraps it), so that it can be copied or grepped."""
    out.print(text, highlight=False, markup=False, soft_wrap=True)


def _render_demo(demo: dict[str, Any]) -> str:
    fields, inputs = demo["fields"], set(demo["inputs"])
    given = ", ".join(f"{k}={_short(v)}" for k, v in fields.items() if k in inputs)
    answer = ", ".join(f"{k}={_short(v)}" for k, v in fields.items() if k not in inputs)
    return f"{given} -> {answer}"


def _short(value: Any, limit: int = 80) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _show_score_path(out: Console, candidates: list[Candidate], best: int | None) -> None:
    from cotune.runs.formatting import format_gain

    table = Table(title="score path (validation score of each candidate vs LM calls so far; "
                        "gain: paired 95% interval vs the baseline)")
    for column, justify in (("#", "right"), ("LM calls", "right"), ("score", "right"),
                            ("best so far", "right"), ("gain vs baseline", "right"),
                            ("candidate", "left")):
        table.add_column(column, justify=justify)
    running: float | None = None
    for c in candidates:
        if c.score is not None and (running is None or c.score > running):
            running = c.score
        mark = " *" if c.index == best else ""
        verdict = c.vs_baseline or {}
        table.add_row(f"{c.index}{mark}", str(c.lm_calls), _score(c.score),
                      _score(running), format_gain(verdict.get("interval")), c.description)
    out.print(table)


def _show_trials(out: Console, trials: list[Trial]) -> None:
    """Search trials (e.g. MIPRO's mini-batch trials), when the optimizer recorded any."""
    if not trials:
        return
    table = Table(title=f"search trials ({len(trials)}, scored on mini-batches)")
    for column in ("trial", "LM calls", "mini-batch score", "choice"):
        table.add_column(column, justify="left" if column == "choice" else "right")
    for t in trials:
        choice = ", ".join(f"{k}={v}" for k, v in t.params.items())
        table.add_row(str(t.number), str(t.lm_calls), _score(t.minibatch_score), choice)
    out.print(table)


def _show_cost(out: Console, result: RunResult) -> None:
    from cotune.runs.formatting import format_gain, format_metrics, format_score

    table = Table(title="cost")
    for column in ("", "LM calls", "cache hits", "backend calls", "tokens", "cost"):
        table.add_column(column, justify="right")
    for part, u in result.usage.items():
        table.add_row(part, str(u.calls), str(u.cache_hits), str(u.backend_calls),
                      str(u.total_tokens), f"{u.cost or 0:.4f}")
    out.print(table)
    other = format_metrics(result.test_metrics, result.test_metric_intervals)
    val = format_score(result.val_score, result.val_interval)
    test = format_score(result.test_score, result.test_interval)
    out.print(f"validation score {val}, held-out test score {test}"
              + (f" ({other})" if other else "")
              + f", wall time {result.wall_s or 0:.1f} s"
              + (", stopped by the budget" if result.stopped_by_budget else ""),
              highlight=False, markup=False)
    if result.baseline_test_score is not None:
        out.print(f"the unoptimized program on the same test examples: "
                  f"{_score(result.baseline_test_score)}; the difference: "
                  f"{format_gain(result.test_gain)} (95% intervals)",
                  highlight=False, markup=False)
    if result.reference is not None:
        out.print(result.reference.sentence(), highlight=False, markup=False)
    if result.reference_error:
        out.print(result.reference_error, highlight=False, markup=False)
    reason = result.selection.get("reason")
    if reason:
        out.print(f"why this program: {reason}", highlight=False, markup=False)
    if result.selection.get("advice"):
        out.print(f"to try: {result.selection['advice']}", highlight=False, markup=False)


@app.command()
def tasks() -> None:
    """List the built-in tasks."""
    from cotune.tasks import get_task, task_names

    for name in task_names():
        typer.echo(f"{name:12s} {get_task(name).description}")


@app.command()
def optimizers() -> None:
    """List the optimizers (the names --optimizer takes) and what each ':ARG' sets."""
    for entry in registered_optimizers():
        typer.echo(f"{entry.label():42s} {entry.summary}")


@app.command()
def models() -> None:
    """List the packaged local models and whether they are installed."""
    from cotune.lm.models import list_models

    for entry in list_models():
        typer.echo(entry)



@app.command()
def bench(
    spec: Annotated[Path | None, typer.Option(
        help="A bench spec (JSON or TOML): tasks, optimizers, models, seeds, sizes, budget. "
             "Options given here override it.")] = None,
    task: Annotated[list[str] | None, typer.Option(
        "--task", help="A task (repeatable).")] = None,
    optimizer: Annotated[list[str] | None, typer.Option(
        "--optimizer", help="NAME[:ARG] (repeatable), e.g. vanilla, mipro:light, "
                            f"bettertogether:p->w; NAME: {optimizer_help()} (see `cotune "
                            "optimizers`).")]
    = None,
    model: Annotated[list[str] | None, typer.Option(
        "--model", help="A model (repeatable; see `cotune models`).")] = None,
    seed: Annotated[list[int] | None, typer.Option("--seed", help="A seed (repeatable).")]
    = None,
    base_url: BaseUrlOpt = None,
    n_ctx: NCtxOpt = None,
    train_size: Annotated[int | None, typer.Option(help="Training examples per task.")] = None,
    val_size: Annotated[int | None, typer.Option(help="Validation examples per task.")] = None,
    test_size: Annotated[int | None, typer.Option(help="Test examples per task.")] = None,
    max_calls: Annotated[int | None, typer.Option(help="LM calls per cell.")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Tokens per cell.")] = None,
    max_seconds: Annotated[float | None, typer.Option(help="Seconds per cell.")] = None,
    threads: Annotated[int | None, typer.Option(help="Worker threads.")] = None,
    timeout: TimeoutOpt = None,
    cache: Annotated[str | None, typer.Option(
        help="LM cache: cell (one per cell, the default), shared, off.")] = None,
    out: Annotated[Path, typer.Option(
        help="The bench folder; a bench already there is resumed (finished cells are kept).")]
    = Path("runs/bench"),
    mlflow: MlflowOpt = None,
    ray: Annotated[str | None, typer.Option(
        "--ray", metavar="ADDRESS", help="Run the cells as Ray tasks on this cluster: auto (the "
        "running one), HOST:PORT, or local (start one here). Needs cotune[ray]; --out must be "
        "on storage every node sees.")] = None,
    ray_cpus: Annotated[float | None, typer.Option(
        help="CPUs each cell declares to Ray (default --threads).")] = None,
    ray_gpus: Annotated[float, typer.Option(
        help="GPUs each fine-tuning cell declares to Ray.")] = 0,
    plan: Annotated[bool, typer.Option(
        "--plan", help="Run nothing: show each cell's state in --out and its projected LM "
                       "calls, and how many are left.")] = False,
) -> None:
    """Run a grid of tasks x optimizers x models x seeds; write results.json and results.md."""
    from cotune.optimize.reporting import ConsoleReporter
    from cotune.runs.bench import RESULTS_MD, resolve_spec, run_bench

    overrides = {"tasks": task, "optimizers": optimizer, "models": model, "seeds": seed,
                 "base_url": base_url, "train_size": train_size, "val_size": val_size,
                 "test_size": test_size, "max_calls": max_calls, "max_tokens": max_tokens,
                 "max_seconds": max_seconds, "threads": threads, "cache": cache,
                 "timeout": timeout, "mlflow": mlflow,
                 "n_ctx": n_ctx}
    the_spec = _guarded(lambda: resolve_spec(spec, out, overrides))
    cells = _guarded(the_spec.cells)
    if plan:
        _show_plan(the_spec, out)
        return
    console.print(f"bench of {len(cells)} cells in {out}", highlight=False, markup=False)
    if ray is not None:
        from cotune.runs.distributed import run_bench_on_ray

        records = _guarded(lambda: run_bench_on_ray(
            the_spec, out, address=ray, cpus_per_cell=ray_cpus, gpus_per_cell=ray_gpus,
            reporter=ConsoleReporter(), on_cell=_print_cell))
    else:
        records = _guarded(lambda: run_bench(the_spec, out, reporter=ConsoleReporter(),
                                             on_cell=_print_cell))
    Console().print((out / RESULTS_MD).read_text(encoding="utf-8"), markup=False,
                    highlight=False, soft_wrap=True)
    Console().print(f"results: {out / RESULTS_MD}  (cotune report {out})", highlight=False)
    if any(r.get("lm_unavailable") for r in records):
        _fail("some cells failed because their LM did (see their error above); fix the LM or "
              "wait for it, then run the same command again to resume them")
        raise typer.Exit(LM_FAILURE_EXIT)
    if any(r["status"] != "finished" for r in records):
        raise _fail("some cells did not finish (see their error above)")


def _show_plan(spec: BenchSpec, out: Path) -> None:
    from cotune.runs.plan import plan_bench, plan_table

    the_plan = _guarded(lambda: plan_bench(spec, out))
    table = Table(title=f"the bench in {out}, planned (nothing run)")
    for column in ("cell", "state", "LM calls", "of which", "time so far"):
        table.add_column(column, overflow="fold")
    for row in plan_table(the_plan):
        table.add_row(*row)
    Console(width=max(console.width, 160)).print(table, markup=False, highlight=False)
    console.print(the_plan.summary(), highlight=False, markup=False, soft_wrap=True)


def _print_cell(record: dict[str, Any]) -> None:
    """One line per cell as it ends (the bench can take hours)."""
    from rich.markup import escape

    if record["status"] == "finished":
        done = "already finished" if record["skipped"] else "finished"
        text = (f"[green]{done}[/] {escape(record['cell'])}: test "
                f"{_score(record['test_score'])}, val {_score(record['val_score'])}, "
                f"{record['lm_calls']} LM calls")
    else:
        error = escape(redact(str(record["error"])))
        text = f"[red]{record['status']}[/] {escape(record['cell'])}: {error}"
    console.print(text, highlight=False, soft_wrap=True)


@app.command()
def report(
    run: Annotated[Path, typer.Argument(help="A run folder or a bench folder.")],
    out: Annotated[Path | None, typer.Option(
        help="Where to write the page (default RUN/report.html).")] = None,
) -> None:
    """Write a self-contained HTML report of a run (or a bench, with a report per cell)."""
    from cotune.runs.report import report_problems, write_report

    path = _guarded(lambda: write_report(run, out))
    typer.echo(str(path))
    problems = report_problems(run)
    if problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise _fail(f"{problems[0]}{more}; the report leaves it out: rerun the run's command to "
                    "rewrite it")


if __name__ == "__main__":  # pragma: no cover
    app()
