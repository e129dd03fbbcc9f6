"""Build an LM from command-line style settings."""

from __future__ import annotations

from collections.abc import Callable, Mapping
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
    llama-server engine when written ``server:MODEL``.  Several base URLs,
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
    if model.startswith(SERVER_PREFIX):
        from cotune.lm.llama_server_lm import LlamaServerLM

        return LlamaServerLM(model=model[len(SERVER_PREFIX) :], **options)
    from cotune.lm.llamacpp import LlamaCppLM

    return LlamaCppLM(model=model, **options)


def lm_from_description(description: Mapping[str, Any] | Callable[[], LM],
                        **options: Any) -> LM:
    """Build an LM again from what its ``describe()`` said (``backend`` ``llamacpp``,
    ``openai`` or ``openai-pool``), or by calling a zero-argument factory: how a worker
    process (a Ray actor) gets its own replica of the LM.  ``options`` go to the constructor
    (cache, retries, threads, ...)."""
    if callable(description):
        return description()
    if not isinstance(description, Mapping):
        raise ValueError(f"an LM description is a dict or a factory, not {description!r}")
    backend = description.get("backend")
    model = description.get("model")
    if backend == "llamacpp":
        from cotune.lm.llamacpp import LlamaCppLM
        from cotune.lm.models import MODELS

        source = model if model in MODELS else description.get("path") or model
        return LlamaCppLM(model=source, n_ctx=description.get("n_ctx", 2048),
                          lora_path=description.get("lora_path"), **options)
    if backend == "openai":
        from cotune.lm.openai_backend import OpenAILM

        return OpenAILM(model, base_url=description.get("base_url"),
                        lora=description.get("lora"), **options)
    if backend == "openai-pool":
        from cotune.lm.pool import EndpointPool

        options.setdefault("max_concurrency", description.get("max_concurrency", 8))
        return EndpointPool(model, description.get("base_urls") or [],
                            lora=description.get("lora"), **options)
    raise ValueError(f"cannot build an LM of backend {backend!r} from {dict(description)!r}; "
                     "known: llamacpp, openai, openai-pool (or pass a factory)")
