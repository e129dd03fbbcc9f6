"""Optimizers by name, as the command line, bench specs and run folders spell them.

Each optimizer class registers itself where it is defined, under its ``name`` attribute::

    @register_optimizer("demos bootstrapped from the program's own traces")
    class BootstrapFewShot(Optimizer):
        name = "bootstrap"

``cotune.optimize`` imports every optimizer module, so the registry is complete as soon as any
part of the package is imported.  ``arg`` names the constructor option that the ``NAME:ARG``
spelling of a bench spec sets (``mipro:light`` is ``preset="light"``, ``bettertogether:p->w``
is ``strategy="p -> w"``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from cotune.optimize.base import Metric, Optimizer

OptimizerArg = Literal["preset", "strategy"]
OptionsHook = Callable[[Mapping[str, Any]], dict[str, Any]]
OptimizerClass = TypeVar("OptimizerClass", bound=type[Optimizer])


@dataclass(frozen=True)
class RegisteredOptimizer:
    """One entry of the registry."""

    name: str
    cls: type[Optimizer]
    summary: str
    """One line for ``--help`` and error messages."""
    arg: OptimizerArg | None = None
    """The option ``NAME:ARG`` sets, if any."""
    presets: tuple[str, ...] = ()
    """The values ``preset`` takes (for optimizers whose ``arg`` is ``"preset"``)."""
    options: OptionsHook | None = None
    """Turns options as the command line and specs spell them into constructor arguments."""

    def build(self, metric: Metric, **options: Any) -> Optimizer:
        """The optimizer, from options spelled as ``--set`` gives them."""
        return self.cls(metric, **(self.options(options) if self.options else options))

    def label(self) -> str:
        """``mipro[:light|medium|heavy]``, ``bettertogether[:STRATEGY]``, ``vanilla``."""
        if self.arg is None:
            return self.name
        arg = "|".join(self.presets) if self.arg == "preset" and self.presets else self.arg.upper()
        return f"{self.name}[:{arg}]"


_REGISTRY: dict[str, RegisteredOptimizer] = {}


def register_optimizer(
    summary: str,
    *,
    arg: OptimizerArg | None = None,
    presets: Sequence[str] = (),
    options: OptionsHook | None = None,
) -> Callable[[OptimizerClass], OptimizerClass]:
    """A class decorator: file the optimizer under its ``name``.  ``options`` maps the
    command line's flat options to the constructor's (MIPRO's ``use_demos=false`` to its
    ``proposer_settings``)."""

    def add(cls: OptimizerClass) -> OptimizerClass:
        name = cls.name
        if not isinstance(name, str) or not name or name == Optimizer.name:
            raise ValueError(f"{cls.__qualname__} needs its own `name` to be registered")
        taken = _REGISTRY.get(name)
        if taken is not None and taken.cls is not cls:
            raise ValueError(f"optimizer name {name!r} is taken by {taken.cls.__qualname__}")
        if presets and arg != "preset":
            raise ValueError(f"{cls.__qualname__}: presets need arg='preset'")
        _REGISTRY[name] = RegisteredOptimizer(name, cls, summary, arg, tuple(presets), options)
        return cls

    return add


def optimizer_names() -> list[str]:
    """The registered names, sorted."""
    return sorted(_REGISTRY)


def registered_optimizers() -> list[RegisteredOptimizer]:
    return [_REGISTRY[name] for name in optimizer_names()]


def get_optimizer(name: str) -> RegisteredOptimizer:
    """The entry of ``name``; a ValueError naming the known ones when there is none."""
    entry = _REGISTRY.get(name) if isinstance(name, str) else None
    if entry is None:
        raise ValueError(f"unknown optimizer {name!r}; known: {', '.join(optimizer_names())}")
    return entry


def build_optimizer(
    name: str,
    metric: Metric,
    *,
    seed: int = 0,
    threads: int = 4,
    preset: str | None = None,
    options: Mapping[str, Any] | None = None,
) -> Optimizer:
    """An optimizer by registry name; ``options`` are its constructor's keyword arguments (as
    ``--set KEY=VALUE`` gives them); bad ones are a ValueError naming the optimizer."""
    entry = get_optimizer(name)
    kwargs: dict[str, Any] = {"seed": seed, "num_threads": threads, **(options or {})}
    if preset is not None:
        if entry.arg != "preset":
            owners = ", ".join(e.name for e in registered_optimizers() if e.arg == "preset")
            raise ValueError(f"--preset applies to the MIPRO optimizers and GEPA ({owners}), "
                             f"not to {name!r}")
        kwargs["preset"] = preset
    try:
        return entry.build(metric, **kwargs)
    except TypeError as exc:
        raise ValueError(f"optimizer {name!r}: bad option ({exc})") from exc
    except ValueError as exc:  # the constructor's check of an option's value
        raise ValueError(f"optimizer {name!r}: {exc}") from exc


def optimizer_help() -> str:
    """The registered names for a ``--help`` text: ``"bayesian-bootstrap, ..., vanilla"``."""
    return ", ".join(optimizer_names())


def preset_help() -> str:
    """Which optimizers take a preset, and its values: ``"gepa, mipro: light, medium, heavy"``."""
    groups: dict[tuple[str, ...], list[str]] = {}
    for entry in registered_optimizers():
        if entry.arg == "preset":
            groups.setdefault(entry.presets, []).append(entry.name)
    return "; ".join(f"{', '.join(names)}: {', '.join(presets) or 'its own'}"
                     for presets, names in groups.items())
