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
        else:
            self._centroids = xp.asarray(centroids, dtype=xp.float32)
            self._centroid_norms = (self._centroids**2).sum(axis=1)

    def probe(self, queries: Any, nprobe: int) -> Any:
        """(nq, nprobe) int64 list ids, nearest first, in the array module of the queries."""
        if self.xp is np:
            return self._quantizer.search(queries, nprobe)[1].astype(np.int64)
        xp = self.xp
        scores = queries @ self._centroids.T
        key = self._centroid_norms[None, :] - 2.0 * scores if self.metric is Metric.L2 else -scores
        nearest = key.argsort(axis=1) if nprobe == key.shape[1] else xp.argpartition(key, nprobe - 1, axis=1)
        nearest = nearest[:, :nprobe]
        order = xp.take_along_axis(key, nearest, axis=1).argsort(axis=1)
        return xp.take_along_axis(nearest, order, axis=1).astype(xp.int64)

    def select_shards(self, probes: Any, max_shards: int | None) -> Any:
        """`probes` with the lists of every shard past a query's `max_shards` best set to -1."""
        if max_shards is None:
            return probes
        host = np.asarray(probes.get() if hasattr(probes, "get") else probes)
        kept = select_shards(host, self.list_shard, max_shards)
        return self.xp.asarray(kept)

    def shards_touched(self, probes: np.ndarray) -> np.ndarray:
        return shards_touched(probes, self.list_shard)


def select_shards(probes: np.ndarray, list_shard: np.ndarray, max_shards: int) -> np.ndarray:
    """Keep each row's probes into its `max_shards` shards that own its earliest (best) probes."""
    nq, nprobe = probes.shape
    nshards = int(list_shard.max()) + 1 if list_shard.size else 1
    if max_shards >= nshards or nq == 0:
        return probes
    valid = probes >= 0
    shard = np.where(valid, list_shard[np.where(valid, probes, 0)], nshards)
    first = np.full((nq, nshards + 1), nprobe, dtype=np.int64)
    rows = np.broadcast_to(np.arange(nq)[:, None], probes.shape)
    np.minimum.at(first, (rows, shard), np.broadcast_to(np.arange(nprobe), probes.shape))
    first = first[:, :nshards]
    # A shard's rank is how many shards a query reaches before it (positions are distinct per row).
    rank = (first[:, None, :] < first[:, :, None]).sum(axis=2)
    chosen = (rank < max_shards) & (first < nprobe)
    keep = valid & np.take_along_axis(np.pad(chosen, ((0, 0), (0, 1))), shard, axis=1)
    return np.where(keep, probes, -1)
