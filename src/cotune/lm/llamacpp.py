"""The embedded llama.cpp engine (``llama-cpp-python``): a local GGUF model, optionally with a
GGUF LoRA adapter, on the CPU of this process.

``llama_cpp`` is imported on construction only, so ``import cotune`` works without it.  A
llama.cpp context is not thread-safe, so one lock serializes the calls to it; parallel callers
simply queue (the engine already uses every core for one request).
"""

from __future__ import annotations

import functools
import json
import os
import threading
from pathlib import Path
from typing import Any

from cotune.lm.base import LM
from cotune.lm.description import GGUFDescription, gguf_description, gguf_files
from cotune.lm.models import (
    DEFAULT_MODEL,
    MODELS,
    default_n_ctx,
    file_sha256,
    resolve_model_path,
)
from cotune.lm.types import (
    Choice,
    ContextOverflow,
    LMRequest,
    LMRequestError,
    LMResponse,
    TokenUsage,
)

THREADS_ENV = "COTUNE_LLAMA_THREADS"


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def whole_number_env(name: str) -> int | None:
    """The environment variable ``name`` as a whole number >= 1; None when it is not set."""
    setting = os.environ.get(name, "").strip()
    if not setting:
        return None
    try:
        value = int(setting)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{name} must be a whole number >= 1, got {setting!r}")
    return value


def default_threads() -> int:
    """``COTUNE_LLAMA_THREADS`` if set, else the cores this process may run on."""
    return whole_number_env(THREADS_ENV) or usable_cores()


