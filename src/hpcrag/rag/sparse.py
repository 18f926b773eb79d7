"""BM25 keyword search over a corpus (bm25s, English stemming and stopwords), saved as one folder.

`search` scores every row, applies an optional row filter to the scores before taking the top k (so a
selective filter still yields k matches when k exist) and returns only rows that share a term with the
query, best first, ties in row order. `save` replaces the folder whole; `load` of a missing or damaged
folder raises an HpcragError saying to rebuild it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from hpcrag.errors import HpcragError

_MANIFEST = "sparse.json"
_IDS = "ids.npy"
_FORMAT = {"format": "hpcrag-bm25", "version": 1, "stemmer": "english", "stopwords": "en"}


def _tokenize(texts: list[str]) -> list[list[str]]:
    """Lower-cased words of two or more characters, English stopwords removed, stemmed."""
    import bm25s
    import Stemmer

    return bm25s.tokenize(
        texts, stopwords="en", stemmer=Stemmer.Stemmer("english"), return_ids=False, show_progress=False
    )


class SparseIndex:
    """A BM25 index whose rows carry int64 ids (chunk ids, say)."""

    def __init__(self, retriever: Any, ids: np.ndarray) -> None:
        self._retriever = retriever
        self._ids = ids

    @classmethod
    def build(cls, texts: list[str], ids: np.ndarray) -> SparseIndex:
        """Index `texts`; row i has id `ids[i]`."""
        import bm25s

        ids = np.asarray(ids, dtype=np.int64)
        if ids.shape != (len(texts),):
            raise ValueError(f"{len(texts)} texts need as many ids, not an array of shape {ids.shape}")
        if not texts:
            raise HpcragError("there is nothing to index for keyword search; add documents first")
        retriever = bm25s.BM25()
        retriever.index(_tokenize(list(texts)), show_progress=False)
        return cls(retriever, ids)

    @property
    def ids(self) -> np.ndarray:
        return self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def search(self, query: str, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Ids and scores (float32) of at most `k` rows with a positive score, best first; `allowed`, a
        boolean mask over rows, keeps the others out before the top k is taken."""
        vocabulary = self._retriever.vocab_dict
        terms = [term for term in _tokenize([query])[0] if term in vocabulary]
        if allowed is not None:
            allowed = np.asarray(allowed)
            if allowed.shape != (len(self),) or allowed.dtype != np.bool_:
                raise ValueError(
                    f"allowed must be a boolean mask of {len(self)} rows, not {allowed.dtype}{allowed.shape}"
                )
        if not terms or k <= 0 or (allowed is not None and not allowed.any()):
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
        mask = None if allowed is None else allowed.astype(np.float32)
        scores = np.asarray(self._retriever.get_scores(terms, weight_mask=mask), dtype=np.float32)
        rows = np.flatnonzero(scores > 0)
        if len(rows) > k:
            # Keep every row tied with the k-th best, so the lexsort below picks among ties by row.
            kth = scores[rows][np.argpartition(-scores[rows], k - 1)[k - 1]]
            rows = rows[scores[rows] >= kth]
        rows = rows[np.lexsort((rows, -scores[rows]))][:k]
        return self._ids[rows], scores[rows]

    def save(self, folder: Path | str) -> None:
        """Write the index into `folder`, replacing what is there: built in a temporary folder beside it,
        then renamed into place."""
        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".tmp"))
        try:
            self._retriever.save(staging, show_progress=False)
            np.save(staging / _IDS, self._ids)
            (staging / _MANIFEST).write_text(json.dumps({**_FORMAT, "rows": len(self)}))
            if folder.exists():
                # A folder cannot be renamed over a non-empty one: move the old aside, then drop it.
                old = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".old"))
                os.replace(folder, old / "index")
                os.replace(staging, folder)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(staging, folder)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    @classmethod
    def load(cls, folder: Path | str) -> SparseIndex:
        import bm25s

        folder = Path(folder)
        if not (folder / _MANIFEST).is_file():
            raise HpcragError(f"no keyword (BM25) index in {folder}; build the index first")
        try:
            manifest = json.loads((folder / _MANIFEST).read_text())
            if {key: manifest.get(key) for key in _FORMAT} != _FORMAT:
                raise ValueError(f"{_MANIFEST} describes another format: {manifest}")
            ids = np.load(folder / _IDS, allow_pickle=False)
            retriever = bm25s.BM25.load(folder, show_progress=False)
            rows = retriever.scores["num_docs"]
            if ids.dtype != np.int64 or ids.shape != (rows,) or manifest["rows"] != rows:
                raise ValueError(
                    f"{rows} rows in the index but ids of shape {ids.shape} "
                    f"and {manifest['rows']} rows in {_MANIFEST}"
                )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise HpcragError(
                f"the keyword (BM25) index in {folder} is damaged ({exc}); rebuild the index"
            ) from None
        return cls(retriever, ids)
