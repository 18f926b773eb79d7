"""The exact scan of chosen rows: what a selective filter needs, since IVF probing would miss the
few matching rows that sit outside the probed lists. Each segment's allowed rows are scored against
every query in blocks (one matrix product each), keeping the top-k; NumPy and CuPy alike.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hpcrag.search.live import Part
from hpcrag.search.metric import Metric
from hpcrag.search.topk import empty_topk, merge_topk, select_topk

BLOCK_ROWS = 32768


def exact_scan(queries: Any, parts: list[Part], k: int, metric: Metric, xp: Any) -> tuple[Any, Any]:
    """Top-k (scores, ids) per query over every allowed row of `parts`."""
    best = empty_topk(xp, queries.shape[0], k, metric.worst)
    query_norms = (queries * queries).sum(axis=1) if metric is Metric.L2 else None
    for segment, mask in parts:
        rows = np.arange(segment.rows) if mask is None else np.flatnonzero(mask)
        for lo in range(0, rows.size, BLOCK_ROWS):
            block = xp.asarray(rows[lo : lo + BLOCK_ROWS])
            vectors = xp.asarray(segment.vectors[block], dtype=xp.float32)
            scores = queries @ vectors.T
            if metric is Metric.L2:
                scores = xp.maximum(
                    query_norms[:, None] - 2.0 * scores + segment.sqnorms[block][None, :], 0.0
                )
            ids = xp.broadcast_to(segment.ids[block], scores.shape)
            found = select_topk(scores.astype(xp.float32), ids, k, metric.larger_is_better, metric.worst)
            best = merge_topk(best, found, k, metric.larger_is_better, metric.worst)
    return best
