"""Rank 0's routing: each query's `nprobe` nearest coarse centroids, and the shards that own them.

On the CPU the centroids sit in a faiss flat index, so probing picks exactly the lists a faiss
IndexIVFFlat with the same centroids would; on the GPU a matrix product over device centroids.
Probes come best first. Shard selection is its own step (`select_shards`): a query visits at most
`max_shards` shards, ranked by their best probed centroid, and its probes into other shards are
dropped (-1), so fan-out has a knob of its own, apart from how many lists a shard scans.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hpcrag.search.build import coarse_quantizer
from hpcrag.search.grouping import shards_touched
from hpcrag.search.metric import Metric


class Router:
    def __init__(self, centroids: np.ndarray, metric: Metric, list_shard: np.ndarray, xp: Any) -> None:
        self.metric = metric
        self.list_shard = list_shard
        self.xp = xp
        if xp is np:
            self._quantizer = coarse_quantizer(centroids, metric)
            self._centroid_norms = (np.asarray(centroids, dtype=np.float32) ** 2).sum(axis=1)
        else:
            self._centroids = xp.asarray(centroids, dtype=xp.float32)
            self._centroid_norms = (self._centroids**2).sum(axis=1)

    def probe(self, queries: Any, nprobe: int) -> Any:
        """(nq, nprobe) int64 list ids, nearest first, in the array module of the queries."""
        return self.probe_ranked(queries, nprobe)[0]

    def probe_ranked(self, queries: Any, nprobe: int) -> tuple[Any, Any]:
        """The probes, best first by the metric, and each one's squared L2 distance from the query
        (the scale shard selection's margin compares; for ip it is not the probes' order)."""
        xp = self.xp
        if xp is np:
            scores, ids = self._quantizer.search(queries, nprobe)
            ids = ids.astype(np.int64)
        else:
            every = queries @ self._centroids.T
            key = self._centroid_norms[None, :] - 2.0 * every if self.metric is Metric.L2 else -every
            nearest = (
                key.argsort(axis=1) if nprobe == key.shape[1] else xp.argpartition(key, nprobe - 1, axis=1)
            )
            nearest = nearest[:, :nprobe]
            nearest = xp.take_along_axis(
                nearest, xp.take_along_axis(key, nearest, axis=1).argsort(axis=1), axis=1
            )
            ids, scores = nearest.astype(xp.int64), xp.take_along_axis(every, nearest, axis=1)
        if self.metric is Metric.L2 and xp is np:
            return ids, scores.astype(np.float32)  # faiss returns the squared distances
        norms = self._centroid_norms[xp.maximum(ids, 0)]
        distances = (queries**2).sum(axis=1)[:, None] + norms - 2.0 * scores
        return ids, xp.maximum(distances, 0).astype(xp.float32)

    def route(self, queries: Any, nprobe: int, max_shards: int | None, margin: float | None) -> Any:
        """Probe, then select shards: the probes each query's chosen shards will scan (-1 elsewhere)."""
        probes, keys = self.probe_ranked(queries, nprobe)
        if max_shards is None and margin is None:
            return probes
        kept = select_shards(_host(probes), self.list_shard, max_shards, _host(keys), margin)
        return self.xp.asarray(kept)

    def shards_touched(self, probes: np.ndarray) -> np.ndarray:
        return shards_touched(probes, self.list_shard)


def _host(array: Any) -> np.ndarray:
    return np.asarray(array.get() if hasattr(array, "get") else array)


def select_shards(
    probes: np.ndarray,
    list_shard: np.ndarray,
    max_shards: int | None,
    keys: np.ndarray | None = None,
    margin: float | None = None,
) -> np.ndarray:
    """Keep each row's probes into its chosen shards: shards ranked by their nearest probed list,
    at most `max_shards` of them, and (with `margin`) only those whose best probed list is within
    (1 + margin) x the squared distance of the query's best list (SPANN's query-aware pruning, per shard)."""
    nq, nprobe = probes.shape
    nshards = int(list_shard.max()) + 1 if list_shard.size else 1
    if nq == 0:
        return probes
    valid = probes >= 0
    shard = np.where(valid, list_shard[np.where(valid, probes, 0)], nshards)
    first = np.full((nq, nshards + 1), nprobe, dtype=np.int64)
    rows = np.broadcast_to(np.arange(nq)[:, None], probes.shape)
    np.minimum.at(first, (rows, shard), np.broadcast_to(np.arange(nprobe), probes.shape))
    first = first[:, :nshards]
    reached = first < nprobe
    # A shard's rank: its place in the order the query reaches shards (reached positions are distinct).
    rank = first.argsort(axis=1, kind="stable").argsort(axis=1)
    chosen = reached & (rank < (max_shards or nshards))
    if margin is not None and keys is not None:
        nearest = keys[:, :1]
        shard_key = np.take_along_axis(keys, np.minimum(first, nprobe - 1), axis=1)
        # A query on a centroid (distance 0) has no scale to compare with: its best shard only.
        chosen &= (rank == 0) | ((nearest > 0) & (shard_key <= (1.0 + margin) * nearest))
    keep = valid & np.take_along_axis(np.pad(chosen, ((0, 0), (0, 1))), shard, axis=1)
    return np.where(keep, probes, -1)
