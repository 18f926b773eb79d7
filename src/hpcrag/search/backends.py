"""The shard-local scan, by backend, so that each can be compared on the same index:

- `kernels` (default): hpcrag's own kernels. CPU: the Numba scan (FP16 storage, FP32 accumulation,
  bounded heap). GPU: the FP16 tensor-core WMMA kernel with fused top-k; where it cannot run (no
  tensor cores, k > 256) the Numba CUDA SIMT kernel (k <= 64), else matrix products, saying why.
- `matmul`: one BLAS/cuBLAS product per probed list (`scan.py`).
- `faiss`: faiss's IndexIVFFlat over this rank's lists, searched with rank 0's probes
  (`search_preassigned`); CPU only.
Every backend returns (nq, k) (scores, ids) best first, empty slots (worst, -1).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from hpcrag.errors import HpcragError
from hpcrag.search.arrays import to_numpy
from hpcrag.search.metric import Metric
from hpcrag.search.scan import scan as matmul_scan
from hpcrag.search.store import LocalLists
from hpcrag.search.topk import merge_topk, select_topk

BACKENDS = ("kernels", "matmul", "faiss")
SIMT_MAX_K = 64  # numba_cuda.MAX_K, kept here so that choosing a fallback imports no CUDA module
Scanner = Callable[[Any, Any, int], tuple[Any, Any]]
log = logging.getLogger(__name__)


def make_scanner(backend: str, lists: LocalLists, metric: Metric, xp: Any, nlist: int) -> Scanner:
    if backend not in BACKENDS:
        raise HpcragError(f"unknown scan backend {backend!r}; valid: {', '.join(BACKENDS)}")
    on_gpu = xp is not np
    if backend == "matmul":
        return lambda queries, probes, k: matmul_scan(queries, probes, lists, k, metric)
    if backend == "faiss":
        if on_gpu:
            raise HpcragError("the faiss scan backend runs on the CPU; use --device cpu or another backend")
        return _FaissScan(lists, metric, nlist)
    return _GpuKernelScan(lists, metric) if on_gpu else _NumbaScan(lists, metric)


def _scores_from_keys(xp: Any, keys: Any, ids: Any, metric: Metric) -> Any:
    """Kernel keys (smaller is better: distance, or negated score) as the metric's scores."""
    scores = keys if metric is Metric.L2 else -keys
    return xp.where(ids < 0, xp.float32(metric.worst), scores).astype(xp.float32)


def _merge_shards(
    parts: list[tuple[Any, Any]], k: int, metric: Metric, merge: Any = merge_topk
) -> tuple[Any, Any]:
    result = parts[0]
    for part in parts[1:]:
        result = merge(result, part, k, metric.larger_is_better, metric.worst)
    return result


class _NumbaScan:
    def __init__(self, lists: LocalLists, metric: Metric) -> None:
        self.lists = lists
        self.metric = metric

    def __call__(self, queries: Any, probes: Any, k: int) -> tuple[Any, Any]:
        from hpcrag.kernels.numba_cpu import scan_lists

        parts = []
        for shard in self.lists.shards:
            keys, ids = scan_lists(
                queries,
                probes,
                np.asarray(shard.vectors),
                np.asarray(shard.ids),
                np.asarray(shard.sqnorms),
                shard.offsets,
                k,
                self.metric is Metric.L2,
            )
            parts.append((_scores_from_keys(np, keys, ids, self.metric), ids))
        return _merge_shards(parts, k, self.metric)


