"""The distributed search under real mpirun with 1 to 4 ranks (odd counts too), all metrics.

The invariants hold at every rank count: equal to faiss IndexIVFFlat with the index's centroids,
equal to brute force with nprobe = nlist; and a build by R ranks writes the same index as one process.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from hpcrag.search import BuildOptions, Metric, build_index, reference
from hpcrag.search.synthetic import clustered
from hpcrag.slurm.command import CommandError
from tests.integration.helpers import mpirun
from tests.integration.mpi_search_driver import CASES, SEARCHES
from tests.search_helpers import assert_same_neighbours, centroids_of


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mpi search")
    base, queries = clustered(3000, 40, 24, clusters=12, spread=0.5, seed=17)
    np.save(root / "base.npy", base)
    np.save(root / "queries.npy", queries)
    np.save(root / "dups.npy", np.repeat(base[:3], 50, axis=0))
    for ranks in (1, 2, 3, 4):
        mpirun(ranks, sys.executable, "-m", "tests.integration.mpi_search_driver", str(root))
    return root


@pytest.mark.parametrize("ranks", [1, 2, 3, 4])
@pytest.mark.parametrize("case", list(CASES))
def test_invariants_at_every_rank_count(workdir: Path, ranks: int, case: str) -> None:
    source, metric_name = CASES[case]
    metric = Metric(metric_name)
    base, queries = np.load(workdir / source), np.load(workdir / "queries.npy")
    index_dir = workdir / f"r{ranks}" / case
    ivf = reference.ivf_flat(base, centroids_of(index_dir), metric)
    for k, nprobe in SEARCHES:
        found = np.load(workdir / f"r{ranks}" / f"{case}-k{k}-p{nprobe}.npz")
        distances, ids = reference.search(ivf, queries, k, metric, nprobe)
        assert_same_neighbours(found["ids"], found["distances"], ids, distances)
        if nprobe == 16:
            distances, ids = reference.search(reference.exact(base, metric), queries, k, metric)
            assert_same_neighbours(found["ids"], found["distances"], ids, distances)
    if case == "dups":
        shard_sizes = [s["ntotal"] for s in json.loads((index_dir / "manifest.json").read_text())["shards"]]
        assert 0 in shard_sizes


@pytest.mark.parametrize("ranks", [2, 3, 4])
def test_routing_split_over_ranks_equals_one_process_for_any_batch_size(workdir: Path, ranks: int) -> None:
    nq = len(np.load(workdir / "queries.npy"))
    for case in CASES:
        whole = np.load(workdir / "r1" / f"{case}-routed{nq}.npz")
        assert (whole["touched"] <= 2).all() and whole["touched"].min() >= 1
        for size in (1, 2, nq):
            found = np.load(workdir / f"r{ranks}" / f"{case}-routed{size}.npz")
            np.testing.assert_array_equal(found["ids"], whole["ids"][:size])
            np.testing.assert_array_equal(found["touched"], whole["touched"][:size])


@pytest.mark.parametrize("ranks", [2, 3, 4])
def test_a_build_by_r_ranks_equals_the_one_process_build(workdir: Path, ranks: int) -> None:
    for case in CASES:
        one = json.loads((workdir / "r1" / case / "manifest.json").read_text())
        many = json.loads((workdir / f"r{ranks}" / case / "manifest.json").read_text())
        assert many["shards"] == one["shards"] and many["centroids"] == one["centroids"]
        assert many["build"]["ranks"] == ranks


def test_cli_under_mpirun_matches_the_api(workdir: Path) -> None:
    index_dir = workdir / "r2" / "l2"
    out = workdir / "cli result.npz"
    summary = mpirun(
        3, sys.executable, "-m", "hpcrag", "index", "search", str(index_dir),
        "--queries", str(workdir / "queries.npy"), "--k", "10", "--nprobe", "3", "--out", str(out),
    )  # fmt: skip
    assert summary.count("40 queries, k=10, nprobe=3") == 1, summary
    assert "on 3 rank(s)" in summary
    api = np.load(workdir / "r2" / "l2-k10-p3.npz")
    np.testing.assert_array_equal(np.load(out)["ids"], api["ids"])


def test_more_ranks_than_shards_is_one_clear_error(workdir: Path) -> None:
    with pytest.raises(CommandError) as failure:
        mpirun(
            5, sys.executable, "-m", "hpcrag", "index", "search", str(workdir / "r1" / "ip"),
            "--queries", str(workdir / "queries.npy"), "--out", str(workdir / "never.npz"),
        )  # fmt: skip
    message = "error: 5 ranks but the index in"
    assert failure.value.stderr.count(message) == 1, failure.value.stderr
    assert "has 4 shards: run at most 4 ranks (-n 4)" in failure.value.stderr
    assert not (workdir / "never.npz").exists()


@pytest.mark.parametrize("kind", ["hnsw", "ivf-pq"])
def test_local_kinds_built_and_searched_by_ranks_equal_one_process(workdir: Path, kind: str) -> None:
    """Each rank builds and searches its own shards' graphs or codes: the answers are the one process's."""
    results = {}
    for ranks in (1, 3):
        index_dir = workdir / f"{kind}-r{ranks}"
        mpirun(
            ranks, sys.executable, "-m", "hpcrag", "index", "build", str(workdir / "base.npy"),
            "--out", str(index_dir), "--nlist", "16", "--shards", "4", "--local", kind,
        )  # fmt: skip
        out = workdir / f"{kind}-r{ranks}.npz"
        summary = mpirun(
            ranks, sys.executable, "-m", "hpcrag", "index", "search", str(index_dir),
            "--queries", str(workdir / "queries.npy"), "--k", "10", "--nprobe", "6", "--max-shards", "2",
            "--out", str(out),
        )  # fmt: skip
        assert f"on {ranks} rank(s)" in summary
        touched = float(summary.split("mean shards touched ")[1].split()[0])
        assert 1.0 <= touched <= 2.0
        results[ranks] = np.load(out)
    one = json.loads((workdir / f"{kind}-r1" / "manifest.json").read_text())
    many = json.loads((workdir / f"{kind}-r3" / "manifest.json").read_text())
    assert many["local"] == one["local"] and many["local"]["kind"] == kind
    np.testing.assert_array_equal(results[3]["ids"], results[1]["ids"])
    np.testing.assert_allclose(results[3]["distances"], results[1]["distances"], rtol=1e-6)


@pytest.mark.parametrize("kind", ["ivf-flat", "hnsw"])
def test_replicated_build_by_ranks_keeps_each_id_once_and_equals_exact(workdir: Path, kind: str) -> None:
    """Copies of boundary vectors sit on other ranks: the top-k reduction across ranks keeps each id once."""
    base, queries = np.load(workdir / "base.npy"), np.load(workdir / "queries.npy")
    distances, expected = reference.search(reference.exact(base, Metric.IP), queries, 10, Metric.IP)
    results, manifests = {}, {}
    for ranks in (1, 3):
        index_dir = workdir / f"replicated-{kind}-r{ranks}"
        mpirun(
            ranks, sys.executable, "-m", "hpcrag", "index", "build", str(workdir / "base.npy"),
            "--out", str(index_dir), "--nlist", "16", "--shards", "4", "--local", kind, "--replicate", "0.4",
            "--dtype", "float32",
        )  # fmt: skip
        manifests[ranks] = json.loads((index_dir / "manifest.json").read_text())
        out = workdir / f"replicated-{kind}-r{ranks}.npz"
        mpirun(
            ranks, sys.executable, "-m", "hpcrag", "index", "search", str(index_dir),
            "--queries", str(workdir / "queries.npy"), "--k", "10", "--nprobe", "16", "--out", str(out),
            *(["--ef", "1024"] if kind == "hnsw" else []),
        )  # fmt: skip
        results[ranks] = np.load(out)
        assert_same_neighbours(results[ranks]["ids"], results[ranks]["distances"], expected, distances)
        for row in results[ranks]["ids"]:
            assert np.unique(row).size == row.size
    assert manifests[3]["replicas"] == manifests[1]["replicas"] > 0.3 * len(base)
    assert manifests[3]["format_version"] == 3
    np.testing.assert_array_equal(results[3]["ids"], results[1]["ids"])


def test_a_query_balanced_build_by_ranks_equals_one_process_serving_as_many_and_answers_exactly(
    workdir: Path,
) -> None:
    """`--query-sample` regroups the lists on rank 0 for the ranks that will serve: a build by 2 ranks
    and one by 1 process told `--serve-ranks 2` group alike, and 2 ranks answer exactly at full effort."""
    base, queries = np.load(workdir / "base.npy"), np.load(workdir / "queries.npy")
    crowd = base[np.argsort(-(base @ base[0]))[:400]] + 0.01  # sample queries crowding one region
    np.save(workdir / "crowd.npy", crowd.astype(np.float32))
    manifests = {}
    for ranks, extra in ((2, []), (1, ["--serve-ranks", "2"])):
        index_dir = workdir / f"balanced-r{ranks}"
        mpirun(
            ranks, sys.executable, "-m", "hpcrag", "index", "build", str(workdir / "base.npy"),
            "--out", str(index_dir), "--nlist", "16", "--shards", "4", "--local", "hnsw",
            "--dtype", "float32", "--query-sample", str(workdir / "crowd.npy"), *extra,
        )  # fmt: skip
        manifests[ranks] = json.loads((index_dir / "manifest.json").read_text())
    assert manifests[2]["list_shard"] == manifests[1]["list_shard"]
    record = manifests[2]["build"]["query_balance"]
    before, after = record["busiest_rank_searches"]
    assert record["queries"] == 400 and record["serve_ranks"] == 2 and after < before
    out = workdir / "balanced.npz"
    mpirun(
        2, sys.executable, "-m", "hpcrag", "index", "search", str(workdir / "balanced-r2"),
        "--queries", str(workdir / "queries.npy"), "--k", "10", "--nprobe", "16", "--ef", "1024",
        "--out", str(out),
    )  # fmt: skip
    distances, expected = reference.search(reference.exact(base, Metric.IP), queries, 10, Metric.IP)
    found = np.load(out)
    assert_same_neighbours(found["ids"], found["distances"], expected, distances)


def test_a_search_failing_on_one_rank_is_raised_on_every_rank_which_then_serve_on(tmp_path: Path) -> None:
    """Rank 1's routing, scan or (exact search) reading of its rows raises: rank 0 raises an error
    naming rank 1 rather than waiting forever in a collective, SPMD ranks raise it too, a following
    rank serves on, and the next search answers exactly."""
    base, queries = clustered(1200, 20, 16, clusters=8, spread=0.5, seed=3)
    np.save(tmp_path / "queries.npy", queries)
    options = BuildOptions(nlist=16, nshards=2, metric=Metric.L2, dtype="float32")
    np.save(tmp_path / "base.npy", base)
    build_index(tmp_path / "base.npy", tmp_path / "index", options)
    mpirun(2, sys.executable, "-m", "tests.integration.mpi_failure_driver", str(tmp_path))
    scan_failed = "search failed on rank 1 of 2: MemoryError: cannot allocate the scan's buffers"
    route_failed = "search failed on rank 1 of 2: RuntimeError: faiss: invalid argument"
    read_failed = "search failed on rank 1 of 2: OSError: cannot read a delta segment"
    rank0, rank1 = (json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1))
    assert rank0["errors"] == [scan_failed, read_failed, route_failed, scan_failed]
    assert rank1 == {"errors": [scan_failed, read_failed], "followed to the end": True}
    exact = reference.search(reference.exact(base, Metric.L2), queries, 5, Metric.L2)[1]
    for answer in ("spmd.npy", "exact.npy", "served.npy"):
        np.testing.assert_array_equal(np.load(tmp_path / answer), exact)
