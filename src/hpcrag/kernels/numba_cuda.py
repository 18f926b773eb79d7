"""A SIMT scan kernel in Numba CUDA (no tensor cores): the portable GPU fallback, and the one whose
logic the tests check on the CPU under NUMBA_ENABLE_CUDASIM=1.

One block of 32 threads per query: the threads stride over the rows of the lists the query probes,
each keeping a private sorted top-k in registers (FP16 loads, FP32 accumulation); then thread 0
merges the 32 private lists from shared memory. k is a compile-time constant, one kernel per (k,
metric), so the private arrays can live in registers.
"""

from __future__ import annotations

import math
from functools import cache
from typing import Any

import numpy as np
from numba import cuda, float32, int64

from hpcrag.kernels.numba_cpu import METRIC_L2

THREADS = 32
MAX_K = 64  # 32 private lists of k (float32 + int64) must fit in 48 KB of shared memory


@cache
def _kernel(k: int, metric: int) -> Any:
    # `cuda` must be a module global of the kernel: the simulator swaps that name for its own.
    shared_slots = THREADS * k

    @cuda.jit(device=True, inline=True)
    def better(key_a, id_a, key_b, id_b):  # type: ignore[no-untyped-def]
        if id_b < 0:
            return id_a >= 0
        if id_a < 0:
            return False
        return key_a < key_b or (key_a == key_b and id_a < id_b)

    @cuda.jit
    def scan(queries, probes, vectors, ids, sqnorms, offsets, out_keys, out_ids):  # type: ignore[no-untyped-def]
        q = cuda.blockIdx.x
        t = cuda.threadIdx.x
        keys = cuda.local.array(k, float32)
        best = cuda.local.array(k, int64)
        for i in range(k):
            keys[i] = math.inf
            best[i] = -1
        d = queries.shape[1]
        qnorm = float32(0.0)
        if metric == METRIC_L2:
            for j in range(d):
                qnorm += queries[q, j] * queries[q, j]
        for p in range(probes.shape[1]):
            lst = probes[q, p]
            if lst < 0:
                continue
            for row in range(offsets[lst] + t, offsets[lst + 1], THREADS):
                dot = float32(0.0)
                for j in range(d):
                    dot += queries[q, j] * float32(vectors[row, j])
                if metric == METRIC_L2:
                    key = max(qnorm - float32(2.0) * dot + sqnorms[row], float32(0.0))
                else:
                    key = -dot
                ident = ids[row]
                if better(key, ident, keys[k - 1], best[k - 1]):
                    pos = k - 1
                    while pos > 0 and better(key, ident, keys[pos - 1], best[pos - 1]):
                        keys[pos] = keys[pos - 1]
                        best[pos] = best[pos - 1]
                        pos -= 1
                    keys[pos] = key
                    best[pos] = ident
        shared_keys = cuda.shared.array(shared_slots, float32)
        shared_ids = cuda.shared.array(shared_slots, int64)
        for i in range(k):
            shared_keys[t * k + i] = keys[i]
            shared_ids[t * k + i] = best[i]
        cuda.syncthreads()
        if t == 0:
            heads = cuda.local.array(THREADS, int64)
            for lane in range(THREADS):
                heads[lane] = 0
            for i in range(k):
                chosen = -1
                for lane in range(THREADS):
                    h = heads[lane]
                    if h < k and (
                        chosen < 0
                        or better(
                            shared_keys[lane * k + h],
                            shared_ids[lane * k + h],
                            shared_keys[chosen * k + heads[chosen]],
                            shared_ids[chosen * k + heads[chosen]],
                        )
                    ):
                        chosen = lane
                out_keys[q, i] = shared_keys[chosen * k + heads[chosen]]
                out_ids[q, i] = shared_ids[chosen * k + heads[chosen]]
                heads[chosen] += 1

    return scan


def scan_lists(
    queries: Any,
    probes: Any,
    vectors: Any,
    ids: Any,
    sqnorms: Any,
    offsets: Any,
    k: int,
    l2: bool,
) -> tuple[Any, Any]:
    """Same contract as `numba_cpu.scan_lists`, on device (or simulated) arrays."""
    if not 1 <= k <= MAX_K:
        raise ValueError(f"the SIMT kernel keeps k <= {MAX_K} per query, got k={k}")
    nq = queries.shape[0]
    out_keys = cuda.device_array((nq, k), dtype=np.float32)
    out_ids = cuda.device_array((nq, k), dtype=np.int64)
    if nq:
        kernel = _kernel(k, METRIC_L2 if l2 else 0)
        kernel[nq, THREADS](queries, probes, vectors, ids, sqnorms, offsets, out_keys, out_ids)
    return out_keys, out_ids
