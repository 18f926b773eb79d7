"""Spreading the searches of real queries over the ranks (`index build --query-sample`): the busiest
rank's share drops on the sample and on queries it never saw, shard sizes stay balanced, and the
index answers exactly as before at full effort."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from hpcrag.cli.main import cli
from hpcrag.errors import HpcragError
from hpcrag.search import DistributedIndex, Metric, reference
from hpcrag.search.build import MAX_QUERY_SAMPLE, BuildOptions, build_index
from hpcrag.search.grouping import BALANCE_SLACK, group_lists
from hpcrag.search.query_balance import QUERY_PROBES, balance_query_load, rank_loads
from hpcrag.search.router import coarse_quantizer
from hpcrag.search.synthetic import clustered
from tests.search_helpers import assert_same_neighbours


def test_rank_loads_count_each_shard_a_query_reaches_once() -> None:
    assignment = np.array([0, 0, 1, 2, 3])
    probes = np.array([[0, 1], [0, 2], [3, 4], [2, 2]])
    # shards reached: {0}, {0, 1}, {2, 3}, {1}; ranks own shards {0, 2} and {1, 3}
    assert rank_loads(probes, assignment, np.array([0, 1, 0, 1])).tolist() == [3.0, 3.0]
    assert rank_loads(probes, assignment, np.array([0, 0, 1, 1])).tolist() == [4.0, 2.0]


def crowded_queries(base: np.ndarray, hot: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Queries near base rows, 80% of them near the `hot` rows: real queries crowd a region."""
    rng = np.random.default_rng(seed)
    crowded = rng.random(count) < 0.8
    rows = np.where(crowded, rng.choice(hot, count), rng.integers(0, base.shape[0], count))
    return (base[rows] + 0.05 * rng.standard_normal((count, base.shape[1]))).astype(np.float32)


def test_the_busiest_rank_does_its_share_on_the_sample_and_on_unseen_queries() -> None:
    import faiss

    base, _ = clustered(8000, 10, 32, clusters=16, spread=0.4, seed=7)
    kmeans = faiss.Kmeans(32, 128, niter=10, seed=1)
    kmeans.train(base)
    quantizer = coarse_quantizer(kmeans.centroids, Metric.L2)
    lists = quantizer.search(base, 1)[1][:, 0]
    counts = np.bincount(lists, minlength=128)
    weights = counts + 1.0
    assignment = group_lists(kmeans.centroids, counts, 4, sample_probes=quantizer.search(base[:2000], 8)[1])
    hot = np.flatnonzero(assignment[lists] == 0)  # the queries crowd shard 0
    sample = quantizer.search(crowded_queries(base, hot, 2000, seed=1), QUERY_PROBES)[1]
    unseen = quantizer.search(crowded_queries(base, hot, 2000, seed=2), QUERY_PROBES)[1]
    shard_rank = np.array([0, 1, 0, 1])

    balanced = balance_query_load(sample, weights, assignment, shard_rank)

    def busiest(probes: np.ndarray, grouping: np.ndarray) -> float:
        loads = rank_loads(probes, grouping, shard_rank)
        return loads.max() / loads.sum()

    assert busiest(sample, assignment) > 0.6 and busiest(unseen, assignment) > 0.6
    assert busiest(sample, balanced) <= 0.53, busiest(sample, balanced)
    assert busiest(unseen, balanced) <= 0.56, busiest(unseen, balanced)
    share = weights.sum() / 4
    before = np.bincount(assignment, weights=weights, minlength=4) / share
    after = np.bincount(balanced, weights=weights, minlength=4) / share
    # No shard leaves the bounds, and one the grouping left outside them gets no further out.
    assert (after <= np.maximum(1 + BALANCE_SLACK, before)).all(), (before, after)
    assert (after >= np.minimum(1 - BALANCE_SLACK, before)).all(), (before, after)
    # Moving lists costs searches where it splits neighbours; the total stays close.
    total = rank_loads(unseen, balanced, shard_rank).sum()
    assert total <= 1.1 * rank_loads(unseen, assignment, shard_rank).sum()


def test_queries_already_spread_evenly_move_nothing_that_does_not_help() -> None:
    assignment = np.array([0, 1, 2, 3] * 8)
    # each list probed alike, with a neighbour on its own shard
    probes = np.stack([np.arange(32), (np.arange(32) + 4) % 32], axis=1)
    shard_rank = np.array([0, 1, 0, 1])
    balanced = balance_query_load(probes, np.ones(32), assignment, shard_rank)
    assert np.array_equal(balanced, assignment)


def test_a_shard_of_two_lists_trades_one_for_a_list_back() -> None:
    assignment = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    probes = np.array([[0, 4]] * 300 + [[6, 7]] * 20)  # a crowd on lists 0 and 4: both rank 0's
    shard_rank = np.array([0, 1, 0, 1])
    balanced = balance_query_load(probes, np.ones(8), assignment, shard_rank)
    assert rank_loads(probes, balanced, shard_rank).tolist() == [300.0, 20.0]
    assert np.bincount(balanced, minlength=4).tolist() == [2, 2, 2, 2]


