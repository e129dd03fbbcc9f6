"""Modules: programs are plain Python classes that compose predictors in ``forward``."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Self

if TYPE_CHECKING:
    from cotune.core.predict import Predict


class Module:
    """Base class of programs.  Subclasses set sub-modules as attributes and define
    ``forward(**inputs)``.  The learnable parameters are the ``Predict`` objects found among the
    attributes, recursively (also inside lists, tuples and dicts)."""

    def forward(self, **inputs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must define forward()")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(*args, **kwargs)

    def named_predictors(self) -> list[tuple[str, Predict]]:
        """``(dotted name, predictor)`` for every predictor, in a stable order, each once."""
        from cotune.core.predict import Predict

        found: list[tuple[str, Predict]] = []
        seen: set[int] = set()

        def visit(value: Any, name: str) -> None:
            if id(value) in seen:
                return
            if isinstance(value, Predict):
                seen.add(id(value))
                found.append((name or "self", value))
            elif isinstance(value, Module):
                seen.add(id(value))
                for attr, child in vars(value).items():
                    if not attr.startswith("_"):
                        visit(child, f"{name}.{attr}" if name else attr)
            elif isinstance(value, (list, tuple)):
                for i, child in enumerate(value):
                    visit(child, f"{name}[{i}]")
            elif isinstance(value, dict):
                for key, child in value.items():
                    visit(child, f"{name}[{key!r}]")

        if isinstance(self, Predict):
            return [("self", self)]
        visit(self, "")
        return found

    def predictors(self) -> list[Predict]:
        return [p for _, p in self.named_predictors()]

    def deepcopy(self) -> Self:
        """An independent copy: learnable state copied, LMs and other resources shared."""
        return copy.deepcopy(self)

    def reset_copy(self) -> Self:
        """A copy with every predictor's demos cleared and instruction reset."""
        new = self.deepcopy()
        for p in new.predictors():
            p.reset()
        return new

    # Save / load of learnable state (implemented in cotune.core.state)
    def dump_state(self) -> dict[str, Any]:
        from cotune.core.state import dump_state

        return dump_state(self)

    def load_state(self, state: dict[str, Any]) -> Self:
        from cotune.core.state import load_state

        load_state(self, state)
        return self

    def __iter__(self) -> Iterator[Any]:  # pragma: no cover - guard against accidental use
        raise TypeError(f"{type(self).__name__} is not iterable")
