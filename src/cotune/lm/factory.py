"""Build an LM from command-line style settings."""

from __future__ import annotations

from typing import Any

from cotune.lm.base import LM


def make_lm(
    model: str = "smollm2-135m",
    base_url: str | None = None,
    *,
    timeout: float | None = None,
    **options: Any,
) -> LM:
    """An OpenAI-compatible HTTP LM when ``base_url`` is given, else the embedded llama.cpp
    engine loading ``model`` (a packaged model name or a GGUF path).  Several base URLs,
    comma-separated, are replicas of one model served as one :class:`EndpointPool`.

    ``timeout``: seconds per HTTP request (default: the backend's, 120 s); it has no meaning
    for the embedded engine, which runs in this process, and is ignored there."""
    if timeout is not None and not timeout > 0:
        raise ValueError(f"the request timeout must be a number of seconds > 0, not {timeout}")
    if base_url:
        if timeout is not None:
            options["timeout"] = timeout
        urls = [u.strip() for u in base_url.split(",") if u.strip()]
        if len(urls) > 1:
            from cotune.lm.pool import EndpointPool

            return EndpointPool(model, urls, **options)
        from cotune.lm.openai_backend import OpenAILM

        return OpenAILM(model=model, base_url=base_url, **options)
    from cotune.lm.llamacpp import LlamaCppLM

    return LlamaCppLM(model=model, **options)
