"""One progress bar style for the long loops (evaluation, LoRA training): terminal output, so
it lives with the lowest layer that draws it (evaluation), not in ``core``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def progress_bar(
    label: str, stats: str, total: int, *, console: Any = None, **fields: Any
) -> Iterator[Callable[..., None] | None]:
    """Show ``label [bar] done/total stats elapsed remaining`` while the block runs.

    ``stats`` is a rich format string over ``task.fields`` (``"loss {task.fields[loss]}"``), and
    ``fields`` are their first values.  Yields ``update(completed, **fields)``, or None when
    another live display (an optimizer's, say) already owns the terminal.  ``console``: a
    ``rich.console.Console`` to draw on (default: rich's, on the terminal).
    """
    from rich.errors import LiveError
    from rich.progress import (  # lazy: rich costs ~50 ms to import
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn(label.replace("[", r"\[")), BarColumn(), MofNCompleteColumn(),
        TextColumn(stats), TimeElapsedColumn(), TimeRemainingColumn(),
        console=console, refresh_per_second=4,  # drawn by rich's own thread
    )  # fmt: skip
    task = bar.add_task(label, total=total, **fields)
    try:
        bar.start()
    except LiveError:
        yield None
        return
    try:
        yield lambda completed, **values: bar.update(task, completed=completed, **values)
    finally:
        bar.stop()
