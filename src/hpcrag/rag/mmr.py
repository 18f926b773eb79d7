"""Maximal marginal relevance: pick k candidates that are relevant and not redundant with each other.

Each step takes the candidate with the highest lambda * relevance - (1 - lambda) * (greatest cosine
similarity to one already picked), where relevance is the candidate's current score min-max normalised
over the set (so fused, reranked or judge scores all work), and skips a candidate whose document already
has `max_per_document` picks. The result is in pick order; each pick records its MMR value in
scores["mmr"] and keeps its `score`. Ties go to the earlier candidate, so the outcome is deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from hpcrag.rag.fusion import Candidate

DEFAULT_LAMBDA = 0.7


def mmr(
    candidates: Sequence[Candidate],
    vectors: np.ndarray,
    k: int,
    lambda_: float = DEFAULT_LAMBDA,
    max_per_document: int | None = None,
    document_of: Sequence[int] | np.ndarray | None = None,
) -> list[Candidate]:
    """Up to k of `candidates`; `vectors[row]` is a candidate's unit embedding, `document_of[row]` its
    document (needed only with `max_per_document`)."""
    if not 0.0 <= lambda_ <= 1.0:
        raise ValueError(f"lambda_ {lambda_} is outside [0, 1]")
    if max_per_document is not None and (max_per_document < 1 or document_of is None):
        raise ValueError("max_per_document needs to be at least 1 and comes with document_of")
    if k <= 0 or not candidates:
        return []
    rows = np.fromiter((c.row for c in candidates), dtype=np.int64, count=len(candidates))
    unit = np.asarray(vectors, dtype=np.float32)[rows]
    similarity = unit @ unit.T
    scores = np.array([c.score for c in candidates], dtype=np.float64)
    spread = scores.max() - scores.min()
    relevance = (scores - scores.min()) / spread if spread > 0 else np.ones_like(scores)
    documents = None if max_per_document is None else np.asarray(document_of)[rows]

    redundancy = np.zeros(len(candidates))  # greatest similarity to a pick so far
    open_ = np.ones(len(candidates), dtype=bool)
    per_document: dict[int, int] = {}
    picked: list[Candidate] = []
    while len(picked) < k and open_.any():
        value = lambda_ * relevance - (1.0 - lambda_) * redundancy
        best = int(np.argmax(np.where(open_, value, -np.inf)))
        open_[best] = False
        if documents is not None:
            document = int(documents[best])
            if per_document.get(document, 0) >= max_per_document:
                continue
            per_document[document] = per_document.get(document, 0) + 1
        chosen = candidates[best]
        picked.append(
            replace(chosen, scores={**chosen.scores, "mmr": float(value[best])}, ranks=dict(chosen.ranks))
        )
        redundancy = np.maximum(redundancy, similarity[best])
    return picked
