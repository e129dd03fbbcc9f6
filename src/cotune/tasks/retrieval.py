"""Sparse BM25 retrieval (``bm25s``) over a JSON Lines corpus of ``{"title", "text"}`` passages.

The index is built once per corpus content and cached on disk under
``$COTUNE_CACHE_DIR/bm25/<corpus name>-<hash>/`` (the hash covers the corpus bytes and the
tokenizer settings), written to a temporary folder and renamed into place so that a crash or a
concurrent build never leaves a half-written index behind.

A retriever is a shared, read-only resource like an LM: programs hold it but never copy it
(``copy.deepcopy`` returns the same object), and searches from many threads are safe.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cotune._files import building_folder
from cotune.lm.cache import default_cache_dir
from cotune.tasks.data import read_jsonl

logger = logging.getLogger(__name__)

# Part of the cache key: change it whenever the tokenization or the BM25 settings change.
_INDEX_VERSION = "bm25s-v1-en-stopwords-lower"
_STOPWORDS = "en"


@dataclass(frozen=True)
class Passage:
    title: str
    text: str
    score: float


class BM25Retriever:
    """Top-k BM25 search over a ``{"title", "text"}`` JSON Lines corpus.

    Args:
        corpus_path: the corpus file; every passage is indexed as ``"title. text"``.
        cache_dir: where indexes are kept (default: ``default_cache_dir() / "bm25"``).

    ``built_index`` tells whether this construction built the index (True) or loaded it from
    the on-disk cache (False).
    """

    def __init__(
        self,
        corpus_path: str | os.PathLike[str],
        *,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        try:
            import bm25s
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("BM25 retrieval needs bm25s: pip install 'cotune[tasks]'") from exc
        # bm25s sets its own logger to DEBUG on import, which prints "DEBUG:bm25s:Building index
        # from tokens" under cotune's CLI: let it follow the root logger's level again
        logging.getLogger("bm25s").setLevel(logging.NOTSET)
        self._bm25s = bm25s
        self.corpus_path = Path(corpus_path)
        rows = read_jsonl(self.corpus_path, {"title": str, "text": str})
        if not rows:
            raise ValueError(f"the retrieval corpus {self.corpus_path} is empty")
        self.titles = [row["title"] for row in rows]
        self.texts = [row["text"] for row in rows]
        root = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "bm25"
        self.index_dir = root / f"{self.corpus_path.stem}-{self._corpus_key()}"
        self._lock = threading.Lock()
        self.built_index = False
        self._index = self._load_or_build()

    def __len__(self) -> int:
        return len(self.titles)

    def search(self, query: str, k: int = 3) -> list[Passage]:
        """The ``k`` best passages for ``query``, best first (fewer if few words match)."""
        tokens = self._tokenize([query])[0]
        with self._lock:
            known = [t for t in tokens if t in self._index.vocab_dict]
            if not known or k <= 0:
                return []
            k = min(k, len(self.titles))
            indices, scores = self._index.retrieve([known], k=k, show_progress=False)
        return [
            Passage(self.titles[i], self.texts[i], float(s))
            for i, s in zip(indices[0].tolist(), scores[0].tolist(), strict=True)
            if s > 0
        ]

    # a shared resource: programs that hold it are copied, it is not
    def __deepcopy__(self, memo: dict[int, Any]) -> BM25Retriever:
        return self

    def __copy__(self) -> BM25Retriever:
        return self

    def __repr__(self) -> str:
        return f"BM25Retriever({str(self.corpus_path)!r}, passages={len(self)})"

    # -- index -------------------------------------------------------------------------------

    def _corpus_key(self) -> str:
        digest = hashlib.sha256(_INDEX_VERSION.encode())
        with self.corpus_path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()[:16]

    def _tokenize(self, texts: list[str]) -> list[list[str]]:
        return self._bm25s.tokenize(
            texts, stopwords=_STOPWORDS, return_ids=False, show_progress=False
        )

    def _load_or_build(self) -> Any:
        if self.index_dir.is_dir():
            try:
                return self._bm25s.BM25.load(str(self.index_dir), show_progress=False)
            except Exception as exc:  # a damaged cache entry: rebuild it
                logger.warning("rebuilding the BM25 index at %s (%s)", self.index_dir, exc)
                shutil.rmtree(self.index_dir, ignore_errors=True)
        index = self._bm25s.BM25()
        documents = [f"{t}. {x}" for t, x in zip(self.titles, self.texts, strict=True)]
        index.index(self._tokenize(documents), show_progress=False)
        self.built_index = True
        self._save(index)
        return index

    def _save(self, index: Any) -> None:
        try:  # another process that built the same index first wins
            with building_folder(self.index_dir, complete=self.index_dir.is_dir) as tmp:
                index.save(str(tmp), show_progress=False)
        except OSError:
            if not self.index_dir.is_dir():
                raise


_shared: dict[tuple[Path, Path], BM25Retriever] = {}
_shared_lock = threading.Lock()


def shared_retriever(corpus_path: str | os.PathLike[str]) -> BM25Retriever:
    """One retriever per corpus file and cache folder in this process (loaded on first use)."""
    key = (Path(corpus_path).resolve(), default_cache_dir().resolve())
    with _shared_lock:
        if key not in _shared:
            _shared[key] = BM25Retriever(corpus_path)
        return _shared[key]