class LlamaCppLM(LM):
    """A GGUF model run in-process by llama.cpp.  A request with a ``response_schema`` is
    decoded under the grammar llama-cpp-python builds from that JSON schema, so its answer
    always has the schema's form (unless ``max_tokens`` cuts it off).

    Args:
        model: a registered model name (see :func:`cotune.lm.list_models`) or a GGUF file path.
        n_ctx: context length in tokens (default: the model's trained context length from its
            GGUF metadata, capped by :func:`~cotune.lm.models.default_n_ctx`'s memory limit);
            a longer prompt is a :class:`ContextOverflow` (a recorded failure of that one
            example).
        n_threads: CPU threads for prompt processing and generation (default: the
            ``COTUNE_LLAMA_THREADS`` environment variable, else every core this process may use).
            On a machine shared with other jobs, fewer threads than cores is much faster:
            llama.cpp's threads wait on each other, so one descheduled thread stalls them all.
        lora_path: a GGUF LoRA adapter applied on top of the model.
        seed: mixed into the seed of sampled calls (temperature > 0) that give none of their
            own; that seed is derived from the request itself (:meth:`LMRequest.sampling_seed`),
            so a rerun samples the same answers in any call order.
        verbose: let llama.cpp log to stderr.
        **kwargs: passed to :class:`LM` (cache, retries, budget, defaults).
    """

    def __init__(
        self,
        model: str | os.PathLike[str] = DEFAULT_MODEL,
        *,
        n_ctx: int | None = None,
        n_threads: int | None = None,
        lora_path: str | os.PathLike[str] | None = None,
        seed: int | None = None,
        verbose: bool = False,
        **kwargs: Any,
    ) -> None:
        self.model_path = resolve_model_path(model)
        name = os.fspath(model)
        super().__init__(name if name in MODELS else self.model_path.name, **kwargs)
        self.lora_path = Path(lora_path) if lora_path is not None else None
        if self.lora_path is not None and not self.lora_path.is_file():
            raise FileNotFoundError(f"LoRA adapter not found: {self.lora_path}")
        if n_ctx is not None and n_ctx < 1:
            raise ValueError(f"n_ctx must be >= 1, got {n_ctx}")
        self.n_ctx = n_ctx or default_n_ctx(self.model_path)
        self.n_threads = n_threads or default_threads()
        self.seed = seed
        self._verbose = verbose
        self._lock = threading.Lock()

        try:
            import llama_cpp
        except ImportError as e:
            raise ImportError(
                "LlamaCppLM needs llama-cpp-python: pip install 'cotune[local]'"
            ) from e
        options: dict[str, Any] = {}
        if seed is not None:
            options["seed"] = seed
        self._llama = llama_cpp.Llama(
            model_path=str(self.model_path),
            n_ctx=self.n_ctx,
            n_threads=self.n_threads,
            n_threads_batch=self.n_threads,
            lora_path=str(self.lora_path) if self.lora_path is not None else None,
            verbose=verbose,
            **options,
        )

    default_adapter = "json"
    """Grammar-constrained JSON answers: see docs/results.md (structured output formats)."""

    def identity(self) -> dict[str, Any]:
        return {
            "backend": "llamacpp",
            "model": self.model,
            "sha256": file_sha256(self.model_path),
            "lora_sha256": file_sha256(self.lora_path) if self.lora_path is not None else None,
            "n_ctx": self.n_ctx,  # it caps max_tokens for long prompts, so it can change answers
        }

    def describe(self) -> GGUFDescription:
        """The model and adapter files (with their sha256) and the context length."""
        return gguf_description(self.model, self.model_path, self.lora_path, self.n_ctx)

    @classmethod
    def from_description(
        cls, description: GGUFDescription, *, like: LlamaCppLM | None = None, **options: Any
    ) -> LlamaCppLM:
        """The LM a :meth:`describe` recorded, after checking that its model and adapter files
        are the ones recorded (:class:`~cotune.lm.description.AdapterFileError` if not).

        ``like``: an LM of the same GGUF and context length (a fine-tuned LM's base) whose
        runtime settings (threads, sampling defaults, cache, budget) the rebuilt LM copies, as
        :meth:`with_lora` does; otherwise ``options`` go to the constructor."""
        source, model_path, lora, n_ctx = gguf_files(description)
        if like is not None and like.runs(model_path, n_ctx):
            return like.with_lora(lora)
        return cls(model=source, lora_path=lora, n_ctx=n_ctx, **options)

    def runs(self, model_path: Path, n_ctx: int) -> bool:
        """Whether this LM runs the GGUF at ``model_path`` (by content) with ``n_ctx``."""
        return self.n_ctx == n_ctx and file_sha256(self.model_path) == file_sha256(model_path)

    def with_lora(self, lora_path: str | os.PathLike[str] | None) -> LlamaCppLM:
        """A new LM for the same GGUF and runtime settings that applies the adapter at
        ``lora_path`` (None: the base model); this LM is left as it is.  It shares this LM's
        cache (the adapter's sha256 is part of the cache key) and budget."""
        return LlamaCppLM(
            model=self.model if self.model in MODELS else self.model_path,
            lora_path=lora_path,
            n_ctx=self.n_ctx,
            n_threads=self.n_threads,
            seed=self.seed,
            verbose=self._verbose,
            temperature=self.temperature,
            max_tokens=self.max_tokens,
            cache=self._cache_setting,
            max_retries=self.max_retries,
            retry_initial_delay=self.retry_initial_delay,
            retry_max_delay=self.retry_max_delay,
            retry_after_cap=self.retry_after_cap,
            budget=self.budget,
            price_per_million=self.price_per_million,
        )

    def _seeds(self, request: LMRequest) -> list[int | None]:
        """One seed per sample, so that the n samples of a request differ from each other."""
        if request.temperature <= 0 and request.n == 1:
            return [request.seed]
        if request.seed is not None:
            return [request.seed + i for i in range(request.n)]
        base = request.sampling_seed(self.seed)
        return [(base + i) % 2**31 for i in range(request.n)]

    def _complete(self, request: LMRequest) -> LMResponse:
        choices: list[Choice] = []
        prompt_tokens = completion_tokens = 0
        for seed in self._seeds(request):
            with self._lock:
                try:
                    out = self._llama.create_chat_completion(
                        messages=[dict(m) for m in request.messages],
                        temperature=request.temperature,
                        max_tokens=request.max_tokens,
                        stop=list(request.stop) or None,
                        seed=seed,
                        grammar=self._grammar(request.response_schema),
                    )
                except ValueError as e:  # e.g. "Requested tokens (N) exceed context window of M"
                    error = ContextOverflow if "context" in str(e).lower() else LMRequestError
                    raise error(f"llama.cpp ({self.model}, n_ctx={self.n_ctx}): {e}") from e
            choice = out["choices"][0]
            choices.append(
                Choice(
                    text=choice["message"]["content"] or "", finish_reason=choice["finish_reason"]
                )
            )
            usage = out.get("usage") or {}
            prompt_tokens += usage.get("prompt_tokens", 0)
            completion_tokens += usage.get("completion_tokens", 0)
        return LMResponse(
            choices=tuple(choices),
            usage=TokenUsage(prompt_tokens, completion_tokens),
            model=self.model,
        )

    def _grammar(self, schema: str | None) -> Any:
        if schema is None:
            return None
        try:
            return _grammar_for(schema)
        except Exception as e:  # the converter's own errors (asserts, KeyErrors, ...)
            raise LMRequestError(
                f"llama.cpp ({self.model}): cannot build a grammar from the output schema "
                f"({type(e).__name__}: {e}); schema: {schema[:300]}"
            ) from e

    def close(self) -> None:
        """Free the model's memory now rather than at garbage collection."""
        with self._lock:
            close = getattr(self._llama, "close", None)
            if callable(close):
                close()


@functools.lru_cache(maxsize=256)
def _grammar_for(schema: str) -> Any:
    """llama-cpp-python's grammar for a JSON schema (a GBNF string: safe to share).

    Its converter spells a string's ``maxLength`` N as N nested optional groups, which
    llama.cpp's grammar parser reads recursively: at a few thousand it overflows the stack.
    Each such run is respelled in GBNF's own bounded repetition, ``char{0,N}``, which the
    parser expands into a flat chain of rules; the language is the same."""
    from llama_cpp.llama_grammar import LlamaGrammar, json_schema_to_gbnf

    gbnf = json_schema_to_gbnf(schema)
    for n in sorted(_max_lengths(json.loads(schema)), reverse=True):
        nested = ("(char " * n).rstrip() + ")?" * n
        gbnf = gbnf.replace(nested, f"char{{0,{n}}}")
    return LlamaGrammar.from_string(gbnf, verbose=False)


def _max_lengths(schema: Any) -> set[int]:
    """Every ``maxLength`` in a JSON schema."""
    found: set[int] = set()
    if isinstance(schema, dict):
        if isinstance(schema.get("maxLength"), int) and schema["maxLength"] > 0:
            found.add(schema["maxLength"])
        for value in schema.values():
            found |= _max_lengths(value)
    elif isinstance(schema, list):
        for value in schema:
            found |= _max_lengths(value)
    return found
