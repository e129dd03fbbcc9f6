"""Build an LM from command-line style settings."""

from __future__ import annotations

from typing import Any

from cotune.lm.base import LM

SERVER_PREFIX = "server:"
"""``server:MODEL`` runs MODEL on the batched local engine (llama.cpp's server)."""


def make_lm(
    model: str = "smollm2-135m",
    base_url: str | None = None,
    *,
    timeout: float | None = None,
    **options: Any,
) -> LM:
    """An OpenAI-compatible HTTP LM when ``base_url`` is given; else ``model`` (a packaged
    model name or a GGUF path) on the embedded llama.cpp engine, or on the batched
    llama-server engine when written ``server:MODEL``.

    ``timeout``: seconds per HTTP request (default: the backend's, 120 s); it has no meaning
    for the embedded engine, which runs in this process, and is ignored there."""
    if timeout is not None and not timeout > 0:
        raise ValueError(f"the request timeout must be a number of seconds > 0, not {timeout}")
    if base_url:
        from cotune.lm.openai_backend import OpenAILM

        if timeout is not None:
            options["timeout"] = timeout
        return OpenAILM(model=model, base_url=base_url, **options)
    if model.startswith(SERVER_PREFIX):
        from cotune.lm.llama_server_lm import LlamaServerLM

        return LlamaServerLM(model=model[len(SERVER_PREFIX) :], **options)
    from cotune.lm.llamacpp import LlamaCppLM

    return LlamaCppLM(model=model, **options)
