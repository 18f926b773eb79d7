"""The CUDA kernels against CuPy float32 references: fresh random inputs on every run, outputs
poisoned before every launch, so a slot a kernel forgets to write fails the comparison."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from hpcrag.search import DistributedIndex
from hpcrag.search.synthetic import clustered
from hpcrag.search.topk import merge_topk as host_merge
from hpcrag.search.topk import select_topk
from tests.search_helpers import assert_same_neighbours, build_small

pytestmark = pytest.mark.gpu


def _rng() -> np.random.Generator:
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"seed {seed}")
    return np.random.default_rng(seed)


@pytest.mark.parametrize("dim", [100, 384, 768, 1536])
@pytest.mark.parametrize("l2", [False, True])
@pytest.mark.parametrize("k", [1, 10, 100, 256])
def test_wmma_scan_matches_a_float32_reference(dim: int, l2: bool, k: int) -> None:
    import cupy

    from hpcrag.kernels import cuda

    rng = _rng()
    sizes = rng.integers(0, 3000, size=12)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    vectors = rng.standard_normal((int(offsets[-1]), dim)).astype(np.float16)
    ids = rng.permutation(10 * len(vectors))[: len(vectors)].astype(np.int64)
    sqnorms = (vectors.astype(np.float32) ** 2).sum(axis=1)
    nq = 50
    queries = cupy.asarray(rng.standard_normal((nq, dim)).astype(np.float16).astype(np.float32))
    probes = np.stack([rng.permutation(12)[:5] for _ in range(nq)]).astype(np.int64)
    lists = cuda.device_lists(vectors, sqnorms, ids, offsets)
    keys, found = cuda.wmma_scan(queries, probes, lists, k, l2, poison=True)
    got_keys, got_ids = select_topk(
        cupy.where(found < 0, cupy.inf, keys), found, k, larger_is_better=False, worst=float("inf")
    )
    assert not cupy.isnan(keys).any()
    dev_vectors = cupy.asarray(vectors, dtype=cupy.float32)
    for q in range(nq):
        rows = np.concatenate([np.arange(offsets[p], offsets[p + 1]) for p in probes[q]])
        dots = dev_vectors[rows] @ queries[q]
        ref = (queries[q] @ queries[q] - 2 * dots + cupy.asarray(sqnorms[rows])) if l2 else -dots
        ref = cupy.maximum(ref, 0) if l2 else ref
        take = min(k, rows.size)
        want = cupy.sort(ref)[:take]
        scale = float(cupy.abs(ref).max()) if rows.size else 1.0
        np.testing.assert_allclose(cupy.asnumpy(got_keys[q, :take]), cupy.asnumpy(want), atol=2e-3 * scale)
        assert (cupy.asnumpy(got_ids[q, take:]) == -1).all()
        assert set(cupy.asnumpy(got_ids[q, :take]).tolist()) <= set(ids[rows].tolist())


@pytest.mark.parametrize("larger_is_better", [True, False])
def test_device_merge_equals_the_host_merge(larger_is_better: bool) -> None:
    import cupy

    from hpcrag.kernels import cuda

    rng = _rng()
    worst = float("-inf") if larger_is_better else float("inf")
    for k in (1, 10, 100):
        sets = []
        for _ in range(2):
            scores = rng.standard_normal((300, k)).astype(np.float32).round(1)  # rounding makes ties
            ids = rng.integers(0, 10**6, size=(300, k))
            ids[rng.random((300, k)) < 0.2] = -1
            scores[ids < 0] = worst
            sets.append(select_topk(scores, ids, k, larger_is_better, worst))
        want = host_merge(sets[0], sets[1], k, larger_is_better, worst)
        device = [(cupy.asarray(s), cupy.asarray(i)) for s, i in sets]
        got = cuda.merge_topk(device[0], device[1], k, larger_is_better, worst, poison=True)
        np.testing.assert_array_equal(cupy.asnumpy(got[1]), want[1])
        np.testing.assert_array_equal(cupy.asnumpy(got[0]), want[0])


@pytest.mark.parametrize("larger_is_better", [True, False])
def test_device_merge_keeps_an_id_in_both_sets_once_like_the_host(larger_is_better: bool) -> None:
    """A replicated row found in two shards: the same id in both sets, at equal or other scores."""
    import cupy

    from hpcrag.kernels import cuda

    rng = _rng()
    worst = float("-inf") if larger_is_better else float("inf")
    k = 16
    ids = np.stack([rng.permutation(40)[:k] for _ in range(200)]).astype(np.int64)
    scores = rng.standard_normal((200, k)).astype(np.float32)
    a = select_topk(scores, ids, k, larger_is_better, worst)
    shifted = np.where(rng.random((200, k)) < 0.5, scores, scores + 0.3).astype(np.float32)
    other = np.where(rng.random((200, k)) < 0.5, ids, ids + 40)  # half shared, half new ids
    b = select_topk(shifted, other, k, larger_is_better, worst)
    want = host_merge(a, b, k, larger_is_better, worst)
    for row in want[1]:
        assert np.unique(row[row >= 0]).size == (row >= 0).sum()
    got = cuda.merge_topk(
        (cupy.asarray(a[0]), cupy.asarray(a[1])), (cupy.asarray(b[0]), cupy.asarray(b[1])), k,
        larger_is_better, worst, poison=True,
    )  # fmt: skip
    np.testing.assert_array_equal(cupy.asnumpy(got[1]), want[1])
    np.testing.assert_array_equal(cupy.asnumpy(got[0]), want[0])


@pytest.mark.parametrize("metric", ["ip", "l2", "cosine"])
def test_search_with_gpu_kernels_equals_the_cpu_kernels(tmp_path: Path, metric: str) -> None:
    base, queries = clustered(30000, 200, 100, clusters=40, seed=7)
    index_dir = build_small(tmp_path, base, nlist=64, nshards=4, metric=metric, dtype="float16")
    cpu = DistributedIndex.open(index_dir, scan_backend="kernels").search(queries, k=50, nprobe=8)
    gpu = DistributedIndex.open(index_dir, device="cuda", scan_backend="kernels").search(
        queries, k=50, nprobe=8
    )
    assert_same_neighbours(gpu.ids, gpu.distances, cpu.ids, cpu.distances)
