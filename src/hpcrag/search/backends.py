"""The shard-local scan, by backend, so that each can be compared on the same index:

- `kernels` (default): hpcrag's own kernels. CPU: the Numba scan (FP16 storage, FP32 accumulation,
  bounded heap). GPU: the FP16 tensor-core WMMA kernel with fused top-k; where it cannot run (no
  tensor cores, k > 256) the Numba CUDA SIMT kernel (k <= 64), else matrix products, saying why.
- `matmul`: one BLAS/cuBLAS product per probed list (`scan.py`).
- `faiss`: faiss's IndexIVFFlat over this rank's lists, searched with rank 0's probes
  (`search_preassigned`); CPU only, and only for the index as built (no updates, no filters).
A scanner reads the parts it is given (segments, each with the rows it may read: `live.Part`) and
returns (nq, k) (scores, ids) best first, empty slots (worst, -1). On the GPU a masked part (rows
deleted, or a filter) is scanned with matrix products: the WMMA kernel reads whole lists.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from hpcrag.errors import HpcragError
from hpcrag.search.arrays import array_module, to_numpy
from hpcrag.search.live import Part
from hpcrag.search.metric import Metric
from hpcrag.search.scan import scan as matmul_scan
from hpcrag.search.store import Segment
from hpcrag.search.topk import empty_topk, merge_topk, select_topk

BACKENDS = ("kernels", "matmul", "faiss")
SIMT_MAX_K = 64  # numba_cuda.MAX_K, kept here so that choosing a fallback imports no CUDA module
Effort = Mapping[str, int | None] | None  # ef and refine: the list scans have no such knob
Scanner = Callable[[Any, Any, int, list[Part], Effort], tuple[Any, Any]]
log = logging.getLogger(__name__)


def make_scanner(backend: str, metric: Metric, xp: Any, nlist: int) -> Scanner:
    if backend not in BACKENDS:
        raise HpcragError(f"unknown scan backend {backend!r}; valid: {', '.join(BACKENDS)}")
    on_gpu = xp is not np
    if backend == "matmul":
        return _MatmulScan(metric)
    if backend == "faiss":
        if on_gpu:
            raise HpcragError("the faiss scan backend runs on the CPU; use --device cpu or another backend")
        return _FaissScan(metric, nlist)
    return _GpuKernelScan(metric) if on_gpu else _NumbaScan(metric)


def warm_up(scanner: Scanner, segments: list[Segment]) -> None:
    """Load now what the scanner's first call on these segments would (the Numba scan's machine code
    for their storage, from Numba's cache): opening an index pays it, so that its first search is
    as fast as the next and the time it reports is the search's."""
    if isinstance(scanner, _NumbaScan) and segments:
        from hpcrag.kernels.numba_cpu import warm

        warm({(np.dtype(s.vectors.dtype), bool(np.asarray(s.vectors).flags.writeable)) for s in segments})


def _scores_from_keys(xp: Any, keys: Any, ids: Any, metric: Metric) -> Any:
    """Kernel keys (smaller is better: distance, or negated score) as the metric's scores."""
    scores = keys if metric is Metric.L2 else -keys
    return xp.where(ids < 0, xp.float32(metric.worst), scores).astype(xp.float32)


def _merge_shards(
    found: list[tuple[Any, Any]], nq: int, k: int, metric: Metric, xp: Any, merge: Any = merge_topk
) -> tuple[Any, Any]:
    if not found:
        return empty_topk(xp, nq, k, metric.worst)
    result = found[0]
    for part in found[1:]:
        result = merge(result, part, k, metric.larger_is_better, metric.worst)
    return result


class _MatmulScan:
    def __init__(self, metric: Metric) -> None:
        self.metric = metric

    def __call__(
        self, queries: Any, probes: Any, k: int, parts: list[Part], effort: Effort = None
    ) -> tuple[Any, Any]:
        found = [matmul_scan(queries, probes, segment, mask, k, self.metric) for segment, mask in parts]
        return _merge_shards(found, queries.shape[0], k, self.metric, array_module(queries))


class _NumbaScan:
    def __init__(self, metric: Metric) -> None:
        self.metric = metric

    def __call__(
        self, queries: Any, probes: Any, k: int, parts: list[Part], effort: Effort = None
    ) -> tuple[Any, Any]:
        from hpcrag.kernels.numba_cpu import scan_lists

        found = []
        for segment, mask in parts:
            keys, ids = scan_lists(
                queries,
                probes,
                np.asarray(segment.vectors),
                np.asarray(segment.ids),
                np.asarray(segment.sqnorms),
                segment.offsets,
                k,
                self.metric is Metric.L2,
                allowed=mask,
            )
            found.append((_scores_from_keys(np, keys, ids, self.metric), ids))
        return _merge_shards(found, queries.shape[0], k, self.metric, np)


