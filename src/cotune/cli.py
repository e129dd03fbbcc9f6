"""The ``cotune`` command line."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    help="Optimize LM programs end to end: prompts and LoRA weights.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(stderr=True)

ModelOpt = Annotated[
    str, typer.Option(help="Packaged model name (see `cotune models`), a GGUF path, or the "
                      "model name on --base-url.")
]
BaseUrlOpt = Annotated[
    str | None, typer.Option(help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1")
]


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING)


@app.command()
def evaluate(
    task: Annotated[str, typer.Option(help="Task name (see `cotune tasks`).")] = "iris",
    model: ModelOpt = "smollm2-135m",
    base_url: BaseUrlOpt = None,
    split: Annotated[str, typer.Option(help="train, val or test")] = "test",
    limit: Annotated[int | None, typer.Option(help="Evaluate only the first N examples.")] = None,
    demos: Annotated[int, typer.Option(help="Labelled demos taken from the train split.")] = 3,
    program: Annotated[
        Path | None, typer.Option(help="A saved program (JSON) to load into the task's program.")
    ] = None,
    threads: Annotated[int, typer.Option(help="Worker threads.")] = 4,
    seed: Annotated[int, typer.Option(help="Seed of the data split.")] = 0,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Bypass the LM cache.")] = False,
    out: Annotated[Path | None, typer.Option(help="Write per-example results as JSON.")] = None,
) -> None:
    """Evaluate a task's program on one split and print the score."""
    from cotune.core.runtime import context
    from cotune.evaluate import Evaluate
    from cotune.lm.cache import cache_disabled
    from cotune.lm.factory import make_lm
    from cotune.runs.programs import load_program
    from cotune.tasks import get_task
    from cotune.tasks.demos import labelled_demos

    the_task = get_task(task)
    splits = the_task.load_splits(seed=seed)
    devset = splits.get(split)[:limit] if limit else splits.get(split)
    prog = the_task.make_program()
    if program is not None:
        load_program(prog, program)
    elif demos:
        for predictor in prog.predictors():
            predictor.demos = labelled_demos(splits.train, demos, seed=seed)

    console.print(f"[bold]{task}[/]: {len(devset)} {split} examples, model [cyan]{model}[/]"
                  + (f" at {base_url}" if base_url else " (embedded llama.cpp)"))
    lm = make_lm(model, base_url)
    evaluator = Evaluate(devset, the_task.metric, num_threads=threads, display_progress=True)
    with context(lm=lm):
        if no_cache:
            with cache_disabled():
                result = evaluator(prog)
        else:
            result = evaluator(prog)

    table = Table(title=f"{task} / {split}")
    for column in ("score", "examples", "errors", "LM calls", "cache hits", "tokens", "wall s"):
        table.add_column(column, justify="right")
    u = result.usage
    table.add_row(
        f"{result.score:.3f}", str(len(result.results)), str(result.num_errors), str(u.calls),
        str(u.cache_hits), str(u.total_tokens), f"{result.elapsed_s:.1f}",
    )
    Console().print(table)
    if out is not None:
        out.write_text(json.dumps(result.to_json(), indent=2, ensure_ascii=False))
        console.print(f"per-example results written to {out}")


@app.command()
def tasks() -> None:
    """List the built-in tasks."""
    from cotune.tasks import get_task, task_names

    for name in task_names():
        typer.echo(f"{name:12s} {get_task(name).description}")


@app.command()
def models() -> None:
    """List the packaged local models and whether they are installed."""
    from cotune.lm.models import list_models

    for entry in list_models():
        typer.echo(entry)


if __name__ == "__main__":  # pragma: no cover
    app()
