"""``LlamaServerLM``: the batched local engine, a GGUF model served by a supervised
``llama-server`` child process (see :mod:`cotune.lm.llama_server`) and reached through the
OpenAI-compatible backend.

Same model names, GGUF paths, LoRA adapters, seeds, stop sequences and max_tokens as
:class:`~cotune.lm.LlamaCppLM`; concurrent calls are decoded together and each module's prompt
prefix stays cached in a slot.  The cache identity is the model's and adapter's sha256 and the
context length, never the slot count, port or batch size.
"""

from __future__ import annotations

import json
import os
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from cotune.lm.base import LM
from cotune.lm.description import GGUFDescription, gguf_description, gguf_files
from cotune.lm.llama_server import EngineStats, LlamaServer
from cotune.lm.models import DEFAULT_MODEL, file_sha256, resolve_model_path
from cotune.lm.openai_backend import OpenAILM, StructuredMode
from cotune.lm.types import (
    ContextOverflow,
    LMRequest,
    LMRequestError,
    LMResponse,
    LMTransientError,
    TokenUsage,
)

DEFAULT_TIMEOUT = 900.0
"""Seconds per request: on a loaded 2-core CPU a long prompt behind busy slots takes minutes."""
_OVERFLOW_MARKERS = ("exceeds the available context size", "larger than the max context size")


class LlamaServerLM(LM):
    """A GGUF model served by llama.cpp's server with ``parallel`` batched slots.  Its answers
    are structured by default (the JSON adapter: the server decodes under the schema's
    grammar, as the embedded engine does).

    Args:
        model: a registered model name or a GGUF path (default: that of ``server``, else
            ``smollm2-135m``).
        lora_path: a GGUF LoRA adapter applied to this LM's requests only.
        server: a running :class:`LlamaServer` to share (several adapters over one base model:
            see :meth:`with_lora`); by default this LM starts, owns and closes its own.
        n_ctx, parallel, n_threads, cache_ram_mib: settings of the server this LM starts.
        seed: seeds the sampler of calls that give no seed of their own (temperature > 0).
        timeout: seconds per request.
        **kwargs: passed to :class:`LM` (cache, retries, budget, defaults).
    """

    default_adapter = "json"

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        *,
        lora_path: str | os.PathLike[str] | None = None,
        server: LlamaServer | None = None,
        n_ctx: int | None = None,
        parallel: int | None = None,
        n_threads: int | None = None,
        cache_ram_mib: int = 1024,
        seed: int | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        **kwargs: Any,
    ) -> None:
        self.lora_path = Path(lora_path).expanduser().resolve() if lora_path is not None else None
        if self.lora_path is not None and not self.lora_path.is_file():
            raise FileNotFoundError(f"LoRA adapter not found: {self.lora_path}")
        if server is None:
            server = LlamaServer(
                model if model is not None else DEFAULT_MODEL,
                n_ctx=n_ctx, parallel=parallel, n_threads=n_threads,
                loras=[self.lora_path] if self.lora_path is not None else (),
                cache_ram_mib=cache_ram_mib,
            )  # fmt: skip
            self._owns_server = True
        else:
            if model is not None and resolve_model_path(model).resolve() != \
                    server.model_path.resolve():
                raise ValueError(
                    f"model {os.fspath(model)!r} is not the model of {server!r}"
                )
            if self.lora_path is not None:
                server.add_adapter(self.lora_path)
            self._owns_server = False
        super().__init__(server.model_name, **kwargs)
        self.server = server
        self.timeout = timeout
        self.seed = seed
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()
        self._clients: dict[tuple[int, int | None], _ServerClient] = {}
        self._clients_lock = threading.Lock()

    @property
    def model_path(self) -> Path:
        return self.server.model_path

    @property
    def n_ctx(self) -> int:
        return self.server.n_ctx

    @property
    def n_threads(self) -> int:
        return self.server.n_threads

    def identity(self) -> dict[str, Any]:
        return {
            "backend": "llama-server",
            "model": self.model,
            "sha256": file_sha256(self.model_path),
            "lora_sha256": file_sha256(self.lora_path) if self.lora_path is not None else None,
            "n_ctx": self.n_ctx,
        }

    def describe(self) -> GGUFDescription:
        """The fields of LlamaCppLM's, so a saved fine-tuned program loads on either engine,
        and ``engine: "server"``."""
        return {**gguf_description(self.model, self.model_path, self.lora_path, self.n_ctx),
                "engine": "server"}

    @classmethod
    def from_description(
        cls, description: GGUFDescription, *, like: LlamaServerLM | None = None,
        **options: Any,
    ) -> LlamaServerLM:  # fmt: skip
        """The LM a :meth:`describe` recorded (of either engine), after checking its files as
        :meth:`LlamaCppLM.from_description` does.  ``like``: an LM whose server runs the same
        GGUF with the same context length: the rebuilt LM shares it (:meth:`with_lora`);
        otherwise it starts its own server, ``options`` going to the constructor."""
        source, model_path, lora, n_ctx = gguf_files(description)
        if like is not None and like.runs(model_path, n_ctx):
            return like.with_lora(lora)
        return cls(model=source, lora_path=lora, n_ctx=n_ctx, **options)

    def runs(self, model_path: Path, n_ctx: int) -> bool:
        """Whether this LM's server runs the GGUF at ``model_path`` (by content) with
        ``n_ctx``."""
        return self.n_ctx == n_ctx and file_sha256(self.model_path) == file_sha256(model_path)

    def with_lora(self, lora_path: str | os.PathLike[str] | None) -> LlamaServerLM:
        """An LM on the same server (and with the same settings) that applies ``lora_path``
        (None: the base model).  The server loads the adapter before its next request."""
        return LlamaServerLM(
            lora_path=lora_path, server=self.server, seed=self.seed, timeout=self.timeout,
            temperature=self.temperature, max_tokens=self.max_tokens,
            cache=self._cache_setting, max_retries=self.max_retries,
            retry_initial_delay=self.retry_initial_delay, retry_max_delay=self.retry_max_delay,
            retry_after_cap=self.retry_after_cap, budget=self.budget,
            price_per_million=self.price_per_million,
        )  # fmt: skip

    def engine_stats(self) -> EngineStats:
        """Tokens the server evaluated and reused, over every LM sharing it."""
        return self.server.stats()

    # -- calls ---------------------------------------------------------------------------------

    def _complete(self, request: LMRequest) -> LMResponse:
        if request.n == 1 and (request.seed is not None or request.temperature <= 0):
            return self._one(request)
        seeds = self._seeds(request)
        singles = [replace(request, n=1, seed=seed) for seed in seeds]
        if len(singles) == 1:
            return self._one(singles[0])
        with ThreadPoolExecutor(max_workers=min(len(singles), self.server.parallel)) as pool:
            answers = list(pool.map(self._one, singles))  # decoded together by the server
        return LMResponse(
            choices=tuple(a.choices[0] for a in answers),
            usage=TokenUsage(
                sum(a.usage.prompt_tokens for a in answers),
                sum(a.usage.completion_tokens for a in answers),
            ),
            model=self.model,
        )

    def _seeds(self, request: LMRequest) -> list[int | None]:
        """One seed per sample, as LlamaCppLM draws them, so the n samples differ."""
        if request.temperature <= 0 and request.n == 1:
            return [request.seed]
        if request.seed is not None:
            return [request.seed + i for i in range(request.n)]
        with self._rng_lock:
            return [self._rng.randrange(2**31) for _ in range(request.n)]

    def _one(self, request: LMRequest) -> LMResponse:
        lora_id = self.server.adapter_id(self.lora_path)
        with self.server.slot() as (base_url, generation):
            client = self._client(base_url, generation, lora_id)
            try:
                response = client._complete(request)
            except LMTransientError:
                self.server.check_alive()  # a dead server is not worth retrying
                raise
            except LMRequestError as e:
                if not isinstance(e, ContextOverflow) and any(
                    marker in str(e) for marker in _OVERFLOW_MARKERS
                ):
                    raise ContextOverflow(str(e), status_code=e.status_code) from e
                raise
        return replace(response, model=self.model)

    def _client(self, base_url: str, generation: int, lora_id: int | None) -> _ServerClient:
        key = (generation, lora_id)
        with self._clients_lock:
            client = self._clients.get(key)
            if client is None:
                self._clients = {k: c for k, c in self._clients.items() if k[0] == generation}
                client = self._clients[key] = _ServerClient(
                    self.model, base_url, lora_id, self.server, self.timeout
                )
            return client

    def close(self) -> None:
        """Stop the server if this LM started it (an LM made by ``with_lora`` shares it)."""
        if self._owns_server:
            self.server.close()

    def __repr__(self) -> str:
        lora = f", lora_path={str(self.lora_path)!r}" if self.lora_path else ""
        return f"LlamaServerLM(model={self.model!r}{lora}, parallel={self.server.parallel})"