BASE, QUERIES = clustered(3000, 40, 32, clusters=12, spread=0.5, seed=5, topics=4)


def build(tmp_path: Path, sample: np.ndarray | None, serve_ranks: int | None = 2) -> Path:
    np.save(tmp_path / "base.npy", BASE)
    path = None
    if sample is not None:
        path = tmp_path / "sample.npy"
        np.save(path, sample)
    options = BuildOptions(
        nlist=32, nshards=4, metric=Metric.L2, dtype="float32", local_kind="hnsw",
        query_sample=path, serve_ranks=serve_ranks,
    )  # fmt: skip
    build_index(tmp_path / "base.npy", tmp_path / "index", options)
    return tmp_path / "index"


def test_a_balanced_build_records_what_it_did_and_answers_exactly(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    sample = BASE[rng.choice(600, 500)] + 0.01  # queries crowding the first rows' topics
    index_dir = build(tmp_path, sample)
    record = json.loads((index_dir / "manifest.json").read_text())["build"]["query_balance"]
    assert record["queries"] == 500 and record["serve_ranks"] == 2
    before, after = record["busiest_rank_searches"]
    assert after < before and record["lists_moved"] > 0
    result = DistributedIndex.open(index_dir).search(QUERIES, k=10, nprobe=32, ef=1024)
    distances, ids = reference.search(reference.exact(BASE, Metric.L2), QUERIES, 10, Metric.L2)
    assert_same_neighbours(result.ids, result.distances, ids, distances)


def test_a_large_sample_is_drawn_down_to_what_the_grouping_needs(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    sample = BASE[rng.integers(0, 600, MAX_QUERY_SAMPLE + 5000)] + 0.01
    index_dir = build(tmp_path, sample)
    record = json.loads((index_dir / "manifest.json").read_text())["build"]["query_balance"]
    assert record["queries"] == MAX_QUERY_SAMPLE


@pytest.mark.parametrize(
    ("sample", "serve_ranks", "message"),
    [
        (BASE[:500], None, "this build's 1 rank leaves nothing to spread: give --serve-ranks"),
        (BASE[:500], 0, "--serve-ranks 0 leaves nothing to spread"),
        (BASE[:500], 5, "--serve-ranks 5: more ranks than the 4 shards"),
        (None, 2, "give both"),
        (BASE[:500, :8], 2, "dimension 8 does not match"),
        (np.where(np.arange(32) == 3, np.nan, BASE[:500]), 2, "row 0 holds NaN"),
        (BASE[:50], 2, "50 sample queries are too few"),
    ],
)
def test_a_bad_query_sample_is_refused_before_any_work(
    tmp_path: Path, sample: np.ndarray | None, serve_ranks: int | None, message: str
) -> None:
    with pytest.raises(HpcragError, match=re.escape(message)):
        build(tmp_path, sample, serve_ranks)
    assert not (tmp_path / "index").exists()


def test_the_cli_builds_with_a_query_sample_and_names_a_missing_file(tmp_path: Path) -> None:
    np.save(tmp_path / "base.npy", BASE)
    np.save(tmp_path / "log.npy", BASE[:400] + 0.01)
    common = [
        "index",
        "build",
        str(tmp_path / "base.npy"),
        "--nlist",
        "32",
        "--shards",
        "4",
        "--metric",
        "l2",
    ]
    missing = CliRunner().invoke(cli, [*common, "--out", str(tmp_path / "a"), "--query-sample",
                                       str(tmp_path / "nope.npy"), "--serve-ranks", "2"])  # fmt: skip
    assert missing.exit_code != 0 and "--query-sample" in missing.output and "no such file" in missing.output
    folder = CliRunner().invoke(
        cli, [*common, "--out", str(tmp_path / "a"), "--query-sample", str(tmp_path), "--serve-ranks", "2"]
    )
    assert folder.exit_code != 0 and f"--query-sample {tmp_path}: a directory" in folder.output
    assert not (tmp_path / "a").exists()
    done = CliRunner().invoke(cli, [*common, "--out", str(tmp_path / "b"), "--query-sample",
                                    str(tmp_path / "log.npy"), "--serve-ranks", "2"])  # fmt: skip
    assert done.exit_code == 0, done.output
    assert "sample queries over 2 ranks" in done.output
    record = json.loads((tmp_path / "b" / "manifest.json").read_text())["build"]["query_balance"]
    shown = CliRunner().invoke(cli, ["index", "info", str(tmp_path / "b")])
    assert shown.exit_code == 0, shown.output
    assert (
        f"grouped for 2 serving ranks from 400 sample queries (--query-sample): per query, the busiest rank "
        f"searches {record['busiest_rank_searches'][1]:.2f} shards" in shown.output
    )