class _GpuKernelScan:
    def __init__(self, lists: LocalLists, metric: Metric) -> None:
        self.lists = lists
        self.metric = metric
        self._device_lists: list[Any] | None = None
        self._told: set[str] = set()
        self._broken: str | None = None
        self._simt_broken: str | None = None

    def _fallback(self, why: str, to: str) -> None:
        if why not in self._told:
            self._told.add(why)
            log.warning("WMMA scan unavailable (%s): using %s", why, to)

    def __call__(self, queries: Any, probes: Any, k: int) -> tuple[Any, Any]:
        import cupy

        from hpcrag.kernels import cuda

        why = self._broken or cuda.unavailable(k)
        if why is None:
            try:
                return self._wmma(queries, probes, k)
            except cupy.cuda.compiler.CompileException as exc:
                # NVRTC without the CUDA headers <mma.h> needs, for one: fall back, once, and say so.
                self._broken = f"the WMMA kernel did not compile ({str(exc).splitlines()[0]})"
                why = self._broken
        if k <= SIMT_MAX_K and self._simt_broken is None:
            self._fallback(why, "the Numba CUDA SIMT kernel")
            try:
                return self._simt(queries, probes, k)
            except (ImportError, RuntimeError) as exc:  # Numba's CUDA support or NVVM missing
                self._simt_broken = f"the Numba CUDA kernel cannot run ({exc})"
                why = self._simt_broken
        self._fallback(why, "matrix products")
        return matmul_scan(queries, probes, self.lists, k, self.metric)

    def _wmma(self, queries: Any, probes: Any, k: int) -> tuple[Any, Any]:
        import cupy

        from hpcrag.kernels import cuda

        if self._device_lists is None:
            self._device_lists = [
                cuda.device_lists(s.vectors, s.sqnorms, s.ids, s.offsets) for s in self.lists.shards
            ]
        host_probes = to_numpy(probes)
        parts = []
        for shard in self._device_lists:
            keys, ids = cuda.wmma_scan(queries, host_probes, shard, k, self.metric is Metric.L2)
            scores = _scores_from_keys(cupy, keys, ids, self.metric)
            parts.append(select_topk(scores, ids, k, self.metric.larger_is_better, self.metric.worst))
        return _merge_shards(parts, k, self.metric, merge=cuda.merge_topk)

    def _simt(self, queries: Any, probes: Any, k: int) -> tuple[Any, Any]:
        import cupy

        from hpcrag.kernels import numba_cuda

        parts = []
        for shard in self.lists.shards:
            keys, ids = numba_cuda.scan_lists(
                queries,
                probes,
                shard.vectors,
                shard.ids,
                shard.sqnorms,
                cupy.asarray(shard.offsets),
                k,
                self.metric is Metric.L2,
            )
            keys, ids = cupy.asarray(keys), cupy.asarray(ids)
            parts.append((_scores_from_keys(cupy, keys, ids, self.metric), ids))
        return _merge_shards(parts, k, self.metric)


class _FaissScan:
    """faiss IndexIVFFlat per shard, filled with the shard's own lists (FP32 codes)."""

    def __init__(self, lists: LocalLists, metric: Metric, nlist: int) -> None:
        import faiss

        self.metric = metric
        self.indexes = []
        for shard in lists.shards:
            vectors = np.ascontiguousarray(np.asarray(shard.vectors), dtype=np.float32)
            ids = np.ascontiguousarray(np.asarray(shard.ids), dtype=np.int64)
            dim = vectors.shape[1]
            quantizer = faiss.IndexFlat(dim, metric.faiss_metric())
            index = faiss.IndexIVFFlat(quantizer, dim, int(nlist), metric.faiss_metric())
            index.is_trained = True
            for list_no in np.flatnonzero(np.diff(shard.offsets)):
                lo, hi = int(shard.offsets[list_no]), int(shard.offsets[list_no + 1])
                index.invlists.add_entries(
                    int(list_no),
                    hi - lo,
                    faiss.swig_ptr(ids[lo:hi]),
                    faiss.swig_ptr(vectors[lo:hi].view(np.uint8)),
                )
            index.ntotal = vectors.shape[0]
            self.indexes.append((index, quantizer))

    def __call__(self, queries: Any, probes: Any, k: int) -> tuple[Any, Any]:
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        probes = np.ascontiguousarray(probes, dtype=np.int64)
        parts = []
        for index, _ in self.indexes:
            index.nprobe = probes.shape[1]
            scores, ids = index.search_preassigned(queries, k, probes, np.zeros(probes.shape, np.float32))
            scores = np.where(ids < 0, np.float32(self.metric.worst), scores).astype(np.float32)
            parts.append(select_topk(scores, ids, k, self.metric.larger_is_better, self.metric.worst))
        return _merge_shards(parts, k, self.metric)
