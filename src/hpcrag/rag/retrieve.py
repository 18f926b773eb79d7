"""Hybrid retrieval over one collection generation: dense (hpcrag's IVF) and BM25, filtered, then fused.

Filters apply to both sides before their top-k, never after: BM25 masks its scores, and the dense
side scans exactly the matching rows' embeddings (a selective filter would leave IVF probing with
too few neighbours). The dense index runs in this process, or through a running `hpcrag index serve`
when a search endpoint file is given.
"""

from __future__ import annotations

import re
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hpcrag.config.rag_schema import CollectionSettings
from hpcrag.errors import HpcragError, QuestionError
from hpcrag.rag.collection import Collection, CollectionManifest
from hpcrag.rag.fusion import FUSION_MODES, Candidate, fuse
from hpcrag.rag.store import ChunkStore
from hpcrag.rag.types import Embedder

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_SPACE = re.compile(r"\s+")


def normalise_question(question: str, max_chars: int) -> str:
    """NFKC, control characters and lone surrogates gone, whitespace collapsed; bounded in length."""
    if not isinstance(question, str):
        raise QuestionError("the question must be text")
    if len(question) > max_chars:
        raise QuestionError(
            f"the question is {len(question):,} characters; the limit is {max_chars:,} "
            "(rag.yaml query.max_question_chars): shorten it"
        )
    text = question.encode("utf-8", "replace").decode("utf-8")
    text = _SPACE.sub(" ", _CONTROL.sub(" ", unicodedata.normalize("NFKC", text))).strip()
    if not text:
        raise QuestionError("the question is empty; ask something")
    return text


def parse_filters(items: list[str] | dict[str, Any] | None) -> dict[str, list[str]]:
    """`key=value` strings (or a mapping, values a string or a list) into {key: [values]}."""
    if not items:
        return {}
    pairs: list[tuple[str, str]] = []
    if isinstance(items, dict):
        for key, value in items.items():
            values = value if isinstance(value, list) else [value]
            pairs.extend((str(key), str(v)) for v in values)
    else:
        for item in items:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise QuestionError(f"bad filter {item!r}: write key=value, e.g. source=faq.html")
            pairs.append((key.strip(), value.strip()))
    filters: dict[str, list[str]] = {}
    for key, value in pairs:
        filters.setdefault(key, []).append(value)
    return filters


class LoadedCollection:
    """One generation opened for reading: store, embeddings, dense and sparse indexes."""

    def __init__(
        self, collection: Collection, search_endpoint: Path | None = None, replicas: Any = None
    ) -> None:
        """The dense side: a search service (`search_endpoint`), a `ReplicaSet` (`replicas`), else the
        generation's index opened in this process."""
        from hpcrag.rag.sparse import SparseIndex

        self.collection = collection
        self.manifest: CollectionManifest = collection.manifest()
        self.folder = collection.generation_path(self.manifest.generation)
        self.store = ChunkStore(self.folder / "store.sqlite")
        try:
            self.vectors = read_embeddings(self.folder, self.store.count, self.manifest.dim)
            self.sparse = SparseIndex.load(self.folder / "bm25")
            self.dense: Any
            self.nlist = _nlist(self.folder / "dense")
            if replicas is not None:
                self.dense = replicas
                self._check_service(f"replica group {replicas.group!r}")
            elif search_endpoint is not None:
                from hpcrag.search.client import SearchClient

                self.dense = SearchClient.from_endpoint_file(search_endpoint)
                self._check_service(f"the search service of {search_endpoint}")
            else:
                from hpcrag.search import DistributedIndex

                self.dense = DistributedIndex.open(self.folder / "dense", threads=1)
        except BaseException:
            self.store.close()
            raise

    def _check_service(self, served_by: str) -> None:
        """The service must hold this generation's dense index, file for file."""
        from hpcrag.search.layout import read_manifest

        if self.dense.health().get("fingerprint") != read_manifest(self.folder / "dense").fingerprint():
            self.dense.close()
            raise HpcragError(
                f"{served_by} does not hold generation {self.manifest.generation} of collection "
                f"{self.name!r}; serve it with `hpcrag index serve {self.folder / 'dense'}`"
            )

    @property
    def name(self) -> str:
        return self.collection.name

    def close(self) -> None:
        self.store.close()
        close = getattr(self.dense, "close", None)
        if close is not None:
            close()


