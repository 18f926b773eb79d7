"""How many queries each shard searches (`SearchResult.shard_queries`): what shows a hot shard.

Counted from the routed probes for an ivf search (a shard counts once per query however many of its
lists the query probes), and as every query for each shard with matching rows under an exact scan.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hpcrag.search import BuildOptions, DistributedIndex, Metric
from hpcrag.search.router import Router
from tests.search_helpers import build_small
from tests.unit.search.test_live_updates import BASE, NEW_IDS, NLIST, QUERIES


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


def test_a_probe_into_a_list_that_never_held_a_row_neither_counts_nor_takes_a_shards_place() -> None:
    centroids = np.array([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0], [9.0, 0.0]], dtype=np.float32)
    held = np.array([False, True, True, True])  # list 0 is empty
    router = Router(centroids, Metric.L2, np.array([0, 1, 2, 2]), np, held)
    query = np.array([[0.1, 0.0]], dtype=np.float32)  # nearest: empty list 0, then 1 and 2
    assert router.route(query, 3, None, None).tolist() == [[-1, 1, 2]]
    assert router.shard_load(router.route(query, 3, None, None))[0].tolist() == [2]  # not 3
    # Held to one shard, the query goes to the shard of its nearest list with rows, not to shard 0.
    assert router.route(query, 3, 1, None).tolist() == [[-1, 1, -1]]
    # The margin compares with that list too: list 2 (shard 2) is 8.41 away, over 1.5 x 0.81.
    assert router.route(query, 3, 2, 1.5).tolist() == [[-1, 1, -1]]
    assert router.route(query, 3, 2, 10.0).tolist() == [[-1, 1, 2]]
    router.hold(np.array([0]))  # rows were added to list 0
    assert router.route(query, 3, 1, None).tolist() == [[0, -1, -1]]


def test_an_index_routes_past_its_empty_lists_until_rows_are_added_to_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hpcrag.search import build as build_module

    trained = build_module._train
    far = 40.0 * np.eye(4, BASE.shape[1], dtype=np.float32)  # four centroids far from every row

    def with_empty_lists(vectors: np.ndarray, options: BuildOptions, say: Any) -> tuple[Any, Any]:
        centroids, sample = trained(vectors, options, say)
        centroids[-4:] = far
        return centroids, sample

    monkeypatch.setattr(build_module, "_train", with_empty_lists)
    np.save(tmp_path / "base.npy", BASE)
    options = BuildOptions(nlist=NLIST, nshards=4, metric=Metric.L2)
    build_module.build_index(tmp_path / "base.npy", tmp_path / "idx", options)
    index = DistributedIndex.open(tmp_path / "idx")
    assert index.manifest.list_counts[-4:] == [0, 0, 0, 0]
    queries = far + np.float32(1.0)  # each one's nearest list is an empty one, then lists with rows
    probes = index.router.probe(queries, 2)
    assert (probes[:, 0] >= NLIST - 4).all() and (probes[:, 1] < NLIST - 4).all()
    shards = index.router.list_shard
    assert (shards[probes[:, 0]] != shards[probes[:, 1]]).any()  # where routing to the empty list would miss
    both = index.search(queries, k=5, nprobe=2)
    held = index.search(queries, k=5, nprobe=2, max_shards=1)
    assert (both.shards_touched == 1).all() and (held.shards_touched == 1).all()
    assert (held.ids >= 0).all() and held.ids.tolist() == both.ids.tolist()
    index.add(queries, np.arange(NEW_IDS, NEW_IDS + 4))  # rows in the empty lists: now routed to
    again = index.search(queries, k=5, nprobe=2, max_shards=1)
    assert again.ids[:, 0].tolist() == list(range(NEW_IDS, NEW_IDS + 4))
    index.close()
    reopened = DistributedIndex.open(tmp_path / "idx")  # the log replayed: the lists hold rows again
    assert reopened.search(queries, k=5, nprobe=2, max_shards=1).ids.tolist() == again.ids.tolist()
    reopened.close()
