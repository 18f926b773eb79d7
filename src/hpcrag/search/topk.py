"""Top-k selection and the merge at the heart of the top-k reduction.

Results are ordered best first, for "larger is better" (ip, cosine) and "smaller is better" (l2)
alike; equal scores are ordered by id so that merging is deterministic and commutative. Slots with no
neighbour hold the metric's worst score and id -1, so they lose to every real candidate.
Works on NumPy and CuPy arrays alike.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hpcrag.search.arrays import array_module

NO_ID_LAST = np.iinfo(np.int64).max  # sorts empty slots after every real id


def empty_topk(xp: Any, nq: int, k: int, worst: float) -> tuple[Any, Any]:
    """(scores, ids) of shape (nq, k) holding no neighbour."""
    return xp.full((nq, k), worst, dtype=xp.float32), xp.full((nq, k), -1, dtype=xp.int64)


def select_topk(scores: Any, ids: Any, k: int, larger_is_better: bool, worst: float) -> tuple[Any, Any]:
    """The best k of each row of (scores, ids), sorted best first; padded when a row has fewer than k."""
    xp = array_module(scores)
    nq, n = scores.shape
    if n < k:
        pad_s, pad_i = empty_topk(xp, nq, k - n, worst)
        scores, ids = xp.concatenate([scores, pad_s], axis=1), xp.concatenate([ids, pad_i], axis=1)
        n = k
    # Rank by a key where smaller is better; -1 ids (no neighbour) sort last among equal keys.
    key = -scores if larger_is_better else scores
    if n > k:
        part = xp.argpartition(key, k - 1, axis=1)[:, :k]
        key = xp.take_along_axis(key, part, axis=1)
        ids = xp.take_along_axis(ids, part, axis=1)
        scores = xp.take_along_axis(scores, part, axis=1)
    tiebreak = xp.where(ids < 0, NO_ID_LAST, ids)
    order = _order_rows(xp, key, tiebreak)
    return xp.take_along_axis(scores, order, axis=1), xp.take_along_axis(ids, order, axis=1)


def merge_topk(
    a: tuple[Any, Any], b: tuple[Any, Any], k: int, larger_is_better: bool, worst: float
) -> tuple[Any, Any]:
    """Merge two (scores, ids) top-k sets of the same queries into one, each id at most once (at
    its best score): an id is in two sets when a replicated row is found in two shards, or one
    segment is read by two scans."""
    xp = array_module(a[0])
    scores = xp.concatenate([a[0], b[0]], axis=1)
    ids = xp.concatenate([a[1], b[1]], axis=1)
    key = -scores if larger_is_better else scores
    best_first = _order_rows(xp, key, xp.where(ids < 0, NO_ID_LAST, ids))
    ranked_ids = xp.take_along_axis(ids, best_first, axis=1)
    stable = {"kind": "stable"} if xp.__name__ == "numpy" else {}
    by_id = xp.argsort(ranked_ids, axis=1, **stable)  # stable: an id's best place comes first
    sorted_ids = xp.take_along_axis(ranked_ids, by_id, axis=1)
    repeated = xp.zeros(ids.shape, dtype=bool)
    repeated[:, 1:] = (sorted_ids[:, 1:] == sorted_ids[:, :-1]) & (sorted_ids[:, 1:] >= 0)
    hidden = xp.zeros(ids.shape, dtype=bool)
    hidden[xp.arange(ids.shape[0])[:, None], xp.take_along_axis(best_first, by_id, axis=1)] = repeated
    scores = xp.where(hidden, xp.float32(worst), scores)
    ids = xp.where(hidden, -1, ids)
    return select_topk(scores, ids, k, larger_is_better, worst)


def _order_rows(xp: Any, key: Any, tiebreak: Any) -> Any:
    """Per row, the order by (key, tiebreak): sort by the tiebreak, then stably by the key."""
    by_tiebreak = xp.argsort(tiebreak, axis=1)
    key_sorted = xp.take_along_axis(key, by_tiebreak, axis=1)
    # NumPy must be asked for a stable sort; CuPy's sort is always stable and takes no `kind`.
    stable = {"kind": "stable"} if xp.__name__ == "numpy" else {}
    by_key = xp.argsort(key_sorted, axis=1, **stable)
    return xp.take_along_axis(by_tiebreak, by_key, axis=1)
