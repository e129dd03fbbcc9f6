"""Build an LM from command-line style settings."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from cotune.lm.base import LM
from cotune.lm.description import LMDescription, checked_description, gguf_files

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


def lm_from_description(
    description: LMDescription | Mapping[str, Any] | Callable[[], LM],
    *,
    like: LM | None = None,
    **options: Any,
) -> LM:
    """Build an LM again from what its ``describe()`` recorded, or by calling a zero-argument
    factory: how a saved program gets its fine-tuned LMs back and how a worker process (a Ray
    actor) gets its own replica of the LM.  The one place that rebuilds LMs.

    A local GGUF description (``backend`` ``llamacpp``) has its model and adapter files
    checked against their recorded sha256 first (:class:`AdapterFileError`).  ``like``: the
    LM the description's LM was made from (a fine-tuned LM's base); when it runs the same GGUF
    with the same context length, the rebuilt LM is ``like.with_lora(adapter)``, with its
    runtime settings, on its server for the batched engine.  Otherwise the LM is built anew on
    the embedded engine, whichever engine recorded it.  ``options`` go to the constructor
    (cache, retries, threads, ...)."""
    if callable(description):
        return description()
    if not isinstance(description, Mapping):
        raise ValueError(f"an LM description is a dict or a factory, not {description!r}")
    backend = description.get("backend")
    builder = _BUILDERS.get(backend) if isinstance(backend, str) else None
    if builder is None:
        raise ValueError(f"cannot build an LM of backend {backend!r} from {dict(description)!r}; "
                         f"known: {', '.join(_BUILDERS)} (or pass a factory)")
    return builder(checked_description(description), like, options)


def _gguf(description: Any, like: LM | None, options: dict[str, Any]) -> LM:
    from cotune.lm.llama_server_lm import LlamaServerLM
    from cotune.lm.llamacpp import LlamaCppLM

    if isinstance(like, LlamaServerLM):
        _, model_path, _, n_ctx = gguf_files(description)
        if like.runs(model_path, n_ctx):
            return LlamaServerLM.from_description(description, like=like)
    return LlamaCppLM.from_description(
        description, like=like if isinstance(like, LlamaCppLM) else None, **options)


def _openai(description: Any, like: LM | None, options: dict[str, Any]) -> LM:
    from cotune.lm.openai_backend import OpenAILM

    return OpenAILM.from_description(description, **options)


def _pool(description: Any, like: LM | None, options: dict[str, Any]) -> LM:
    from cotune.lm.pool import EndpointPool

    return EndpointPool.from_description(description, **options)


def _scripted(description: Any, like: LM | None, options: dict[str, Any]) -> LM:
    from cotune.lm.scripted import ScriptedLM

    return ScriptedLM.from_description(description, **options)


_BUILDERS: dict[str, Callable[[Any, LM | None, dict[str, Any]], LM]] = {
    "llamacpp": _gguf, "openai": _openai, "openai-pool": _pool, "scripted": _scripted,
}
