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
PAIR_CELLS = 1 << 22  # slot pairs compared at once when merging (bounds the memory of a large k)
PAIRED_SLOTS = 32 * 32  # widest merge (slots of one set x the other's) that compares every pair


def empty_topk(xp: Any, nq: int, k: int, worst: float) -> tuple[Any, Any]:
    """(scores, ids) of shape (nq, k) holding no neighbour."""
    return xp.full((nq, k), worst, dtype=xp.float32), xp.full((nq, k), -1, dtype=xp.int64)


def select_topk(scores: Any, ids: Any, k: int, larger_is_better: bool, worst: float) -> tuple[Any, Any]:
    """The best k of each row of (scores, ids), sorted best first; padded when a row has fewer than k.
    Rows that come in order (and no more than k wide) may be returned as the very arrays given."""
    xp = array_module(scores)
    nq, n = scores.shape
    given = n == k  # neither padded nor selected below: these are the caller's arrays
    if n < k:
        pad_s, pad_i = empty_topk(xp, nq, k - n, worst)
        scores, ids = xp.concatenate([scores, pad_s], axis=1), xp.concatenate([ids, pad_i], axis=1)
        n = k
    # Rank by a key where smaller is better; -1 ids (no neighbour) sort last among equal keys.
    key = -scores if larger_is_better else scores
    tiebreak = xp.where(ids < 0, NO_ID_LAST, ids)
    if n > k:
        part = xp.argpartition(key, k - 1, axis=1)
        # argpartition splits a tie at the k-th key by position; such rows are sorted by (key, id)
        # in full, so that the answer does not depend on the order the candidates came in.
        kth = xp.take_along_axis(key, part[:, k - 1 : k], axis=1)
        rest = part[:, k:]
        real = xp.take_along_axis(tiebreak, rest, axis=1) != NO_ID_LAST  # the order of empty slots is moot
        tied = xp.flatnonzero(((xp.take_along_axis(key, rest, axis=1) == kth) & real).any(axis=1))
        part = part[:, :k]
        if tied.size:
            part[tied] = _order_rows(xp, key[tied], tiebreak[tied])[:, :k]
        key, tiebreak = xp.take_along_axis(key, part, axis=1), xp.take_along_axis(tiebreak, part, axis=1)
        ids = xp.take_along_axis(ids, part, axis=1)
        scores = xp.take_along_axis(scores, part, axis=1)
    # A library's answer (faiss, a shard's walk) comes sorted: only rows out of order are sorted.
    rows = _rows_out_of_order(xp, key, tiebreak)
    if rows.size == 0:
        return scores, ids
    order = _order_rows(xp, key[rows], tiebreak[rows])
    if given:
        scores, ids = scores.copy(), ids.copy()
    scores[rows] = xp.take_along_axis(scores[rows], order, axis=1)
    ids[rows] = xp.take_along_axis(ids[rows], order, axis=1)
    return scores, ids


def merge_topk(
    a: tuple[Any, Any], b: tuple[Any, Any], k: int, larger_is_better: bool, worst: float
) -> tuple[Any, Any]:
    """Merge two (scores, ids) top-k sets of the same queries into one. Each set holds an id at most
    once, but both may hold it (a replicated row found in two shards, a segment read by two scans):
    it is kept once, at its better score."""
    xp = array_module(a[0])
    holds_a, holds_b = (a[1] >= 0).any(axis=1), (b[1] >= 0).any(axis=1)
    both = holds_a & holds_b
    if bool(both.all()):
        return _merge_rows(xp, a, b, k, larger_is_better, worst)
    # A row one set leaves empty is the other set's row, ordered: only rows both hold pay for the
    # merge (a query reaches few shards, so most rows of one shard's answer are empty).
    scores, ids = empty_topk(xp, a[1].shape[0], k, worst)
    for alone, (set_scores, set_ids) in ((holds_a & ~both, a), (holds_b & ~both, b)):
        rows = xp.flatnonzero(alone)
        if rows.size:
            scores[rows], ids[rows] = select_topk(set_scores[rows], set_ids[rows], k, larger_is_better, worst)
    rows = xp.flatnonzero(both)
    if rows.size:
        pair = (a[0][rows], a[1][rows]), (b[0][rows], b[1][rows])
        scores[rows], ids[rows] = _merge_rows(xp, *pair, k, larger_is_better, worst)
    return scores, ids


def _merge_rows(
    xp: Any, a: tuple[Any, Any], b: tuple[Any, Any], k: int, larger_is_better: bool, worst: float
) -> tuple[Any, Any]:
    """`merge_topk` of every row: the shared ids found, then the best k of both sets."""
    hide_a, hide_b = _shared_ids(xp, a, b, larger_is_better)
    scores = xp.concatenate(
        [xp.where(hide_a, xp.float32(worst), a[0]), xp.where(hide_b, xp.float32(worst), b[0])], axis=1
    )
    ids = xp.concatenate([xp.where(hide_a, -1, a[1]), xp.where(hide_b, -1, b[1])], axis=1)
    return select_topk(scores, ids, k, larger_is_better, worst)


