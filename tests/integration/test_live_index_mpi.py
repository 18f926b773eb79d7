"""Updates under real mpirun with 1 to 4 ranks: after a stream of adds, deletes (a whole list among
them), upserts with repeated ids and re-added ids, the search equals faiss IVF-Flat built with the
index's centroids over the surviving vectors, and brute force at nprobe = nlist; a filter's ivf and
exact strategies equal their references; and the index reopened (the log replayed) answers the same.
On a build with `--replicate`, whose added rows get copies on other ranks' shards, every vector is
counted and answered once, and a query held to one shard answers the same at every rank count."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from hpcrag.search import Metric, reference
from hpcrag.search.synthetic import clustered
from tests.integration.helpers import mpirun
from tests.integration.mpi_update_driver import FILTER, SEARCHES, plan, survivors
from tests.search_helpers import assert_same_neighbours, centroids_of

METRICS = ("ip", "l2")
RANKS = (1, 2, 3, 4)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mpi updates")
    base, queries = clustered(2000, 30, 16, clusters=10, spread=0.5, seed=23)
    np.save(root / "base.npy", base)
    np.save(root / "queries.npy", queries)
    for metric in METRICS:
        for ranks in RANKS:
            mpirun(ranks, sys.executable, "-m", "tests.integration.mpi_update_driver", str(root), metric)
    return root


REPLICATED_RANKS = (1, 3)


@pytest.fixture(scope="module")
def replicated(workdir: Path) -> Path:
    for ranks in REPLICATED_RANKS:
        mpirun(ranks, sys.executable, "-m", "tests.integration.mpi_update_driver", str(workdir), "ip", "0.4")
    return workdir


def test_updates_to_a_replicated_index_copy_rows_across_ranks_and_count_each_once(replicated: Path) -> None:
    base, queries = np.load(replicated / "base.npy"), np.load(replicated / "queries.npy")
    found = {}
    for ranks in REPLICATED_RANKS:
        out = replicated / f"r{ranks}-ip-replicated"
        found[ranks] = result = np.load(out / "results.npz")
        model = survivors(base, plan(base, centroids_of(out / "index"), Metric.IP))
        ids = np.array(sorted(model), dtype=np.int64)
        vectors = np.stack([model[i][0] for i in ids]).astype(np.float32)
        exact = reference.exact(vectors, Metric.IP, ids)
        distances, expected = reference.search(exact, queries, 10, Metric.IP)
        assert int(result["ntotal"]) == len(model), ranks
        assert_same_neighbours(result["k10-p16-ids"], result["k10-p16-distances"], expected, distances)
        for row in np.concatenate([result["k10-p16-ids"], result["held-ids"]]):
            assert np.unique(row[row >= 0]).size == (row >= 0).sum()
    one, many = (found[ranks] for ranks in REPLICATED_RANKS)
    assert_same_neighbours(many["held-ids"], many["held-distances"], one["held-ids"], one["held-distances"])


@pytest.mark.parametrize("ranks", RANKS)
@pytest.mark.parametrize("metric_name", METRICS)
def test_updates_keep_both_invariants_at_every_rank_count(
    workdir: Path, ranks: int, metric_name: str
) -> None:
    metric = Metric(metric_name)
    base, queries = np.load(workdir / "base.npy"), np.load(workdir / "queries.npy")
    out = workdir / f"r{ranks}-{metric_name}"
    centroids = centroids_of(out / "index")
    model = survivors(base, plan(base, centroids, metric))
    ids = np.array(sorted(model), dtype=np.int64)
    vectors = np.stack([model[i][0] for i in ids]).astype(np.float32)
    found = np.load(out / "results.npz")
    assert list(found["seqs"]) == [1, 2, 3, 4, 5]
    assert int(found["ntotal"]) == len(model)

    ivf = reference.ivf_flat(vectors, centroids, metric, ids)
    for k, nprobe in SEARCHES:
        distances, expected = reference.search(ivf, queries, k, metric, nprobe)
        assert_same_neighbours(
            found[f"k{k}-p{nprobe}-ids"], found[f"k{k}-p{nprobe}-distances"], expected, distances
        )
        if nprobe == 16:
            exact = reference.exact(vectors, metric, ids)
            distances, expected = reference.search(exact, queries, k, metric)
            assert_same_neighbours(
                found[f"k{k}-p{nprobe}-ids"], found[f"k{k}-p{nprobe}-distances"], expected, distances
            )
    distances, expected = reference.search(ivf, queries, 10, metric, 3)
    assert_same_neighbours(found["reopened-ids"], found["k10-p3-distances"], expected, distances)

    matching = np.array([model[i][1] is not None and model[i][1] < FILTER["bucket"]["lt"] for i in ids])
    only = (vectors[matching], ids[matching])
    distances, expected = reference.search(
        reference.ivf_flat(*only[:1], centroids, metric, only[1]), queries, 10, metric, 3
    )
    assert_same_neighbours(found["ivf-ids"], found["ivf-distances"], expected, distances)
    distances, expected = reference.search(reference.exact(only[0], metric, only[1]), queries, 10, metric)
    assert_same_neighbours(found["exact-ids"], found["exact-distances"], expected, distances)


def test_the_update_commands_under_mpirun(tmp_path: Path) -> None:
    base, _ = clustered(1200, 5, 16, clusters=6, seed=3)
    np.save(tmp_path / "base.npy", base)
    hpcrag = [sys.executable, "-m", "hpcrag", "index"]
    index = str(tmp_path / "index")
    mpirun(2, *hpcrag, "build", str(tmp_path / "base.npy"), "--out", index, "--nlist", "8", "--shards", "2")
    new = (base[:50] + 0.05).astype(np.float32)
    np.save(tmp_path / "new.npy", new)
    np.save(tmp_path / "ids.npy", np.arange(5000, 5050))
    (tmp_path / "attributes.jsonl").write_text("".join(f'{{"team": "t{i % 2}"}}\n' for i in range(50)))
    out = mpirun(
        2, *hpcrag, "upsert", index, "--vectors", str(tmp_path / "new.npy"),
        "--ids", str(tmp_path / "ids.npy"), "--attributes", str(tmp_path / "attributes.jsonl"),
    )  # fmt: skip
    assert "upsert: 50 new and 0 replaced vectors" in out and "declared team:str" in out and "#1" in out
    out = mpirun(2, *hpcrag, "delete", index, "--id", "5000", "--id", "5001", "--id", "99999")
    assert "deleted 2 vectors" in out and "1 ids were not in the index (99999)" in out
    np.save(tmp_path / "q.npy", new[2:4])
    out = mpirun(
        2, *hpcrag, "search", index, "--queries", str(tmp_path / "q.npy"), "--k", "1", "--nprobe", "8",
        "--out", str(tmp_path / "r.npz"), "--filter", "team=t0",
    )  # fmt: skip
    assert 'filter team = "t0", exact scan' in out
    found = np.load(tmp_path / "r.npz")["ids"][:, 0]
    assert found[0] == 5002 and found[1] in range(5002, 5050, 2), "only live rows of team t0"
