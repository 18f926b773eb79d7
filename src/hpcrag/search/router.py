"""Rank 0's routing: each query's `nprobe` nearest coarse centroids, and the shards that own them.

On the CPU the centroids sit in a faiss flat index, so probing picks exactly the lists a faiss
IndexIVFFlat with the same centroids would; on the GPU a matrix product over device centroids.
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
        """(nq, nprobe) int64 list ids, in the array module of the queries."""
        if self.xp is np:
            return self._quantizer.search(queries, nprobe)[1].astype(np.int64)
        xp = self.xp
        scores = queries @ self._centroids.T
        key = self._centroid_norms[None, :] - 2.0 * scores if self.metric is Metric.L2 else -scores
        if nprobe == key.shape[1]:
            return xp.broadcast_to(xp.arange(nprobe, dtype=xp.int64), key.shape).copy()
        return xp.argpartition(key, nprobe - 1, axis=1)[:, :nprobe].astype(xp.int64)

    def shards_touched(self, probes: np.ndarray) -> np.ndarray:
        return shards_touched(probes, self.list_shard)
