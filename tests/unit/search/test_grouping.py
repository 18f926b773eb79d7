"""Shard grouping: balanced by vector count, neighbours together, fewer shards per query than random."""

from __future__ import annotations

import numpy as np

from hpcrag.search.grouping import BALANCE_SLACK, group_lists, random_grouping, shards_touched
from hpcrag.search.metric import Metric
from hpcrag.search.router import coarse_quantizer
from hpcrag.search.synthetic import clustered


def _setup(nlist: int = 64):
    import faiss

    base, queries = clustered(6000, 300, 32, clusters=8, spread=0.4, seed=5)
    kmeans = faiss.Kmeans(32, nlist, niter=10, seed=1)
    kmeans.train(base)
    quantizer = coarse_quantizer(kmeans.centroids, Metric.L2)
    counts = np.bincount(quantizer.search(base, 1)[1][:, 0], minlength=nlist)
    return kmeans.centroids, counts, quantizer, base, queries


def test_grouping_is_balanced_and_every_shard_has_lists() -> None:
    centroids, counts, quantizer, base, _ = _setup()
    probes = quantizer.search(base[:2000], 8)[1]
    assignment = group_lists(centroids, counts, 4, sample_probes=probes)
    assert set(assignment.tolist()) == {0, 1, 2, 3}
    loads = np.bincount(assignment, weights=counts + 1, minlength=4)
    assert loads.max() <= (counts + 1).sum() / 4 * (1 + BALANCE_SLACK) + (counts.max() + 1)


def test_semantic_grouping_touches_fewer_shards_than_random() -> None:
    centroids, counts, quantizer, base, queries = _setup()
    probes = quantizer.search(queries, 8)[1]
    semantic = group_lists(centroids, counts, 4, sample_probes=quantizer.search(base[:2000], 8)[1])
    semantic_fanout = shards_touched(probes, semantic).mean()
    random_fanout = shards_touched(probes, random_grouping(64, 4)).mean()
    assert semantic_fanout < 0.6 * random_fanout, (semantic_fanout, random_fanout)


def test_shards_touched_counts_distinct_owners() -> None:
    list_shard = np.array([0, 0, 1, 2])
    probes = np.array([[0, 1, 0], [0, 2, 3], [3, 3, 3]])
    assert shards_touched(probes, list_shard).tolist() == [1, 3, 1]


def test_one_shard_owns_everything() -> None:
    centroids, counts, *_ = _setup()
    assert (group_lists(centroids, counts, 1) == 0).all()
