"""The shard-local scan of one segment: score the queries against the lists they probe, keep the top-k.

List-major: the (query, list) pairs are grouped by list, so each list is read once per batch and
scored against all the queries that probe it with one matrix product (BLAS on the CPU, cuBLAS on
the GPU). Per list only its top-k per query survive, so memory stays O(queries x nprobe x k). Rows
outside the segment's mask (deleted, or not matching a filter) score the metric's worst.
Works on NumPy and CuPy arrays alike. This is the `matmul` scan backend (see `backends.py`).
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from hpcrag.search.arrays import array_module, to_numpy
from hpcrag.search.metric import Metric
from hpcrag.search.store import Segment
from hpcrag.search.topk import empty_topk, select_topk

CANDIDATE_BUDGET = 1 << 24  # candidate slots (queries x nprobe x k) held at once


def scan(
    queries: Any, probes: Any, segment: Segment, mask: np.ndarray | None, k: int, metric: Metric
) -> tuple[Any, Any]:
    """Top-k (scores, ids) per query over its probed lists; probes of -1 are skipped."""
    nq, nprobe = probes.shape
    rows_per_chunk = max(1, CANDIDATE_BUDGET // (nprobe * k))
    xp = array_module(queries)
    allowed = None if mask is None else xp.asarray(mask.astype(bool))
    if nq <= rows_per_chunk:
        return _scan_chunk(queries, probes, segment, allowed, k, metric)
    parts = [
        _scan_chunk(
            queries[lo : lo + rows_per_chunk], probes[lo : lo + rows_per_chunk], segment, allowed, k, metric
        )
        for lo in range(0, nq, rows_per_chunk)
    ]
    return xp.concatenate([p[0] for p in parts]), xp.concatenate([p[1] for p in parts])


def _scan_chunk(
    queries: Any, probes: Any, segment: Segment, allowed: Any, k: int, metric: Metric
) -> tuple[Any, Any]:
    xp = array_module(queries)
    nq, nprobe = probes.shape
    host_probes = to_numpy(probes)
    query_of, slot_of = np.nonzero(host_probes >= 0)
    probed = host_probes[query_of, slot_of]
    order = np.argsort(probed, kind="stable")
    query_of, slot_of, probed = query_of[order], slot_of[order], probed[order]
    starts = np.flatnonzero(np.r_[True, probed[1:] != probed[:-1]]) if probed.size else np.empty(0, int)
    bounds = np.r_[starts, probed.size]

    sizes = np.diff(segment.offsets)
    width = min(k, max((int(sizes[probed[s]]) for s in starts), default=0))
    if width == 0:
        return empty_topk(xp, nq, k, metric.worst)
    cand_scores, cand_ids = empty_topk(xp, nq * nprobe, width, metric.worst)
    query_norms = (queries * queries).sum(axis=1) if metric is Metric.L2 else None
    for lo, hi in itertools.pairwise(bounds):
        first, end = int(segment.offsets[probed[lo]]), int(segment.offsets[probed[lo] + 1])
        if first == end:
            continue
        vectors, ids, sqnorms = (a[first:end] for a in (segment.vectors, segment.ids, segment.sqnorms))
        rows = xp.asarray(query_of[lo:hi])
        scores = queries[rows] @ xp.asarray(vectors, dtype=xp.float32).T
        if metric is Metric.L2:
            scores = xp.maximum(query_norms[rows, None] - 2.0 * scores + sqnorms[None, :], 0.0)
        if allowed is not None:
            scores = xp.where(allowed[first:end][None, :], scores, xp.float32(metric.worst))
            ids = xp.where(allowed[first:end], ids, -1)
        take = min(width, vectors.shape[0])
        best_scores, best_ids = _list_topk(xp, scores, ids, take, metric)
        pair_rows = xp.asarray(query_of[lo:hi] * nprobe + slot_of[lo:hi])
        cand_scores[pair_rows, :take] = best_scores
        cand_ids[pair_rows, :take] = best_ids
    return select_topk(
        cand_scores.reshape(nq, nprobe * width),
        cand_ids.reshape(nq, nprobe * width),
        k,
        metric.larger_is_better,
        metric.worst,
    )


def _list_topk(xp: Any, scores: Any, ids: Any, take: int, metric: Metric) -> tuple[Any, Any]:
    """The best `take` of each row, unordered (the final merge orders them)."""
    ids = xp.asarray(ids)
    if take == scores.shape[1]:
        return scores, xp.broadcast_to(ids, scores.shape)
    key = -scores if metric.larger_is_better else scores
    part = xp.argpartition(key, take - 1, axis=1)[:, :take]
    return xp.take_along_axis(scores, part, axis=1), ids[part]
