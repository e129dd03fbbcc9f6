"""Plain data exchanged with every LM backend, and the errors an LM call can raise."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

Message = dict[str, str]
"""One chat message: ``{"role": "system" | "user" | "assistant", "content": "..."}``."""


@dataclass(frozen=True)
class LMRequest:
    """Everything that can change an LM's answer, apart from the LM's own identity."""

    messages: tuple[Message, ...]
    temperature: float = 0.0
    max_tokens: int = 512
    stop: tuple[str, ...] = ()
    seed: int | None = None
    n: int = 1
    rollout_id: int | None = None
    """Tells repeated samples of the same prompt apart (and so keeps them apart in the cache)."""
    response_schema: str | None = None
    """The JSON schema (as JSON text, key order kept) the answer must follow, when the caller
    wants structured output; backends constrain decoding to it where they can."""
    repair: bool = False
    """A second request asking to fix an answer that did not parse (counted apart in usage)."""

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["messages"] = [dict(m) for m in self.messages]
        data["stop"] = list(self.stop)
        # absent unless set: requests without them keep the fingerprints (cache keys) they had
        for key, unset in (("response_schema", None), ("repair", False)):
            if data[key] == unset:
                del data[key]
        return data

    @property
    def schema(self) -> dict[str, Any] | None:
        """``response_schema`` as a dict (None when the request has none)."""
        return None if self.response_schema is None else json.loads(self.response_schema)

    def sampling_seed(self, salt: int | None = None) -> int:
        """The seed to sample this request with: its own ``seed``, else one derived from the
        request itself (messages, settings, ``rollout_id``) and ``salt``.  Never from a shared
        random generator: a rerun then draws the same samples whatever order, or thread, the
        calls come in (a generator advanced in call order gives each call a seed that depends
        on which calls happened to come first)."""
        if self.seed is not None:
            return self.seed
        payload = json.dumps({"request": self.to_json(), "salt": salt}, sort_keys=True,
                             ensure_ascii=False)
        return int.from_bytes(hashlib.sha256(payload.encode("utf-8")).digest()[:4], "big") >> 1

    def fingerprint(self, lm_identity: dict[str, Any]) -> str:
        """A stable hash of the request together with the identity of the LM answering it."""
        payload = json.dumps(
            {"lm": lm_identity, "request": self.to_json()}, sort_keys=True, ensure_ascii=False
        )
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Choice:
    text: str
    finish_reason: str | None = None
    """``"stop"``, ``"length"`` (hit max_tokens), or whatever the backend reports."""


@dataclass(frozen=True)
class TokenUsage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class LMResponse:
    choices: tuple[Choice, ...]
    usage: TokenUsage = field(default_factory=TokenUsage)
    model: str = ""
    cached: bool = False
    """True when the answer came from the persistent cache instead of the backend."""

    @property
    def text(self) -> str:
        return self.choices[0].text

    @property
    def finish_reason(self) -> str | None:
        return self.choices[0].finish_reason

    def to_json(self) -> dict[str, Any]:
        return {
            "choices": [asdict(c) for c in self.choices],
            "usage": asdict(self.usage),
            "model": self.model,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], *, cached: bool = False) -> LMResponse:
        return cls(
            choices=tuple(Choice(**c) for c in data["choices"]),
            usage=TokenUsage(**data.get("usage", {})),
            model=data.get("model", ""),
            cached=cached,
        )


class LMError(Exception):
    """Base class of every error raised by an LM call.

    Two kinds matter to everything above the LM layer (see :func:`is_infrastructure_error`):
    an *infrastructure* failure (the endpoint is unreachable, slow, misconfigured or answers
    nonsense) is never one example's fault and must never become a score, while a failure of
    *this request's content* (the prompt does not fit the context) is a recorded failure of the
    one example that made it.
    """

    lm: str | None = None
    """The LM that raised it (its ``repr``: backend, model, endpoint), set at the choke point."""
    attempts: int = 1
    """Requests sent before giving up (1 + the retries spent)."""

    def describe(self) -> str:
        """One line for a person: which LM failed, how, and after how many attempts."""
        where = f"{self.lm}: " if self.lm else ""
        tries = f" (after {self.attempts} attempts)" if self.attempts > 1 else ""
        return f"{where}{type(self).__name__}: {self}{tries}"


class LMTransientError(LMError):
    """A failure worth retrying: timeout, connection error, HTTP 429 or 5xx."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        """Seconds the server asked us to wait (``Retry-After``), when it said."""


class LMInvalidResponse(LMTransientError):
    """The endpoint answered, but not with a usable completion (no choices, no text, a body
    that is not the API's shape).  Retried like a transient failure and never cached."""


class LMRequestError(LMError):
    """A failure that retrying cannot fix: HTTP 4xx (bad request, auth, unknown model, ...)."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class ContextOverflow(LMRequestError):
    """This request's prompt (plus its max_tokens) does not fit the model's context window.

    A property of one example's prompt, not of the endpoint: recorded as that example's
    failure, never the end of a run."""


class ContentRefused(LMRequestError):
    """The endpoint refused this request's content (a content filter, a safety policy).

    Like :class:`ContextOverflow`, a property of one example's prompt, not of the endpoint:
    recorded as that example's failure."""


class BudgetExceeded(LMError):
    """Raised before an LM call that would exceed an LM-call or token budget."""


def is_infrastructure_error(exc: BaseException) -> bool:
    """True for an LM failure that says nothing about the example being answered: the
    endpoint, the network, the configuration or the cache failed.  Such a failure must stop
    an evaluation instead of scoring 0.  False for a content failure (:class:`ContextOverflow`,
    :class:`ContentRefused`) and for a spent budget (which stops a run for its own reason)."""
    return isinstance(exc, LMError) and not isinstance(
        exc, (ContextOverflow, ContentRefused, BudgetExceeded))
