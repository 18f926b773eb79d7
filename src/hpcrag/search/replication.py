"""Boundary replication (SPANN-style): a vector nearly as close to a list of another shard as to its
own list is stored in that shard too, so that a query routed to fewer shards still finds it.

The rule, per vector: d1 is its squared distance to the centroid of its own list, d2 to the nearest
centroid, among its `DEPTH` nearest, that a shard other than its own owns. It gets a second copy, in
that list, when d2 <= threshold x d1. "Other" is judged against the list the row is stored in, not
its nearest list recomputed (float16 storage or a near tie may change that), so a copy never lands
in the row's own shard. The build sets the threshold from its training sample so that a
chosen fraction of the vectors is copied: memory grows by that fraction, no more, and no vector has
more than two copies. Searches keep each id once (`topk.merge_topk`); a delete or replace of an id
reaches every copy, since each rank tombstones every live row of the id on its shards.
"""

from __future__ import annotations

import numpy as np

from hpcrag.search.router import Router

DEPTH = 16  # nearest lists a vector's second shard is looked for among


def boundary_ratios(
    router: Router, rows: np.ndarray, own_lists: np.ndarray, depth: int = DEPTH
) -> tuple[np.ndarray, np.ndarray]:
    """Per row (stored in `own_lists`): d2 / d1 (inf without a candidate), and the list of another
    shard it would be copied to (-1 without one)."""
    lists, distances = router.nearest(rows, min(depth, router.list_shard.size))
    own_shard = router.list_shard[own_lists]
    elsewhere = (router.list_shard[np.maximum(lists, 0)] != own_shard[:, None]) & (lists >= 0)
    found = elsewhere.any(axis=1)
    column = elsewhere.argmax(axis=1)
    everyone = np.arange(lists.shape[0])
    nearest = router.squared_distances_to(rows, own_lists).astype(np.float64)
    second = distances[everyone, column].astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(found & (nearest > 0), second / nearest, np.inf)
    ratio = np.where(found & (nearest == 0) & (second == 0), 1.0, ratio)  # on both centroids at once
    return ratio, np.where(found, lists[everyone, column], -1).astype(np.int64)


def threshold_for(ratios: np.ndarray, fraction: float) -> float:
    """The ratio under which `fraction` of these rows fall (0: copy none)."""
    finite = np.sort(ratios[np.isfinite(ratios)])
    count = min(round(fraction * ratios.size), finite.size)
    return float(finite[count - 1]) if count else 0.0


def second_lists(router: Router, rows: np.ndarray, own_lists: np.ndarray, threshold: float) -> np.ndarray:
    """Per row (stored in `own_lists`), the list of another shard that holds its copy, or -1."""
    if threshold <= 0 or rows.shape[0] == 0:
        return np.full(rows.shape[0], -1, dtype=np.int64)
    ratio, lists = boundary_ratios(router, rows, own_lists)
    return np.where(ratio <= threshold, lists, -1)
