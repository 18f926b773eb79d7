"""How many queries each shard searches (`SearchResult.shard_queries`): what shows a hot shard.

Counted from the routed probes for an ivf search (a shard counts once per query however many of its
lists the query probes), and as every query for each shard with matching rows under an exact scan.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hpcrag.search import DistributedIndex, Metric
from hpcrag.search.router import Router
from tests.search_helpers import build_small
from tests.unit.search.test_live_updates import BASE, NLIST, QUERIES


def test_a_shard_counts_once_per_query_whatever_lists_it_probes() -> None:
    centroids = np.eye(4, dtype=np.float32)
    router = Router(centroids, Metric.IP, np.array([0, 0, 1, 2], dtype=np.int32), np)
    probes = np.array([[0, 1, -1], [2, 0, 1], [-1, -1, -1], [3, -1, 2]])
    # Query 0 reaches shard 0 twice; query 2 was routed nowhere (its probes all dropped).
    touched, per_shard = router.shard_load(probes)
    assert per_shard.tolist() == [2, 2, 1]
    assert touched.tolist() == [1, 2, 0, 2]


def test_search_results_count_each_shards_queries(tmp_path: Path) -> None:
    index = DistributedIndex.open(build_small(tmp_path, BASE, nlist=NLIST, nshards=4))
    routed = index.search(QUERIES, k=5, nprobe=4, max_shards=1)
    assert routed.shard_queries.sum() == len(QUERIES) == routed.shards_touched.sum()
    everywhere = index.search(QUERIES, k=5, nprobe=NLIST)
    assert everywhere.shard_queries.tolist() == [len(QUERIES)] * 4
    exact = index.search(QUERIES, k=5, strategy="exact")
    assert exact.shard_queries.tolist() == [len(QUERIES)] * 4
    index.close()
