"""The search trials an optimizer records beside its fully scored candidates.

Every optimizer records the same :class:`Trial` through
:meth:`~cotune.optimize.base.OptimizationRun.record_trial`: MIPRO's and OPRO's mini-batch
trials (``kind="search"``), GEPA's reflective iterations and merges (``"reflect"``,
``"merge"``, with the children they tried and the lineage: parents, the candidate accepted),
BetterTogether's steps (``"step"``).  Readers (``cotune show``, ``cotune report``, MLflow
logging) read the fields, never sniff for keys.

A trial's JSON form (``trials.json``) always has every field.  :meth:`Trial.from_json` also
reads the per-optimizer dicts that run folders written before this record held.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

KINDS = ("search", "reflect", "merge", "step")


@dataclass
class Child:
    """One program a trial tried on its mini-batch (a GEPA child)."""

    kind: str
    """What changed: ``instruction``, ``demos``, ``instruction+demos``, ``merge``."""
    minibatch_score: float | None
    candidate: int | None = None
    """The candidate it became (index in the run's candidates); None: not kept."""
    details: dict[str, Any] = field(default_factory=dict)
    """E.g. ``instruction_chars``, ``truncated``, ``demos``."""

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Child:
        if "details" in data:
            return cls(str(data["kind"]), _score(data.get("minibatch_score")),
                       data.get("candidate"), dict(data.get("details") or {}))
        rest = {k: v for k, v in data.items() if k not in ("kind", "minibatch_score")}
        return cls(str(data.get("kind", "?")), _score(data.get("minibatch_score")), None, rest)


@dataclass
class Trial:
    """One step of a search, recorded in order."""

    number: int
    """The optimizer's own count: MIPRO's trial, GEPA's iteration, BetterTogether's step."""
    kind: str
    """``search``, ``reflect``, ``merge`` or ``step`` (see the module docstring)."""
    lm_calls: int
    """LM calls the run had made when the trial was recorded (the x axis of a report)."""
    params: dict[str, Any] = field(default_factory=dict)
    """What the trial tried (shown as ``key=value``)."""
    minibatch_score: float | None = None
    """Its score on the mini-batch it was tried on (the best child's for GEPA)."""
    parent_minibatch_score: float | None = None
    """What it had to beat there: the parent's score on the same mini-batch."""
    score: float | None = None
    """The validation score of what it produced (a step's program, an accepted child)."""
    parents: list[int] = field(default_factory=list)
    """The candidates it started from (indices in the run's candidates)."""
    candidate: int | None = None
    """The candidate it produced; None when it produced none."""
    accepted: bool | None = None
    """Whether its child was kept (None: the trial makes no such decision)."""
    outcome: str = ""
    error: str | None = None
    children: list[Child] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    """What only one optimizer records (GEPA: the mini-batch, the frontier, metric calls)."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> Trial:
        """A trial from ``trials.json``: this record's form, or an older run folder's
        per-optimizer dict.  Raises ValueError for anything else."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a trial is a JSON object, not {type(data).__name__}")
        try:
            if "number" in data:
                return cls._current(data)
            return _legacy(data)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"not a trial record ({type(exc).__name__}: {exc})") from None

    @classmethod
    def _current(cls, data: Mapping[str, Any]) -> Trial:
        return cls(
            number=int(data["number"]), kind=str(data["kind"]),
            lm_calls=int(data.get("lm_calls") or 0), params=dict(data.get("params") or {}),
            minibatch_score=_score(data.get("minibatch_score")),
            parent_minibatch_score=_score(data.get("parent_minibatch_score")),
            score=_score(data.get("score")), parents=[int(p) for p in data.get("parents") or []],
            candidate=_index(data.get("candidate")), accepted=data.get("accepted"),
            outcome=str(data.get("outcome") or ""), error=data.get("error"),
            children=[Child.from_json(c) for c in data.get("children") or []],
            details=dict(data.get("details") or {}),
        )


_GEPA_FIELDS = {"trial", "kind", "parent", "parents", "children", "accepted", "candidate",
                "outcome", "minibatch_score", "parent_minibatch_score", "val_score",
                "lm_calls", "params"}


def _legacy(data: Mapping[str, Any]) -> Trial:
    """The dicts run folders held before :class:`Trial`: BetterTogether's steps, GEPA's
    iterations, MIPRO's and OPRO's mini-batch trials."""
    lm_calls = int(data.get("lm_calls") or 0)
    if "step" in data and "name" in data:
        return Trial(int(data["step"]), "step", lm_calls,
                     params={"name": data["name"],
                             "strategy_prefix": data.get("strategy_prefix", "")},
                     score=_score(data.get("score")), error=data.get("error"))
    if data.get("kind") in ("reflect", "merge"):
        parents = data.get("parents") or [data.get("parent")]
        accepted_at = _index(data.get("candidate"))
        children = [Child.from_json(c) for c in data.get("children") or []]
        if accepted_at is not None and children:
            best = max(range(len(children)), key=lambda j: (children[j].minibatch_score or 0, -j))
            children[best].candidate = accepted_at
        return Trial(
            int(data["trial"]), str(data["kind"]), lm_calls, dict(data.get("params") or {}),
            minibatch_score=_score(data.get("minibatch_score")),
            parent_minibatch_score=_score(data.get("parent_minibatch_score")),
            score=_score(data.get("val_score")), parents=[int(p) for p in parents],
            candidate=accepted_at, accepted=data.get("accepted"),
            outcome=str(data.get("outcome") or ""), children=children,
            details={k: v for k, v in data.items() if k not in _GEPA_FIELDS},
        )
    if "minibatch_score" in data:
        return Trial(int(data.get("trial", 0)), "search", lm_calls,
                     dict(data.get("params") or {}),
                     minibatch_score=_score(data["minibatch_score"]),
                     details={k: v for k, v in data.items()
                              if k not in ("trial", "params", "minibatch_score", "lm_calls")})
    raise ValueError(f"no known trial fields among {sorted(data)[:6]}")


def _score(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"a score is a number, not {value!r}")
    return float(value)


def _index(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"a candidate index is a whole number, not {value!r}")
    return value