class _ServerClient(OpenAILM):
    """The HTTP transport to one server generation, for one adapter: OpenAILM's request body
    (structured output included) plus llama-server's per-request ``lora`` field, and its
    ``timings`` counted into the server's stats.  Its own cache, retries and usage are unused:
    the owning :class:`LlamaServerLM` is the choke point."""

    def __init__(
        self, model: str, base_url: str, lora_id: int | None, server: LlamaServer,
        timeout: float,
    ) -> None:  # fmt: skip
        super().__init__(
            model, base_url=base_url, api_key="not-needed", timeout=timeout, cache=None,
            max_retries=0, max_concurrency=server.parallel,
        )  # fmt: skip
        self.lora_id = lora_id
        self.has_adapters = bool(server.adapters)
        self._server = server

    def _body(self, request: LMRequest, mode: StructuredMode = "none") -> dict[str, Any]:
        body = super()._body(request, mode)
        if self.lora_id is not None:
            body["lora"] = [{"id": self.lora_id, "scale": 1.0}]
        elif self.has_adapters:
            # explicit zeros, never an absent field: llama-server keeps a slot's KV cache when
            # a request without ``lora`` follows one with an adapter, and reuses it (wrongly)
            body["lora"] = [{"id": 0, "scale": 0.0}]
        return body

    def _parse(self, payload: bytes | str) -> LMResponse:
        response = super()._parse(payload)
        try:
            data = json.loads(payload)
            self._server.record(data.get("usage") or {}, data.get("timings") or {})
        except (ValueError, AttributeError):
            pass  # the counters are a report, not a reason to fail an answer parsed above
        return response
