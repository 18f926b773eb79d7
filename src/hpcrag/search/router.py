"""Rank 0's routing: each query's `nprobe` nearest coarse centroids, and the shards that own them.

On the CPU the centroids sit in a faiss flat index, so probing picks exactly the lists a faiss
IndexIVFFlat with the same centroids would; on the GPU a matrix product over device centroids.
Probes come best first. Shard selection is its own step (`select_shards`): a query visits at most
`max_shards` shards, ranked by their best probed centroid, and its probes into other shards are
dropped (-1), so fan-out has a knob of its own, apart from how many lists a shard scans. A probe
into a list that has never held a row (k-means can leave one empty, say over duplicated rows) finds
nothing there: it is dropped too, so it neither counts as a shard touched nor takes a shard's place.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hpcrag.search.grouping import shards_reached
from hpcrag.search.metric import Metric


def coarse_quantizer(centroids: np.ndarray, metric: Metric):
    """A faiss flat index over the centroids: the same assignment faiss's own IVF would make."""
    import faiss

    index = faiss.IndexFlat(centroids.shape[1], metric.faiss_metric())
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    return index


class Router:
    def __init__(
        self,
        centroids: np.ndarray,
        metric: Metric,
        list_shard: np.ndarray,
        xp: Any,
        held: np.ndarray | None = None,
    ) -> None:
        self.metric = metric
        self.list_shard = list_shard
        self.xp = xp
        # Per list: has it ever held a row (default: every list). Deletes leave it set until `compact`
        # rewrites the counts: a list emptied since still costs its shard a scan, so it still counts.
        self.held = np.ones(list_shard.size, dtype=bool) if held is None else np.array(held, dtype=bool)
        self._held_here = xp.asarray(self.held)  # in the queries' array module, refreshed by `hold`
        if xp is np:
            self._quantizer = coarse_quantizer(centroids, metric)
            self._centroids = np.asarray(centroids, dtype=np.float32)
            self._centroid_norms = (self._centroids**2).sum(axis=1)
        else:
            self._centroids = xp.asarray(centroids, dtype=xp.float32)
            self._centroid_norms = (self._centroids**2).sum(axis=1)

    @property
    def host_centroids(self) -> np.ndarray:
        """The coarse centroids as float32 on the host."""
        return _host(self._centroids)

    def probe(self, queries: Any, nprobe: int) -> Any:
        """(nq, nprobe) int64 list ids, nearest first, in the array module of the queries."""
        return self._nearest(queries, nprobe)[0]

    def hold(self, lists: np.ndarray) -> None:
        """Rows were added to these lists: route to them from now on."""
        self.held[np.asarray(lists, dtype=np.int64)] = True
        self._held_here = self.xp.asarray(self.held)

    def route(self, queries: Any, nprobe: int, max_shards: int | None, margin: float | None) -> Any:
        """Probe, then select shards: the probes each query's chosen shards will scan (-1 elsewhere,
        and for a list that has never held a row)."""
        if max_shards is None and margin is None:
            probes = self.probe(queries, nprobe)
            return probes if self.held.all() else self._drop_empty(self.xp, probes)
        ids, scores = self._nearest(queries, nprobe)
        keys = None if margin is None else _host(self._squared_distances(queries, ids, scores))
        probes = _host(ids) if self.held.all() else self._drop_empty(np, _host(ids))
        return self.xp.asarray(select_shards(probes, self.list_shard, max_shards, keys, margin))

    def _drop_empty(self, xp: Any, probes: Any) -> Any:
        mask = self._held_here if xp is self.xp else self.held
        return xp.where(mask[xp.maximum(probes, 0)] & (probes >= 0), probes, -1)

    def nearest(self, queries: Any, count: int) -> tuple[np.ndarray, np.ndarray]:
        """On the host: each row's `count` nearest lists, best first, and their squared L2 distances."""
        ids, scores = self._nearest(queries, count)
        return _host(ids), _host(self._squared_distances(queries, ids, scores))

    def squared_distances_to(self, rows: Any, lists: Any) -> np.ndarray:
        """On the host: each row's squared L2 distance from the centroid of its given list."""
        xp = self.xp
        lists = xp.asarray(lists)
        products = (rows * self._centroids[lists]).sum(axis=1)
        distances = (rows**2).sum(axis=1) + self._centroid_norms[lists] - 2.0 * products
        return _host(xp.maximum(distances, 0).astype(xp.float32))

    def _nearest(self, queries: Any, nprobe: int) -> tuple[Any, Any]:
        """The probes, best first by the metric, and their scores: squared distances where faiss
        probes for l2, inner products otherwise."""
        xp = self.xp
        if xp is np:
            scores, ids = self._quantizer.search(queries, nprobe)
            return ids.astype(np.int64, copy=False), scores
        every = queries @ self._centroids.T
        key = self._centroid_norms[None, :] - 2.0 * every if self.metric is Metric.L2 else -every
        nearest = _smallest_sorted(xp, key, nprobe)
        return nearest.astype(xp.int64), xp.take_along_axis(every, nearest, axis=1)

    def _squared_distances(self, queries: Any, ids: Any, scores: Any) -> Any:
        """Each probe's squared L2 distance from its query: the scale a shard margin compares (for
        ip it is not the order of the probes)."""
        xp = self.xp
        if self.metric is Metric.L2 and xp is np:
            return scores.astype(np.float32)
        norms = self._centroid_norms[xp.maximum(ids, 0)]
        distances = (queries**2).sum(axis=1)[:, None] + norms - 2.0 * scores
        return xp.maximum(distances, 0).astype(xp.float32)

    def shard_load(self, probes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """From host routed probes: the shards each query touches, and the queries each shard searches."""
        reached = shards_reached(probes, self.list_shard)
        return reached.sum(axis=1), reached.sum(axis=0).astype(np.int64)


def _smallest_sorted(xp: Any, key: Any, count: int) -> Any:
    """Per row, the columns of the `count` smallest keys, smallest first."""
    if count == key.shape[1]:
        return key.argsort(axis=1)
    nearest = xp.argpartition(key, count - 1, axis=1)[:, :count]
    return xp.take_along_axis(nearest, xp.take_along_axis(key, nearest, axis=1).argsort(axis=1), axis=1)


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
        nearest = np.take_along_axis(keys, valid.argmax(axis=1)[:, None], axis=1)  # the best kept probe
        shard_key = np.take_along_axis(keys, np.minimum(first, nprobe - 1), axis=1)
        # A query on a centroid (distance 0) has no scale to compare with: its best shard only.
        chosen &= (rank == 0) | ((nearest > 0) & (shard_key <= (1.0 + margin) * nearest))
    keep = valid & np.take_along_axis(np.pad(chosen, ((0, 0), (0, 1))), shard, axis=1)
    return np.where(keep, probes, -1)
