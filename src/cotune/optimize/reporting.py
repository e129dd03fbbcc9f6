"""How an optimizer tells the outside world what it is doing: projected cost, candidates,
progress.  The CLI shows it with rich; tests and libraries can stay silent."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

from cotune.lm.redact import redact

logger = logging.getLogger("cotune.optimize")


@dataclass(frozen=True)
class CostEstimate:
    """Projected LM calls of a whole optimization (an upper bound unless ``exact`` or
    ``approximate``: an expected count, e.g. GEPA's, whose loop spends a fixed budget)."""

    lm_calls: int
    breakdown: dict[str, int] = field(default_factory=dict)
    exact: bool = False
    approximate: bool = False

    def describe(self) -> str:
        parts = ", ".join(f"{k}: {v}" for k, v in self.breakdown.items())
        bound = "" if self.exact else "about " if self.approximate else "at most "
        return f"projected LM calls: {bound}{self.lm_calls}" + (f" ({parts})" if parts else "")


class Reporter(Protocol):
    def projected(self, optimizer: str, estimate: CostEstimate) -> None: ...

    def start_phase(self, name: str, total: int | None) -> None: ...

    def advance(self, best_score: float | None, **info: Any) -> None: ...

    def end_phase(self) -> None: ...

    def message(self, text: str) -> None: ...


class LogReporter:
    """Sends everything to the ``cotune.optimize`` logger."""

    def projected(self, optimizer: str, estimate: CostEstimate) -> None:
        logger.info("%s: %s", optimizer, estimate.describe())

    def start_phase(self, name: str, total: int | None) -> None:
        logger.info("phase %s (%s steps)", name, total if total is not None else "?")

    def advance(self, best_score: float | None, **info: Any) -> None:
        logger.debug("step done, best so far %s %s", best_score, info)

    def end_phase(self) -> None:
        pass

    def message(self, text: str) -> None:
        logger.info("%s", text)


class ConsoleReporter:
    """A rich progress bar per phase, showing the best score so far."""

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)
        self._progress: Any = None
        self._task: Any = None

    def projected(self, optimizer: str, estimate: CostEstimate) -> None:
        self.console.print(f"[bold]{optimizer}[/]: {estimate.describe()}")

    def start_phase(self, name: str, total: int | None) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self.end_phase()
        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("best {task.fields[best]}"), console=self.console, transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task(name, total=total, best="-")

    def advance(self, best_score: float | None, **info: Any) -> None:
        if self._progress is not None:
            best = "-" if best_score is None else f"{best_score:.3f}"
            self._progress.update(self._task, advance=1, best=best)

    def end_phase(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def message(self, text: str) -> None:
        self.console.print(redact(text), markup=False, highlight=False)
