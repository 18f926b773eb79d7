"""The scanner of shards whose local kind is a library index (hnsw, ivf-pq, cagra): same call as the
list scans (`backends.Scanner`), so routing and the top-k reduction do not know the difference.

A query reaches a shard when one of its routed probes names a list the shard holds; the shard's
index then searches it whole (hnsw, its walk starting at the entry row of the query's nearest probed
list there, see `graph_entries`; cagra) or in those probed lists (ivf-pq, with faiss's
`search_preassigned` and the routed probes, then an exact re-rank of `refine` x k candidates against
the full vectors). Rows a scan may not read (deleted, replaced, filtered out) are hidden from the
shard's index by a faiss `IDSelectorBitmap`; rows added since the build (delta segments, which have
no index of their own) go to the list scan, through their probed lists.

A graph walk only passes through hidden rows: when they surround the query (a deleted collection,
a filter that excludes the query's topic) it can end without reaching a readable row near it, and
return far ones. So an hnsw segment with hidden rows is also list-scanned through its probed lists,
as ivf-flat is, and the two answers merged (each id once): the answer is never worse than ivf-flat's
at the same nprobe, and exact at nprobe = nlist.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from hpcrag.search.arrays import array_module, to_numpy
from hpcrag.search.backends import Scanner
from hpcrag.search.graph_entries import graph_rows, list_entries, query_entries, search_from_entries
from hpcrag.search.live import Part
from hpcrag.search.local_kinds import SEARCH_DEFAULTS
from hpcrag.search.metric import Metric
from hpcrag.search.store import Segment
from hpcrag.search.topk import empty_topk, merge_topk, select_topk

REFINE_BYTES = 64 * 2**20  # candidate vectors gathered at once for an ivf-pq re-rank


class LocalKindScan:
    def __init__(
        self, spec: Mapping[str, Any], metric: Metric, lists: Scanner, centroids: np.ndarray
    ) -> None:
        self.kind = spec["kind"]
        self.metric = metric
        self.lists = lists  # the list scan: rows added since the build, masked hnsw segments
        self.centroids = centroids  # on the host: where an hnsw walk starts (`graph_entries`)

    def __call__(
        self, queries: Any, probes: Any, k: int, parts: list[Part], effort: Mapping[str, int] | None = None
    ) -> tuple[Any, Any]:
        xp = array_module(queries)
        effort = {**SEARCH_DEFAULTS, **{n: v for n, v in (effort or {}).items() if v is not None}}
        host_probes = to_numpy(probes)
        listed = [(segment, mask) for segment, mask in parts if self._list_scans(segment, mask)]
        if listed:
            result = self.lists(queries, probes, k, listed, None)
        else:
            result = empty_topk(xp, queries.shape[0], k, self.metric.worst)
        for segment, mask in parts:
            if segment.local is None:
                continue
            if "holds" not in segment.cache:  # the lists this segment has rows in: fixed for its life
                segment.cache["holds"] = np.diff(segment.offsets) > 0
            holds = segment.cache["holds"]
            routed = (host_probes >= 0) & holds[np.maximum(host_probes, 0)]
            rows = np.flatnonzero(routed.any(axis=1))
            if not rows.size:
                continue
            allowed = None if mask is None else _Selection(mask)
            scores, labels = self._search(
                segment, queries[xp.asarray(rows)], host_probes[rows], k, effort, allowed
            )
            labels = xp.asarray(labels).astype(xp.int64, copy=False)
            ids = xp.where(labels >= 0, xp.asarray(segment.ids)[xp.maximum(labels, 0)], -1)
            scores = xp.where(ids < 0, xp.float32(self.metric.worst), xp.asarray(scores, dtype=xp.float32))
            rows = xp.asarray(rows)  # merge only the queries this segment answered
            mine = (result[0][rows], result[1][rows])
            result[0][rows], result[1][rows] = merge_topk(
                mine, (scores, ids), k, self.metric.larger_is_better, self.metric.worst
            )
        return result

    def _list_scans(self, segment: Segment, mask: np.ndarray | None) -> bool:
        """Whether the list scan reads this segment: rows added since the build, and an hnsw
        segment with hidden rows (see the module's docstring)."""
        return segment.local is None or (self.kind == "hnsw" and mask is not None)

    def _search(
        self,
        segment: Segment,
        queries: Any,
        probes: np.ndarray,
        k: int,
        effort: Mapping[str, int],
        allowed: _Selection | None,
    ) -> tuple[Any, Any]:
        if self.kind == "cagra":  # DistributedIndex refuses updates and filters for cagra
            return _search_cagra(segment, queries, k, effort["ef"])
        import faiss

        queries = np.ascontiguousarray(to_numpy(queries), dtype=np.float32)
        selector = None if allowed is None else allowed.selector()
        if self.kind == "hnsw":
            params = faiss.SearchParametersHNSW(efSearch=max(effort["ef"], k), sel=selector)
            return self._hnsw(segment, queries, probes, k, params)
        params = faiss.SearchParametersIVF(nprobe=probes.shape[1], sel=selector)
        return self._ivf_pq(segment, queries, probes, k, effort["refine"], params)

    def _hnsw(
        self, segment: Segment, queries: np.ndarray, probes: np.ndarray, k: int, params: Any
    ) -> tuple[np.ndarray, np.ndarray]:
        """The graph walk, started at the routed queries' entry rows (see `graph_entries`)."""
        self.warm([segment])
        starts = query_entries(probes, segment.cache["entries"])
        rows = graph_rows(segment.local)  # a view of the graph's own vectors: nothing to keep
        return search_from_entries(segment.local, rows, queries, starts, k, params, self.metric)

    def warm(self, segments: list[Segment]) -> None:
        """Work out what searching these segments needs, once for each segment's life (hnsw: the
        entry rows of its lists, ~80 ms for 28,000 rows), so a first query waits no longer than the next."""
        if self.kind != "hnsw":
            return
        for segment in segments:
            if segment.local is not None and "entries" not in segment.cache:
                entries = list_entries(graph_rows(segment.local), segment.offsets, self.centroids)
                segment.cache["entries"] = entries

    def _ivf_pq(
        self, segment: Segment, queries: np.ndarray, probes: np.ndarray, k: int, refine: int, params: Any
    ) -> tuple[np.ndarray, np.ndarray]:
        import faiss

        index = segment.local
        if "centroids" not in segment.cache:  # a view of the quantizer's own rows, not a copy
            quantizer = faiss.downcast_index(index.quantizer)
            rows = faiss.rev_swig_ptr(quantizer.get_xb(), index.nlist * index.d)
            segment.cache["centroids"] = rows.reshape(index.nlist, index.d)
        candidates = min(k * refine, max(k, segment.rows))
        # The re-rank gathers candidates x dim floats per query: bound it by working in slices.
        step = max(1, REFINE_BYTES // (candidates * queries.shape[1] * 4))
        found = []
        for lo in range(0, queries.shape[0], step):
            rows = slice(lo, lo + step)
            found.append(self._ivf_pq_slice(segment, queries[rows], probes[rows], k, candidates, params))
        return np.concatenate([f[0] for f in found]), np.concatenate([f[1] for f in found])

    def _ivf_pq_slice(
        self,
        segment: Segment,
        queries: np.ndarray,
        probes: np.ndarray,
        k: int,
        candidates: int,
        params: Any,
    ) -> tuple[np.ndarray, np.ndarray]:
        probes = np.ascontiguousarray(probes, dtype=np.int64)
        # Residual codes score relative to the list's centroid: faiss needs the coarse term too.
        near = segment.cache["centroids"][np.maximum(probes, 0)]
        if self.metric is Metric.L2:
            coarse = ((queries[:, None, :] - near) ** 2).sum(axis=2)
        else:
            coarse = np.einsum("qd,qpd->qp", queries, near)
        coarse = np.ascontiguousarray(coarse, dtype=np.float32)
        queries = np.ascontiguousarray(queries)
        labels = _search_preassigned(segment.local, queries, candidates, probes, coarse, params)
        vectors = np.asarray(segment.vectors)[np.maximum(labels, 0)].astype(np.float32)
        scores = np.einsum("qd,qcd->qc", queries, vectors)
        if self.metric is Metric.L2:
            norms = np.asarray(segment.sqnorms)[np.maximum(labels, 0)]
            scores = (queries**2).sum(axis=1)[:, None] - 2.0 * scores + norms
        scores = np.where(labels < 0, np.float32(self.metric.worst), scores).astype(np.float32)
        return select_topk(scores, labels, k, self.metric.larger_is_better, self.metric.worst)


def _search_preassigned(
    index: Any, queries: np.ndarray, k: int, probes: np.ndarray, coarse: np.ndarray, params: Any
) -> np.ndarray:
    """faiss's IndexIVF::search_preassigned with search parameters (its Python wrapper takes none)."""
    import faiss

    distances = np.empty((queries.shape[0], k), dtype=np.float32)
    labels = np.empty((queries.shape[0], k), dtype=np.int64)
    ptr = faiss.swig_ptr
    nq = queries.shape[0]
    index.search_preassigned_c(
        nq, ptr(queries), k, ptr(probes), ptr(coarse), ptr(distances), ptr(labels), False, params
    )
    return labels


class _Selection:
    """A part's readable rows as a faiss selector over row positions (the shard index's labels).
    faiss holds only a pointer to the bitmap: this object keeps it alive for the search."""

    def __init__(self, mask: np.ndarray) -> None:
        self.rows = int(mask.size)
        self.bits = np.packbits(np.asarray(mask, dtype=bool), bitorder="little")

    def selector(self) -> Any:
        import faiss

        return faiss.IDSelectorBitmap(self.rows, faiss.swig_ptr(self.bits))


def _search_cagra(segment: Segment, queries: Any, k: int, ef: int) -> tuple[Any, Any]:
    import cupy
    from cuvs.neighbors import cagra

    params = cagra.SearchParams(itopk_size=max(ef, k))
    distances, neighbors = cagra.search(params, segment.local, cupy.asarray(queries, dtype=cupy.float32), k)
    labels = cupy.asarray(neighbors).astype(cupy.int64)
    # cuVS marks a missing neighbour with an out-of-range label (the largest uint32).
    return cupy.asarray(distances), cupy.where(labels >= segment.rows, -1, labels)