def _shared_ids(xp: Any, a: tuple[Any, Any], b: tuple[Any, Any], larger_is_better: bool) -> tuple[Any, Any]:
    """Per slot of `a` and of `b`: whether the other set holds its id at a better score (`a` wins
    ties). Narrow sets compare every pair of slots of a row (fastest at the usual k); wide ones sort
    each row's ids, so that a large k costs k log k per row, not k squared."""
    if a[1].shape[1] * b[1].shape[1] <= PAIRED_SLOTS:
        return _shared_ids_paired(xp, a, b, larger_is_better)
    return _shared_ids_sorted(xp, a, b, larger_is_better)


def _shared_ids_paired(
    xp: Any, a: tuple[Any, Any], b: tuple[Any, Any], larger_is_better: bool
) -> tuple[Any, Any]:
    """`_shared_ids` comparing every pair of slots of a row, in blocks of rows to bound the memory."""
    hide_a, hide_b = xp.zeros(a[1].shape, dtype=bool), xp.zeros(b[1].shape, dtype=bool)
    nq = a[1].shape[0]
    step = max(1, PAIR_CELLS // max(1, a[1].shape[1] * b[1].shape[1]))
    for lo in range(0, nq, step):
        hi = min(nq, lo + step)
        a_ids = a[1][lo:hi, :, None]
        same = (a_ids == b[1][lo:hi, None, :]) & (a_ids >= 0)
        if not bool(same.any()):
            continue
        a_scores, b_scores = a[0][lo:hi, :, None], b[0][lo:hi, None, :]
        b_better = same & ((b_scores > a_scores) if larger_is_better else (b_scores < a_scores))
        hide_a[lo:hi] = b_better.any(axis=2)
        hide_b[lo:hi] = (same & ~b_better).any(axis=1)
    return hide_a, hide_b


def _shared_ids_sorted(
    xp: Any, a: tuple[Any, Any], b: tuple[Any, Any], larger_is_better: bool
) -> tuple[Any, Any]:
    """`_shared_ids` from each row's ids sorted: an id both sets hold lands as two neighbours, a's
    slot first (a stable sort of a's slots, then b's)."""
    width = a[1].shape[1]
    ids = xp.concatenate([a[1], b[1]], axis=1)
    order = _stable_argsort(xp, ids)
    ranked = xp.take_along_axis(ids, order, axis=1)
    first, second = order[:, :-1], order[:, 1:]
    pair = (ranked[:, 1:] == ranked[:, :-1]) & (ranked[:, :-1] >= 0) & (first < width) & (second >= width)
    hide = xp.zeros(ids.shape, dtype=bool)
    if bool(pair.any()):
        scores = xp.concatenate([a[0], b[0]], axis=1)
        a_scores = xp.take_along_axis(scores, first, axis=1)
        b_scores = xp.take_along_axis(scores, second, axis=1)
        b_better = pair & ((b_scores > a_scores) if larger_is_better else (b_scores < a_scores))
        rows, slots = xp.nonzero(b_better)
        hide[rows, first[rows, slots]] = True
        rows, slots = xp.nonzero(pair & ~b_better)
        hide[rows, second[rows, slots]] = True
    return hide[:, :width], hide[:, width:]


def _order_rows(xp: Any, key: Any, tiebreak: Any) -> Any:
    """Per row, the order by (key, tiebreak): sort by the tiebreak, then stably by the key."""
    by_tiebreak = xp.argsort(tiebreak, axis=1)
    key_sorted = xp.take_along_axis(key, by_tiebreak, axis=1)
    by_key = _stable_argsort(xp, key_sorted)
    return xp.take_along_axis(by_tiebreak, by_key, axis=1)


def _stable_argsort(xp: Any, array: Any) -> Any:
    """Per row, the order that sorts `array`, equal values kept in their order."""
    # NumPy must be asked for a stable sort; CuPy's sort is always stable and takes no `kind`.
    return xp.argsort(array, axis=1, **({"kind": "stable"} if xp.__name__ == "numpy" else {}))


def _rows_out_of_order(xp: Any, key: Any, tiebreak: Any) -> Any:
    """The rows not already ordered by (key, tiebreak): checking costs a fraction of sorting."""
    ahead, behind = key[:, :-1], key[:, 1:]
    ordered = (ahead < behind) | ((ahead == behind) & (tiebreak[:, :-1] <= tiebreak[:, 1:]))
    return xp.flatnonzero(~ordered.all(axis=1))