class _GpuKernelScan:
    def __init__(self, metric: Metric) -> None:
        self.metric = metric
        self._told: set[str] = set()
        self._broken: str | None = None
        self._simt_broken: str | None = None

    def _fallback(self, why: str, to: str) -> None:
        if why not in self._told:
            self._told.add(why)
            log.warning("WMMA scan unavailable (%s): using %s", why, to)

    def __call__(
        self, queries: Any, probes: Any, k: int, parts: list[Part], effort: Effort = None
    ) -> tuple[Any, Any]:
        import cupy

        found = [
            matmul_scan(queries, probes, s, mask, k, self.metric) for s, mask in parts if mask is not None
        ]
        whole = [segment for segment, mask in parts if mask is None]
        if whole:
            found.append(self._scan_whole(queries, probes, k, whole))
        return _merge_shards(found, queries.shape[0], k, self.metric, cupy)

    def _scan_whole(self, queries: Any, probes: Any, k: int, segments: list[Segment]) -> tuple[Any, Any]:
        import cupy

        from hpcrag.kernels import cuda

        why = self._broken or cuda.unavailable(k)
        if why is None:
            try:
                return self._wmma(queries, probes, k, segments)
            except cupy.cuda.compiler.CompileException as exc:
                # NVRTC without the CUDA headers <mma.h> needs, for one: fall back, once, and say so.
                self._broken = f"the WMMA kernel did not compile ({str(exc).splitlines()[0]})"
                why = self._broken
        if k <= SIMT_MAX_K and self._simt_broken is None:
            self._fallback(why, "the Numba CUDA SIMT kernel")
            try:
                return self._simt(queries, probes, k, segments)
            except (ImportError, RuntimeError) as exc:  # Numba's CUDA support or NVVM missing
                self._simt_broken = f"the Numba CUDA kernel cannot run ({exc})"
                why = self._simt_broken
        self._fallback(why, "matrix products")
        found = [matmul_scan(queries, probes, segment, None, k, self.metric) for segment in segments]
        return _merge_shards(found, queries.shape[0], k, self.metric, cupy)

    def _wmma(self, queries: Any, probes: Any, k: int, segments: list[Segment]) -> tuple[Any, Any]:
        import cupy

        from hpcrag.kernels import cuda

        host_probes = to_numpy(probes)
        found = []
        for segment in segments:
            if "wmma" not in segment.cache:
                segment.cache["wmma"] = cuda.device_lists(
                    segment.vectors, segment.sqnorms, segment.ids, segment.offsets
                )
            keys, ids = cuda.wmma_scan(
                queries, host_probes, segment.cache["wmma"], k, self.metric is Metric.L2
            )
            scores = _scores_from_keys(cupy, keys, ids, self.metric)
            found.append(select_topk(scores, ids, k, self.metric.larger_is_better, self.metric.worst))
        return _merge_shards(found, queries.shape[0], k, self.metric, cupy, merge=cuda.merge_topk)

    def _simt(self, queries: Any, probes: Any, k: int, segments: list[Segment]) -> tuple[Any, Any]:
        import cupy

        from hpcrag.kernels import numba_cuda

        found = []
        for segment in segments:
            keys, ids = numba_cuda.scan_lists(
                queries,
                probes,
                segment.vectors,
                segment.ids,
                segment.sqnorms,
                cupy.asarray(segment.offsets),
                k,
                self.metric is Metric.L2,
            )
            keys, ids = cupy.asarray(keys), cupy.asarray(ids)
            found.append((_scores_from_keys(cupy, keys, ids, self.metric), ids))
        return _merge_shards(found, queries.shape[0], k, self.metric, cupy)


class _FaissScan:
    """faiss IndexIVFFlat per shard, filled with the shard's own lists (FP32 codes)."""

    def __init__(self, metric: Metric, nlist: int) -> None:
        self.metric = metric
        self.nlist = nlist

    def __call__(
        self, queries: Any, probes: Any, k: int, parts: list[Part], effort: Effort = None
    ) -> tuple[Any, Any]:
        # Only the index as built reaches here: DistributedIndex refuses updates and filters on rank 0.
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        probes = np.ascontiguousarray(probes, dtype=np.int64)
        found = []
        for segment, _ in parts:
            if "faiss" not in segment.cache:
                segment.cache["faiss"] = self._faiss_index(segment)
            index, _ = segment.cache["faiss"]
            index.nprobe = probes.shape[1]
            scores, ids = index.search_preassigned(queries, k, probes, np.zeros(probes.shape, np.float32))
            scores = np.where(ids < 0, np.float32(self.metric.worst), scores).astype(np.float32)
            found.append(select_topk(scores, ids, k, self.metric.larger_is_better, self.metric.worst))
        return _merge_shards(found, queries.shape[0], k, self.metric, np)

    def _faiss_index(self, segment: Segment) -> Any:
        import faiss

        vectors = np.ascontiguousarray(np.asarray(segment.vectors), dtype=np.float32)
        ids = np.ascontiguousarray(np.asarray(segment.ids), dtype=np.int64)
        dim = vectors.shape[1]
        quantizer = faiss.IndexFlat(dim, self.metric.faiss_metric())
        index = faiss.IndexIVFFlat(quantizer, dim, int(self.nlist), self.metric.faiss_metric())
        index.is_trained = True
        for list_no in np.flatnonzero(np.diff(segment.offsets)):
            lo, hi = int(segment.offsets[list_no]), int(segment.offsets[list_no + 1])
            index.invlists.add_entries(
                int(list_no),
                hi - lo,
                faiss.swig_ptr(ids[lo:hi]),
                faiss.swig_ptr(vectors[lo:hi].view(np.uint8)),
            )
        index.ntotal = vectors.shape[0]
        return index, quantizer  # the index holds a raw pointer to its quantizer: keep both alive