def _nlist(dense: Path) -> int:
    import json

    try:
        return int(json.loads((dense / "manifest.json").read_text())["nlist"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise HpcragError(f"{dense} is missing or damaged ({exc}); re-ingest the collection") from None


def read_embeddings(folder: Path, rows: int, dim: int) -> np.ndarray:
    """A generation's embeddings (memory-mapped), checked against its store's rows and the dimension."""
    path = folder / "embeddings.npy"
    try:
        vectors = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise HpcragError(f"{path} is missing or damaged ({exc}); re-ingest the collection") from None
    if vectors.shape != (rows, dim):
        raise HpcragError(
            f"{path} holds {vectors.shape} embeddings, the store {rows} chunks of dimension {dim}; "
            "re-ingest the collection"
        )
    return vectors


@dataclass
class Retrieval:
    question: str
    candidates: list[Candidate]
    filtered_rows: int | None  # rows passing the filter (None: no filter)
    seconds: dict[str, float] = field(default_factory=dict)


class Retriever:
    def __init__(self, loaded: LoadedCollection, embedder: Embedder, settings: CollectionSettings) -> None:
        if embedder.dim != loaded.manifest.dim:
            raise HpcragError(
                f"collection {loaded.name!r} holds {loaded.manifest.dim}-d embeddings but the embedder gives "
                f"{embedder.dim}-d vectors; query it with the embedder that built it "
                f"({loaded.manifest.embedder})"
            )
        self.loaded = loaded
        self.embedder = embedder
        self.settings = settings

    def retrieve(
        self,
        question: str,
        filters: dict[str, list[str]] | None = None,
        fusion: str | None = None,
        candidates: int | None = None,
        query_vector: np.ndarray | None = None,
    ) -> Retrieval:
        """Fused candidates for an already normalised (and PII-checked) question."""
        mode = fusion or self.settings.retrieval.fusion
        if mode not in FUSION_MODES:
            raise QuestionError(f"unknown fusion {mode!r}; use one of {', '.join(FUSION_MODES)}")
        want = candidates or self.settings.retrieval.candidates
        seconds: dict[str, float] = {}
        store = self.loaded.store
        mask = None
        if filters:
            t0 = time.perf_counter()
            mask = store.filter_mask(filters)
            seconds["filter"] = time.perf_counter() - t0
        dense_side = (np.empty(0, np.int64), np.empty(0, np.float32))
        sparse_side = (np.empty(0, np.int64), np.empty(0, np.float32))
        if mode != "bm25":
            t0 = time.perf_counter()
            vector = query_vector if query_vector is not None else self.embedder.embed([question])[0]
            seconds["embed_query"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            dense_side = self._dense(np.asarray(vector, dtype=np.float32), want, mask)
            seconds["dense"] = time.perf_counter() - t0
        if mode != "dense":
            t0 = time.perf_counter()
            ids, scores = self.loaded.sparse.search(question, want, allowed=mask)
            sparse_side = (store.rows_of(ids), scores)
            seconds["bm25"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        fused = fuse(
            mode,
            dense_side,
            sparse_side,
            chunk_ids=store.chunk_ids(),
            alpha=self.settings.retrieval.hybrid_alpha,
            rrf_k=self.settings.retrieval.rrf_k,
        )
        seconds["fusion"] = time.perf_counter() - t0
        filtered = int(mask.sum()) if mask is not None else None
        return Retrieval(question, fused, filtered, seconds)

    def _dense(self, vector: np.ndarray, want: int, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """(rows, similarities) best first."""
        loaded = self.loaded
        if mask is not None:
            rows = np.flatnonzero(mask)
            if rows.size == 0:
                return rows.astype(np.int64), np.empty(0, np.float32)
            scores = np.asarray(loaded.vectors[rows], dtype=np.float32) @ vector
            top = np.argsort(-scores, kind="stable")[:want]
            return rows[top].astype(np.int64), scores[top]
        nprobe = self.settings.retrieval.nprobe or loaded.nlist
        result = loaded.dense.search(
            vector[None, :], k=min(want, loaded.store.count), nprobe=min(nprobe, loaded.nlist)
        )
        ids, scores = result.ids[0], result.distances[0]
        keep = ids >= 0
        rows = loaded.store.rows_of(ids[keep])
        found = rows >= 0
        return rows[found], scores[keep][found]
