"""The shared progress bar of evaluation and LoRA training."""

from __future__ import annotations

import io

import pytest

from cotune.evaluate.progress import progress_bar

rich_console = pytest.importorskip("rich.console")


def make_console() -> tuple[object, io.StringIO]:
    out = io.StringIO()
    return rich_console.Console(file=out, force_terminal=True, width=120), out


def test_the_bar_shows_the_label_the_count_and_the_stats() -> None:
    console, out = make_console()
    with progress_bar("LoRA training", "loss {task.fields[loss]}", 3, console=console,
                      loss="-") as update:
        assert update is not None
        update(3, loss="0.1234")
    text = out.getvalue()
    assert "LoRA training" in text and "3/3" in text and "loss 0.1234" in text


def test_square_brackets_in_the_label_are_shown_not_read_as_markup() -> None:
    console, out = make_console()
    with progress_bar("eval [val]", "", 1, console=console) as update:
        update(1)
    assert "eval [val]" in out.getvalue()


def test_when_the_terminal_is_taken_it_yields_none(monkeypatch: pytest.MonkeyPatch) -> None:
    """Older rich allows one live display per console: the loop then runs without a bar."""
    from rich.errors import LiveError
    from rich.progress import Progress

    def refuse(self: Progress) -> None:
        raise LiveError("Only one live display may be active at once")

    monkeypatch.setattr(Progress, "start", refuse)
    console, out = make_console()
    with progress_bar("inner", "", 2, console=console) as update:
        assert update is None
    assert "inner" not in out.getvalue()
