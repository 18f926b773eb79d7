"""The two invariants of the design, in one process: equal to faiss IndexIVFFlat with the same
centroids and nprobe, and equal to brute force when nprobe = nlist; plus the edge cases of k."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hpcrag.search import DistributedIndex, Metric, reference
from hpcrag.search.synthetic import clustered
from tests.search_helpers import assert_same_neighbours, build_small, centroids_of

BASE, QUERIES = clustered(3000, 60, 24, clusters=12, spread=0.5, seed=11)


@pytest.mark.parametrize("metric", ["ip", "l2", "cosine"])
@pytest.mark.parametrize("nprobe", [1, 3, 8])
def test_equals_faiss_ivfflat_with_the_same_centroids(tmp_path: Path, metric: str, nprobe: int) -> None:
    index_dir = build_small(tmp_path, BASE, metric=metric)
    result = DistributedIndex.open(index_dir).search(QUERIES, k=10, nprobe=nprobe)
    ivf = reference.ivf_flat(BASE, centroids_of(index_dir), Metric(metric))
    distances, ids = reference.search(ivf, QUERIES, 10, Metric(metric), nprobe)
    assert_same_neighbours(result.ids, result.distances, ids, distances)


@pytest.mark.parametrize("metric", ["ip", "l2", "cosine"])
def test_nprobe_nlist_equals_brute_force(tmp_path: Path, metric: str) -> None:
    index_dir = build_small(tmp_path, BASE, metric=metric)
    result = DistributedIndex.open(index_dir).search(QUERIES, k=25, nprobe=16)
    distances, ids = reference.search(reference.exact(BASE, Metric(metric)), QUERIES, 25, Metric(metric))
    assert_same_neighbours(result.ids, result.distances, ids, distances)
    assert (result.shards_touched == 4).all()


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_k_larger_than_a_list_a_shard_and_the_collection(tmp_path: Path, metric: str) -> None:
    base = BASE[:200]
    index_dir = build_small(tmp_path, base, nlist=8, nshards=4, metric=metric)
    opened = DistributedIndex.open(index_dir)
    largest_shard = max(s.ntotal for s in opened.manifest.shards)
    for k in (60, largest_shard + 1, 250):
        result = opened.search(QUERIES[:5], k=k, nprobe=8)
        distances, ids = reference.search(
            reference.exact(base, Metric(metric)), QUERIES[:5], k, Metric(metric)
        )
        assert_same_neighbours(result.ids, result.distances, ids, distances)
    assert (result.ids[:, 200:] == -1).all() and (result.ids[:, :200] >= 0).all()
    assert set(result.ids[0, :200].tolist()) == set(range(200))


def test_duplicates_and_empty_shards(tmp_path: Path) -> None:
    distinct = clustered(3, 0, 16, clusters=3, seed=2)[0]
    base = np.repeat(distinct, 40, axis=0)
    index_dir = build_small(tmp_path, base, nlist=8, nshards=4, metric="l2")
    opened = DistributedIndex.open(index_dir)
    assert 0 in [s.ntotal for s in opened.manifest.shards], "three distinct points cannot fill four shards"
    result = opened.search(distinct, k=40, nprobe=8)
    for row in range(3):
        assert sorted(result.ids[row].tolist()) == list(range(row * 40, row * 40 + 40))
        np.testing.assert_allclose(result.distances[row], 0.0, atol=1e-5)


def test_float16_input_and_storage(tmp_path: Path) -> None:
    base16 = BASE.astype(np.float16)
    index_dir = build_small(tmp_path, base16, metric="ip", dtype="float16")
    opened = DistributedIndex.open(index_dir)
    assert np.load(index_dir / "shard-0000" / "vectors.npy").dtype == np.float16
    result = opened.search(QUERIES.astype(np.float16), k=10, nprobe=4)
    ivf = reference.ivf_flat(base16.astype(np.float32), centroids_of(index_dir), Metric.IP)
    distances, ids = reference.search(ivf, QUERIES.astype(np.float16).astype(np.float32), 10, Metric.IP, 4)
    assert_same_neighbours(result.ids, result.distances, ids, distances)


def test_fvecs_input_and_user_ids(tmp_path: Path) -> None:
    from hpcrag.search import BuildOptions, build_index

    base = BASE[:500]
    fvecs = tmp_path / "base.fvecs"
    header = np.full((len(base), 1), base.shape[1], dtype=np.int32)
    np.hstack([header, base.view(np.int32)]).tofile(fvecs)
    ids = np.arange(len(base), dtype=np.int64) * 10 + 7
    np.save(tmp_path / "ids.npy", ids)
    build_index(
        fvecs,
        tmp_path / "idx",
        BuildOptions(nlist=8, nshards=2, metric=Metric.L2, dtype="float32"),
        tmp_path / "ids.npy",
    )
    result = DistributedIndex.open(tmp_path / "idx").search(base[:20], k=1, nprobe=8)
    assert result.ids[:, 0].tolist() == ids[:20].tolist()
