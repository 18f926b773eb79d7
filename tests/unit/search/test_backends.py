"""The three local scan backends agree on the same index: hpcrag's kernels, matrix products, faiss."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hpcrag.errors import HpcragError
from hpcrag.search.index import DistributedIndex
from hpcrag.search.synthetic import clustered
from tests.search_helpers import assert_same_neighbours, build_small


@pytest.mark.parametrize("metric", ["ip", "l2", "cosine"])
@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_backends_return_the_same_neighbours(tmp_path: Path, metric: str, dtype: str) -> None:
    base, queries = clustered(3000, 40, 48, seed=5)
    root = build_small(tmp_path, base, nlist=24, nshards=3, metric=metric, dtype=dtype)
    results = {}
    for backend in ("kernels", "matmul", "faiss"):
        index = DistributedIndex.open(root, scan_backend=backend)
        results[backend] = index.search(queries, k=15, nprobe=6)
    reference = results["matmul"]
    for backend in ("kernels", "faiss"):
        got = results[backend]
        assert_same_neighbours(got.ids, got.distances, reference.ids, reference.distances)
        np.testing.assert_allclose(got.distances, reference.distances, rtol=1e-4, atol=1e-4)


def test_k_larger_than_the_probed_lists_pads_the_same_way(tmp_path: Path) -> None:
    base, queries = clustered(300, 5, 16, seed=2)
    root = build_small(tmp_path, base, nlist=30, nshards=2, metric="l2", dtype="float16")
    kernels = DistributedIndex.open(root, scan_backend="kernels").search(queries, k=200, nprobe=1)
    matmul = DistributedIndex.open(root, scan_backend="matmul").search(queries, k=200, nprobe=1)
    np.testing.assert_array_equal(kernels.ids == -1, matmul.ids == -1)
    assert (kernels.ids == -1).any()
    assert np.isinf(kernels.distances[kernels.ids == -1]).all()


def test_unknown_backend_is_refused(tmp_path: Path) -> None:
    base, _ = clustered(200, 1, 8, seed=1)
    root = build_small(tmp_path, base, nlist=4, nshards=2)
    with pytest.raises(HpcragError, match="unknown scan backend 'blas'; valid: kernels, matmul, faiss"):
        DistributedIndex.open(root, scan_backend="blas")
