"""A scripted LM for tests: whole optimization loops run in milliseconds, with no model."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from cotune.lm.base import LM
from cotune.lm.cache import LMCache
from cotune.lm.description import ScriptedDescription
from cotune.lm.types import Choice, LMRequest, LMResponse, TokenUsage

Script = Callable[[LMRequest], str] | Sequence[str] | str


class ScriptedLM(LM):
    """Answers from a script: a fixed string, a list consumed in order (cycling), or a function
    of the request.  Every request that reaches it is kept in ``requests``.

    Unlike real backends it has no cache unless one is passed, so tests stay hermetic.
    """

    def __init__(
        self,
        script: Script,
        *,
        model: str = "scripted",
        cache: LMCache | None = None,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, cache=cache, **kwargs)
        self._script = script
        self._lock = threading.Lock()
        self._position = 0
        self.name = name or model
        self.requests: list[LMRequest] = []

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), "name": self.name}

    def describe(self) -> ScriptedDescription:
        """Recorded in saved programs like any LM's; never rebuilt (the script is code)."""
        return {"backend": "scripted", "model": self.model, "name": self.name}

    def _next_answer(self, request: LMRequest) -> str:
        if isinstance(self._script, str):
            return self._script
        if callable(self._script):
            return self._script(request)
        with self._lock:
            answer = self._script[self._position % len(self._script)]
            self._position += 1
        return answer

    def _complete(self, request: LMRequest) -> LMResponse:
        with self._lock:
            self.requests.append(request)
        texts = [self._next_answer(request) for _ in range(request.n)]
        prompt_tokens = sum(len(m["content"].split()) for m in request.messages)
        return LMResponse(
            choices=tuple(Choice(text=t, finish_reason="stop") for t in texts),
            usage=TokenUsage(prompt_tokens, sum(len(t.split()) for t in texts)),
            model=self.model,
        )
