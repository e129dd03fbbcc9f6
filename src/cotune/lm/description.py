"""What a saved program records of an LM (``LM.describe()``), and the checks a rebuild makes.

A description is plain JSON data (it goes into ``program.json``, the journal and Ray actors'
arguments), typed per backend: every description has ``backend`` and ``model``, and each
backend adds what it needs to build the LM again (:func:`cotune.lm.lm_from_description`).
Never an API key.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypedDict

from cotune.core.state import StateError
from cotune.lm.models import MODELS, ModelError, file_sha256, resolve_model_path


class LMDescription(TypedDict):
    """What every description has: the backend that builds it and the model it runs."""

    backend: str
    model: str


class _GGUFFields(LMDescription):
    path: str
    sha256: str
    lora_path: str | None
    lora_sha256: str | None
    n_ctx: int


class GGUFDescription(_GGUFFields, total=False):
    """A local GGUF model (``backend`` ``"llamacpp"``), optionally with a LoRA adapter, on
    either local engine; ``engine`` is ``"server"`` when it ran on the batched one."""

    engine: Literal["server"]


class OpenAIDescription(LMDescription):
    """An OpenAI-compatible endpoint (``backend`` ``"openai"``)."""

    base_url: str
    lora: str | None


class PoolDescription(LMDescription):
    """Replicas of one model behind several endpoints (``backend`` ``"openai-pool"``)."""

    base_urls: list[str]
    lora: str | None
    max_concurrency: int


class ScriptedDescription(LMDescription):
    """A scripted test LM (``backend`` ``"scripted"``): recorded, never rebuilt (its script
    is code)."""

    name: str


def gguf_description(
    model: str, model_path: Path, lora_path: Path | None, n_ctx: int
) -> GGUFDescription:
    """The description of a local GGUF model on either engine: enough to load it again and
    to check that the files are the same."""
    return {
        "backend": "llamacpp",
        "model": model,
        "path": str(model_path),
        "sha256": file_sha256(model_path),
        "lora_path": str(lora_path) if lora_path is not None else None,
        "lora_sha256": file_sha256(lora_path) if lora_path is not None else None,
        "n_ctx": n_ctx,
    }


class AdapterFileError(StateError):
    """A saved local LM that cannot be rebuilt: its adapter (or base model) file is missing,
    or differs from the one that was recorded."""


def checked_description(description: Any) -> LMDescription:
    """``description`` if it is a mapping with a string ``backend`` and ``model``, else a
    ValueError that says which field is wrong."""
    if not isinstance(description, Mapping):
        raise ValueError(f"an LM description is a JSON object, not {description!r}")
    for field in ("backend", "model"):
        if not isinstance(description.get(field), str) or not description[field]:
            raise ValueError(f"the LM description {dict(description)!r} has no {field!r} "
                             "(a non-empty string)")
    return description  # type: ignore[return-value]


def has_lora(description: Any) -> bool:
    """Whether ``description`` is a local GGUF model with a LoRA adapter (a fine-tuned LM)."""
    return (isinstance(description, Mapping) and description.get("backend") == "llamacpp"
            and bool(description.get("lora_path")))


def gguf_files(description: GGUFDescription | Mapping[str, Any]
               ) -> tuple[str | Path, Path, Path | None, int]:
    """``(model to load, model path, adapter path, n_ctx)`` of a GGUF description, after
    checking that the files are there and, where the description has their sha256, the ones
    recorded (:class:`AdapterFileError` if not)."""
    lora_path = description.get("lora_path")
    lora = Path(lora_path) if lora_path else None
    if lora is not None:
        _check_file(lora, description.get("lora_sha256"), "LoRA adapter")
    name = description.get("model")
    source = name if name in MODELS else description.get("path") or name
    try:
        model_path = resolve_model_path(source)  # type: ignore[arg-type]
    except (ModelError, TypeError) as exc:
        of = f" of adapter {lora}" if lora is not None else ""
        raise AdapterFileError(f"the base model {source!r}{of} is missing ({exc})") from exc
    _check_file(model_path, description.get("sha256"), "base model")
    n_ctx = description.get("n_ctx", 2048)
    if not isinstance(n_ctx, int) or isinstance(n_ctx, bool) or n_ctx < 1:
        raise ValueError(f"the LM description's n_ctx must be a whole number >= 1, not {n_ctx!r}")
    return source, model_path, lora, n_ctx  # type: ignore[return-value]


def _check_file(path: Path, expected: str | None, what: str) -> None:
    if not path.is_file():
        raise AdapterFileError(f"{what} {path} is missing")
    if expected is not None and file_sha256(path) != expected:
        raise AdapterFileError(f"{what} {path} has changed since it was recorded (sha256 differs)")
