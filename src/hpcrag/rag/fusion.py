"""Hybrid fusion: one ranked list of candidates from a dense and a BM25 result list.

`fuse` promises a deterministic order (score descending, then row ascending) and keeps every side's raw
score and 1-based rank on each candidate, so later stages and `rag eval` can show where a hit came from.
Convex fusion min-max normalises each side over its own candidates (the DESIGN's measured best, alpha 0.7
on the dense side); reciprocal-rank fusion needs no normalisation; "dense" and "bm25" use one side alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from hpcrag.errors import HpcragError

FUSION_MODES = ("convex", "rrf", "dense", "bm25")
DEFAULT_ALPHA = 0.7
DEFAULT_RRF_K = 60

# (rows, scores) of one retrieval side, higher scores better, in any order.
SideResult = tuple[Sequence[int] | np.ndarray, Sequence[float] | np.ndarray]
# chunk id of each row: an array indexed by row, or a function of the row.
ChunkIds = Sequence[int] | np.ndarray | Callable[[int], int]


@dataclass
class Candidate:
    """One retrieved chunk as it moves through fusion, reranking and MMR."""

    row: int  # row of the chunk in the collection's arrays (0..n-1)
    chunk_id: int  # stable int64 id
    score: float  # the current stage's score (fused, then reranked)
    scores: dict[str, float] = field(default_factory=dict)  # every stage's score: "dense", "bm25", "fused"...
    ranks: dict[str, int] = field(default_factory=dict)  # 1-based rank on each retrieval side it appeared


def fuse(
    mode: str,
    dense: SideResult | None,
    sparse: SideResult | None,
    *,
    chunk_ids: ChunkIds,
    alpha: float = DEFAULT_ALPHA,
    rrf_k: int = DEFAULT_RRF_K,
) -> list[Candidate]:
    """Fuse the sides `mode` needs ("convex", "rrf", "dense" or "bm25"); a missing side counts as empty."""
    dense_side = _side(dense)
    sparse_side = _side(sparse)
    if mode == "convex":
        if not 0.0 <= alpha <= 1.0:
            raise HpcragError(
                f"hybrid alpha {alpha} is outside [0, 1]; set it between 0 (BM25) and 1 (dense)"
            )
        fused = _convex(dense_side, sparse_side, alpha)
    elif mode == "rrf":
        if rrf_k <= 0:
            raise HpcragError(f"RRF k {rrf_k} must be positive; the usual value is {DEFAULT_RRF_K}")
        fused = _rrf(dense_side, sparse_side, rrf_k)
    elif mode == "dense":
        fused = dict(dense_side)
        sparse_side = {}
    elif mode == "bm25":
        fused = dict(sparse_side)
        dense_side = {}
    else:
        raise HpcragError(f"unknown fusion mode {mode!r}; use one of {', '.join(FUSION_MODES)}")
    return _candidates(fused, {"dense": dense_side, "bm25": sparse_side}, chunk_ids)


def _side(result: SideResult | None) -> dict[int, float]:
    """Row -> best score of one side, dropping the -1 rows an index pads short results with."""
    if result is None:
        return {}
    rows, scores = result
    rows = np.asarray(rows, dtype=np.int64).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if rows.shape != scores.shape:
        raise ValueError(f"{rows.size} rows but {scores.size} scores")
    side: dict[int, float] = {}
    for row, score in zip(rows.tolist(), scores.tolist(), strict=True):
        if row >= 0 and not math.isnan(score) and (row not in side or score > side[row]):
            side[row] = score
    return side


def _normalised(side: dict[int, float]) -> dict[int, float]:
    if not side:
        return {}
    low, high = min(side.values()), max(side.values())
    if high == low:
        return dict.fromkeys(side, 1.0)
    return {row: (score - low) / (high - low) for row, score in side.items()}


def _convex(dense: dict[int, float], sparse: dict[int, float], alpha: float) -> dict[int, float]:
    dense_norm, sparse_norm = _normalised(dense), _normalised(sparse)
    return {
        row: alpha * dense_norm.get(row, 0.0) + (1.0 - alpha) * sparse_norm.get(row, 0.0)
        for row in dense_norm.keys() | sparse_norm.keys()
    }


def _rrf(dense: dict[int, float], sparse: dict[int, float], k: int) -> dict[int, float]:
    fused: dict[int, float] = {}
    for side in (dense, sparse):
        for row, rank in _ranks(side).items():
            fused[row] = fused.get(row, 0.0) + 1.0 / (k + rank)
    return fused


def _ranks(side: dict[int, float]) -> dict[int, int]:
    """1-based ranks by score, ties broken by row so that ranks never depend on input order."""
    ordered = sorted(side, key=lambda row: (-side[row], row))
    return {row: rank for rank, row in enumerate(ordered, start=1)}


def _candidates(
    fused: dict[int, float], sides: dict[str, dict[int, float]], chunk_ids: ChunkIds
) -> list[Candidate]:
    chunk_id_of = chunk_ids if callable(chunk_ids) else chunk_ids.__getitem__
    ranks = {name: _ranks(side) for name, side in sides.items()}
    candidates = []
    for row in sorted(fused, key=lambda row: (-fused[row], row)):
        candidate = Candidate(row=row, chunk_id=int(chunk_id_of(row)), score=fused[row])
        for name, side in sides.items():
            if row in side:
                candidate.scores[name] = side[row]
                candidate.ranks[name] = ranks[name][row]
        candidate.scores["fused"] = fused[row]
        candidates.append(candidate)
    return candidates
