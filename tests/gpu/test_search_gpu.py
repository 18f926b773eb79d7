"""The search's GPU path (CuPy arrays; NCCL between ranks) gives the CPU path's answers."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from hpcrag.errors import HpcragError
from hpcrag.search import BuildOptions, DistributedIndex, Metric, build_index
from hpcrag.search.synthetic import clustered
from tests.integration.helpers import mpirun
from tests.search_helpers import assert_same_neighbours, build_small

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("metric", ["ip", "l2", "cosine"])
def test_one_gpu_equals_the_cpu(tmp_path: Path, metric: str) -> None:
    base, queries = clustered(20000, 200, 96, clusters=40, seed=3)
    index_dir = build_small(tmp_path, base, nlist=64, nshards=4, metric=metric, dtype="float16")
    cpu = DistributedIndex.open(index_dir).search(queries, k=20, nprobe=8)
    gpu = DistributedIndex.open(index_dir, device="cuda").search(queries, k=20, nprobe=8)
    assert_same_neighbours(gpu.ids, gpu.distances, cpu.ids, cpu.distances)
    np.testing.assert_array_equal(gpu.shards_touched, cpu.shards_touched)


def test_nccl_ranks_equal_the_cpu(tmp_path: Path) -> None:
    import cupy

    ranks = min(2, cupy.cuda.runtime.getDeviceCount())
    base, queries = clustered(20000, 100, 64, clusters=40, seed=4)
    index_dir = build_small(tmp_path, base, nlist=32, nshards=2, metric="l2", dtype="float16")
    np.save(tmp_path / "queries.npy", queries)
    mpirun(
        ranks, sys.executable, "-m", "hpcrag", "index", "search", str(index_dir),
        "--queries", str(tmp_path / "queries.npy"), "--k", "10", "--nprobe", "6", "--device", "cuda",
        "--out", str(tmp_path / "gpu.npz"),
    )  # fmt: skip
    cpu = DistributedIndex.open(index_dir).search(queries, k=10, nprobe=6)
    gpu = np.load(tmp_path / "gpu.npz")
    assert_same_neighbours(gpu["ids"], gpu["distances"], cpu.ids, cpu.distances)


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_cagra_shards_at_high_effort_equal_exact_search(tmp_path: Path, metric: str) -> None:
    pytest.importorskip("cuvs", reason="CAGRA needs cuVS: pip install -e '.[cuda12]' (or cuda13)")
    from hpcrag.search import Metric, reference
    from hpcrag.search.build import BuildOptions, build_index

    base, queries = clustered(20000, 200, 96, clusters=40, seed=6)
    np.save(tmp_path / "base.npy", base)
    options = BuildOptions(nlist=64, nshards=4, metric=Metric(metric), local_kind="cagra")
    build_index(tmp_path / "base.npy", tmp_path / "cagra", options)
    opened = DistributedIndex.open(tmp_path / "cagra", device="cuda")
    found = opened.search(queries, k=10, nprobe=64, ef=512)
    distances, ids = reference.search(reference.exact(base, Metric(metric)), queries, 10, Metric(metric))
    assert reference.recall_at(found.ids, ids, 10) >= 0.99
    # Scores in the metric's own convention (similarity for ip, squared distance for l2).
    np.testing.assert_allclose(found.distances[:, 0], distances[:, 0], rtol=1e-2, atol=1e-2)
    routed = opened.search(queries, k=10, nprobe=16, max_shards=2, ef=64)
    assert (routed.shards_touched <= 2).all()
    refusal = "this index's shards are cagra (built with --local cagra), which takes no updates"
    with pytest.raises(HpcragError, match=refusal):
        opened.delete(np.array([1]))


def test_updates_to_a_replicated_index_on_the_gpu_equal_the_cpu(tmp_path: Path) -> None:
    """An add judges each row's second copy with the router's device centroids, as the CPU does."""
    base, queries = clustered(20000, 100, 64, clusters=40, seed=5)
    np.save(tmp_path / "base.npy", base)
    options = BuildOptions(nlist=32, nshards=4, metric=Metric.L2, dtype="float16", replicate=0.3)
    found = {}
    for device in ("cpu", "cuda"):
        build_index(tmp_path / "base.npy", tmp_path / device, options)
        index = DistributedIndex.open(tmp_path / device, device=device)
        index.add(queries + np.float32(0.01), np.arange(1_000_000, 1_000_000 + len(queries)))
        found[device] = index.search(queries, k=10, nprobe=8, max_shards=1)
        index.close()
    gpu, cpu = found["cuda"], found["cpu"]
    assert_same_neighbours(gpu.ids, gpu.distances, cpu.ids, cpu.distances)
