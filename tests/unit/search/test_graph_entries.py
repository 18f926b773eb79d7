"""An hnsw shard's walk starts at the row nearest the centroid of the query's routed list (faiss's
bottom-level search): the entry rows, and answers equal to exact search at full effort."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest

from hpcrag.errors import HpcragError
from hpcrag.search import DistributedIndex
from hpcrag.search.build import BuildOptions, build_index
from hpcrag.search.graph_entries import graph_rows, list_entries, query_entries, search_from_entries
from hpcrag.search.metric import Metric
from hpcrag.search.synthetic import clustered


def test_each_list_enters_at_its_row_nearest_the_centroid_and_an_empty_list_has_none() -> None:
    centroids = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]], dtype=np.float32)
    # list 0: rows 0-2, list 1: no row, list 2: rows 3-4
    rows = np.array([[3, 0], [1, 1], [-2, 0], [0, 7], [0, 11]], dtype=np.float32)
    offsets = np.array([0, 3, 3, 5])
    assert list_entries(rows, offsets, centroids).tolist() == [1, -1, 4]


def test_a_query_enters_through_its_first_probe_into_a_list_with_rows() -> None:
    entries = np.array([5, -1, 7, 2], dtype=np.int32)
    probes = np.array([[1, 2, 0], [-1, 3, 2], [0, 1, 2], [-1, 1, -1]])
    starts = query_entries(probes, entries)
    assert starts.dtype == np.int32 and starts.shape == (4, 1)
    assert starts[:, 0].tolist() == [7, 2, 5, -1]


def graph(rows: np.ndarray, metric: Metric) -> faiss.IndexHNSWFlat:
    index = faiss.IndexHNSWFlat(rows.shape[1], 16, metric.faiss_metric())
    index.hnsw.efConstruction = 40
    index.add(rows)
    return index


def exact(queries: np.ndarray, rows: np.ndarray, k: int, metric: Metric) -> tuple[np.ndarray, np.ndarray]:
    if metric is Metric.L2:
        scores = ((queries[:, None, :] - rows[None, :, :]) ** 2).sum(axis=2)
        order = np.argsort(scores, axis=1, kind="stable")[:, :k]
    else:
        scores = queries @ rows.T
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), order


@pytest.mark.parametrize("metric", [Metric.L2, Metric.IP])
def test_the_walk_from_the_entries_at_full_effort_is_exact(metric: Metric) -> None:
    rng = np.random.default_rng(3)
    rows = rng.standard_normal((600, 16)).astype(np.float32)
    queries = rng.standard_normal((40, 16)).astype(np.float32)
    index = graph(rows, metric)
    view = graph_rows(index)
    assert np.array_equal(view, rows)  # the graph's own float32 rows, not a copy of ours
    starts = rng.integers(0, rows.shape[0], size=(queries.shape[0], 1)).astype(np.int32)
    params = faiss.SearchParametersHNSW(efSearch=600)
    scores, labels = search_from_entries(index, view, queries, starts, 10, params, metric)
    want_scores, want_labels = exact(queries, rows, 10, metric)
    assert np.array_equal(labels, want_labels)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-4, atol=1e-4)


def test_the_walk_never_answers_a_hidden_row_and_a_query_without_entry_gets_nothing() -> None:
    rng = np.random.default_rng(4)
    rows = rng.standard_normal((300, 8)).astype(np.float32)
    queries = rows[:5] + 0.01  # each query sits on a row that is hidden
    index = graph(rows, Metric.L2)
    readable = np.ones(rows.shape[0], dtype=bool)
    readable[:5] = False
    bits = np.packbits(readable, bitorder="little")
    params = faiss.SearchParametersHNSW(
        efSearch=300, sel=faiss.IDSelectorBitmap(rows.shape[0], faiss.swig_ptr(bits))
    )
    starts = np.array([[0], [1], [2], [3], [-1]], dtype=np.int32)  # the entry itself hidden; none
    labels = search_from_entries(index, graph_rows(index), queries, starts, 3, params, Metric.L2)[1]
    want = exact(queries[:4], rows[5:], 3, Metric.L2)[1] + 5
    assert np.array_equal(labels[:4], want)
    assert labels[4].tolist() == [-1, -1, -1]


def test_opening_an_hnsw_index_works_out_every_list_entry_before_the_first_query(tmp_path: Path) -> None:
    base, _ = clustered(2000, 10, 16, clusters=8, spread=0.5, seed=2, topics=4)
    np.save(tmp_path / "base.npy", base)
    options = BuildOptions(nlist=16, nshards=2, metric=Metric.L2, dtype="float32", local_kind="hnsw")
    build_index(tmp_path / "base.npy", tmp_path / "index", options)
    index = DistributedIndex.open(tmp_path / "index")
    centroids = index.router.host_centroids
    for shard in range(2):
        (segment,) = index.segments(shard)
        entries = segment.cache["entries"]
        for number, entry in enumerate(entries):
            lo, hi = segment.offsets[number], segment.offsets[number + 1]
            if lo == hi:
                assert entry == -1
                continue
            rows = np.asarray(segment.vectors[lo:hi], dtype=np.float32)
            assert lo <= entry < hi
            assert entry - lo == np.argmin(((rows - centroids[number]) ** 2).sum(axis=1))


def test_a_graph_coding_its_rows_otherwise_than_as_float16_is_refused_by_name() -> None:
    rows = np.random.default_rng(6).standard_normal((50, 8)).astype(np.float32)
    coded = faiss.IndexHNSWSQ(8, faiss.ScalarQuantizer.QT_8bit, 16)
    coded.train(rows)
    coded.add(rows)
    refused = r"scalar quantizer type \d+, which hpcrag neither builds nor reads: rebuild"
    with pytest.raises(HpcragError, match=refused):
        graph_rows(coded)
