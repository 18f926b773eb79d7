"""Shard-local kinds (hnsw, ivf-pq; cagra is in tests/gpu) and shard selection, in one process:
each kind's invariant, persistence and damage, and every refusal before any work."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from hpcrag.cli.main import cli
from hpcrag.errors import HpcragError
from hpcrag.search import DistributedIndex, Metric, reference
from hpcrag.search.build import BuildOptions, build_index
from hpcrag.search.grouping import shards_touched
from hpcrag.search.layout import IndexFormatError, read_manifest
from hpcrag.search.router import select_shards
from hpcrag.search.synthetic import clustered
from tests.search_helpers import assert_same_neighbours

BASE, QUERIES = clustered(3000, 40, 32, clusters=12, spread=0.5, seed=5, topics=4)


def build(
    tmp_path: Path, kind: str, metric: str = "ip", name: str = "index", dtype: str = "float32", **params
) -> Path:
    source = tmp_path / "base.npy"
    np.save(source, BASE)
    out = tmp_path / name
    options = BuildOptions(
        nlist=32, nshards=4, metric=Metric(metric), dtype=dtype, local_kind=kind, local_params=params
    )
    build_index(source, out, options)
    return out


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return reference.recall_at(found, truth, found.shape[1])


def test_select_shards_keeps_the_best_ranked_shards_of_each_query() -> None:
    list_shard = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    probes = np.array([[2, 4, 0, 6, 3, 1], [7, 6, 5, 4, 3, 2], [-1, 0, 1, -1, -1, -1]])
    # Row 0 reaches shards 1, 2, 0, 3 in that order; row 1: 3, 2, 1; row 2 only shard 0.
    assert select_shards(probes, list_shard, 1).tolist() == [
        [2, -1, -1, -1, 3, -1],
        [7, 6, -1, -1, -1, -1],
        [-1, 0, 1, -1, -1, -1],
    ]
    assert select_shards(probes, list_shard, 2).tolist() == [
        [2, 4, -1, -1, 3, -1],
        [7, 6, 5, 4, -1, -1],
        [-1, 0, 1, -1, -1, -1],
    ]
    assert select_shards(probes, list_shard, 4).tolist() == probes.tolist()
    assert shards_touched(select_shards(probes, list_shard, 2), list_shard).tolist() == [2, 2, 1]
    assert shards_touched(np.array([[-1, -1], [3, -1]]), list_shard).tolist() == [0, 1]


def test_a_shard_margin_keeps_only_shards_nearly_as_near_as_the_nearest() -> None:
    list_shard = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    probes = np.array([[2, 4, 0, 6, 3, 1], [1, 2, 4, 6, -1, -1]])
    keys = np.array([[0.10, 0.12, 0.20, 0.30, 0.31, 0.4], [0.0, 0.1, 0.2, 0.3, 0.0, 0.0]], dtype=np.float32)
    # Row 0's shards come nearest first at keys 0.10 (shard 1), 0.12 (2), 0.20 (0), 0.30 (3).
    assert select_shards(probes, list_shard, None, keys, 0.25)[0].tolist() == [2, 4, -1, -1, 3, -1]
    assert select_shards(probes, list_shard, 1, keys, 0.25)[0].tolist() == [2, -1, -1, -1, 3, -1]
    assert select_shards(probes, list_shard, None, keys, 1.0)[0].tolist() == [2, 4, 0, -1, 3, 1]
    # A query sitting on a centroid (key 0) has no scale: only its best shard.
    assert select_shards(probes, list_shard, None, keys, 5.0)[1].tolist() == [1, -1, -1, -1, -1, -1]


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_max_shards_scans_only_the_probed_lists_of_the_chosen_shards(tmp_path: Path, metric: str) -> None:
    index_dir = build(tmp_path, "ivf-flat", metric)
    opened = DistributedIndex.open(index_dir)
    manifest = read_manifest(index_dir)
    result = opened.search(QUERIES, k=10, nprobe=8, max_shards=1)
    assert (result.shards_touched == 1).all()
    assert result.mean_shards_touched == 1.0
    # The same as brute force over the rows of each query's best shard's probed lists.
    centroids = np.load(index_dir / "centroids.npy")
    probes = reference.search(reference.exact(centroids, Metric(metric)), QUERIES, 8, Metric(metric))[1]
    kept = select_shards(probes, np.asarray(manifest.list_shard), 1)
    lists = reference.search(reference.exact(centroids, Metric(metric)), BASE, 1, Metric(metric))[1][:, 0]
    for row in range(len(QUERIES)):
        rows = np.flatnonzero(np.isin(lists, kept[row][kept[row] >= 0]))
        exact = reference.exact(BASE[rows], Metric(metric), ids=rows.astype(np.int64))
        distances, ids = reference.search(exact, QUERIES[row : row + 1], 10, Metric(metric))
        assert_same_neighbours(result.ids[row : row + 1], result.distances[row : row + 1], ids, distances)
    adaptive = opened.search(QUERIES, k=10, nprobe=8, max_shards=2, shard_margin=0.2)
    assert (adaptive.shards_touched >= 1).all() and (adaptive.shards_touched <= 2).all()
    capped = opened.search(QUERIES, k=10, nprobe=8, max_shards=2)
    assert adaptive.mean_shards_touched < capped.mean_shards_touched
    whole = opened.search(QUERIES, k=10, nprobe=8, max_shards=4)
    plain = opened.search(QUERIES, k=10, nprobe=8)
    np.testing.assert_array_equal(whole.ids, plain.ids)


@pytest.mark.parametrize("metric", ["ip", "l2", "cosine"])
def test_hnsw_at_its_highest_effort_equals_exact_search(tmp_path: Path, metric: str) -> None:
    index_dir = build(tmp_path, "hnsw", metric)
    result = DistributedIndex.open(index_dir).search(QUERIES, k=10, nprobe=32, ef=1024)
    distances, ids = reference.search(reference.exact(BASE, Metric(metric)), QUERIES, 10, Metric(metric))
    assert_same_neighbours(result.ids, result.distances, ids, distances)
    assert (result.shards_touched == 4).all()


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_a_float16_index_keeps_its_graph_rows_as_stored_and_stays_exact(tmp_path: Path, metric: str) -> None:
    import faiss

    from hpcrag.search.graph_entries import graph_rows

    index_dir = build(tmp_path, "hnsw", metric, dtype="float16")
    for shard in read_manifest(index_dir).shards:
        folder = index_dir / f"shard-{shard.shard:04d}"
        graph = faiss.read_index(str(folder / "hnsw.faiss"))
        assert isinstance(graph, faiss.IndexHNSWSQ)  # half the bytes of a float32 copy
        rows = graph_rows(graph)
        assert rows.dtype == np.float16
        np.testing.assert_array_equal(rows, np.load(folder / "vectors.npy"))
    result = DistributedIndex.open(index_dir).search(QUERIES, k=10, nprobe=32, ef=1024)
    stored = BASE.astype(np.float16).astype(np.float32)  # what a float16 index searches
    distances, ids = reference.search(reference.exact(stored, Metric(metric)), QUERIES, 10, Metric(metric))
    assert_same_neighbours(result.ids, result.distances, ids, distances)
    float32 = faiss.read_index(str(build(tmp_path, "hnsw", metric, name="f32") / "shard-0000" / "hnsw.faiss"))
    assert isinstance(float32, faiss.IndexHNSWFlat) and graph_rows(float32).dtype == np.float32


def test_hnsw_routing_cuts_fan_out_and_effort_trades_recall(tmp_path: Path) -> None:
    index_dir = build(tmp_path, "hnsw", M=16, ef_construction=32)
    opened = DistributedIndex.open(index_dir)
    truth = reference.search(reference.exact(BASE, Metric.IP), QUERIES, 10, Metric.IP)[1]
    narrow = opened.search(QUERIES, k=10, nprobe=8, max_shards=1, ef=16)
    wide = opened.search(QUERIES, k=10, nprobe=32, ef=256)
    assert (narrow.shards_touched == 1).all() and (wide.shards_touched == 4).all()
    assert recall(wide.ids, truth) >= 0.99
    assert recall(narrow.ids, truth) <= recall(wide.ids, truth)
    manifest = read_manifest(index_dir)
    assert manifest.local == {"kind": "hnsw", "M": 16, "ef_construction": 32}
    assert all("hnsw.faiss" in shard.files for shard in manifest.shards)


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_ivf_pq_with_refine_matches_ivf_flat_recall(tmp_path: Path, metric: str) -> None:
    flat = DistributedIndex.open(build(tmp_path, "ivf-flat", metric, name="flat"))
    pq = DistributedIndex.open(build(tmp_path, "ivf-pq", metric, name="pq", pq_m=8))
    truth = reference.search(reference.exact(BASE, Metric(metric)), QUERIES, 10, Metric(metric))[1]
    for nprobe in (4, 8):
        exact_lists = flat.search(QUERIES, k=10, nprobe=nprobe)
        coded = pq.search(QUERIES, k=10, nprobe=nprobe, refine=10)
        assert abs(recall(coded.ids, truth) - recall(exact_lists.ids, truth)) <= 0.01
        # Re-ranked against the full vectors: the distances of what it returns are exact.
        exact = reference.exact(BASE, Metric(metric))
        rescored = np.array([[exact.reconstruct(int(i)) for i in row] for row in coded.ids])
        scores = np.einsum("qd,qkd->qk", QUERIES, rescored)
        if metric == "l2":
            scores = ((QUERIES[:, None, :] - rescored) ** 2).sum(axis=2)
        np.testing.assert_allclose(coded.distances, scores, rtol=1e-4, atol=1e-4)
    assert read_manifest(pq.root).local == {"kind": "ivf-pq", "pq_m": 8, "nbits": 8}


@pytest.mark.parametrize(
    ("kind", "params", "message"),
    [
        ("flat", {}, "unknown local index kind 'flat'; use one of: ivf-flat, hnsw, cagra, ivf-pq"),
        ("cagra", {}, "--local cagra needs a GPU with cuVS, and no CUDA GPU is in use here"),
        ("ivf-pq", {"pq_m": 10}, "ivf-pq: --pq-m 10 does not divide the dimension 32"),
        ("ivf-pq", {"nbits": 4}, "ivf-pq: nbits 4 is not supported; use 8"),
        ("hnsw", {"M": 2}, "--local hnsw: --hnsw-m must be an integer in [4, 256], got 2"),
        (
            "hnsw",
            {"M": 64, "ef_construction": 40},
            "--local hnsw: --ef-construction must be an integer in [64,",
        ),
        ("ivf-pq", {"pq_m": 0}, "--local ivf-pq: --pq-m must be an integer in [1, 32], got 0"),
        ("hnsw", {"pq_m": 8}, "--local hnsw takes no parameter ['pq_m']; its parameters: M, ef_construction"),
    ],
)
def test_bad_kinds_are_refused_before_any_work(tmp_path: Path, kind: str, params: dict, message: str) -> None:
    with pytest.raises(HpcragError) as info:
        build(tmp_path, kind, **params)
    assert str(info.value).startswith(message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.npy"]  # nothing half-built


def test_a_graph_index_refuses_knobs_of_other_kinds(tmp_path: Path) -> None:
    opened = DistributedIndex.open(build(tmp_path, "hnsw"))
    with pytest.raises(HpcragError, match="--refine re-ranks ivf-pq candidates; this index is hnsw"):
        opened.search(QUERIES, k=5, refine=4)
    with pytest.raises(HpcragError, match=r"--shard-margin must be a number in \[0, 100\]"):
        opened.search(QUERIES, k=5, shard_margin=-0.1)
    with pytest.raises(HpcragError, match="--strategy exact scans every matching row of every shard"):
        DistributedIndex.open(build(tmp_path, "ivf-flat", name="exact")).search(
            QUERIES, k=5, strategy="exact", max_shards=1
        )
    with pytest.raises(HpcragError, match=r"--ef must be an integer in \[1, 4096\], got 64.5"):
        opened.search(QUERIES, k=5, ef=64.5)
    for bad in (0, 5, 1.5):
        with pytest.raises(HpcragError, match=r"--max-shards must be in \[1, 4\]"):
            opened.search(QUERIES, k=5, max_shards=bad)
    assert opened.search(QUERIES, k=5, nprobe=4).ids.shape == (40, 5)  # still serving
    flat = DistributedIndex.open(build(tmp_path, "ivf-flat", name="flat"))
    with pytest.raises(HpcragError, match="--ef sets the graph search effort of hnsw and cagra"):
        flat.search(QUERIES, k=5, ef=32)
    with pytest.raises(HpcragError, match="--scan-backend matmul scans ivf-flat lists"):
        DistributedIndex.open(opened.root, scan_backend="matmul")


def test_a_damaged_or_missing_shard_index_is_named(tmp_path: Path) -> None:
    index_dir = build(tmp_path, "hnsw")
    graph = index_dir / "shard-0002" / "hnsw.faiss"
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF
    graph.write_bytes(bytes(data))
    with pytest.raises(IndexFormatError, match=f"{graph} is damaged: its checksum differs"):
        DistributedIndex.open(index_dir)
    graph.unlink()
    with pytest.raises(IndexFormatError, match=f"{graph} is missing"):
        DistributedIndex.open(index_dir)
    manifest = json.loads((index_dir / "manifest.json").read_text())
    manifest["local"] = {"kind": "annoy"}
    (index_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexFormatError, match="unknown local index kind 'annoy'"):
        DistributedIndex.open(index_dir)


def test_cli_builds_reports_and_searches_a_local_kind(tmp_path: Path) -> None:
    np.save(tmp_path / "base.npy", BASE)
    np.save(tmp_path / "queries.npy", QUERIES)
    runner = CliRunner()
    index_dir = tmp_path / "idx"
    built = runner.invoke(
        cli, ["index", "build", str(tmp_path / "base.npy"), "--out", str(index_dir), "--nlist", "32",
              "--shards", "4", "--local", "hnsw", "--hnsw-m", "16"],
    )  # fmt: skip
    assert built.exit_code == 0, built.output
    assert "32 lists, 4 shards (" in built.output and ") searched with hnsw in " in built.output
    info = runner.invoke(cli, ["index", "info", str(index_dir)])
    assert "shards search with hnsw (M 16, ef_construction 40): " in info.output
    sizes = json.loads(runner.invoke(cli, ["index", "info", str(index_dir), "--json"]).output)["local"]
    on_disk = sum(f.stat().st_size for f in index_dir.glob("shard-*/*"))
    assert sizes["bytes_per_vector"]["disk"] == pytest.approx(on_disk / len(BASE))  # every file counted
    graphs = sum(f.stat().st_size for f in index_dir.glob("shard-*/hnsw.faiss"))
    assert sizes["bytes_per_vector"]["memory"] == pytest.approx(graphs / len(BASE) + 8)  # the graphs + ids
    model = 32 * 2 + 2 * 16 * 4 * 1.1 + 8  # float16 rows, level-0 links, 10% for the levels above, an id
    assert sizes["bytes_per_vector"]["memory"] == pytest.approx(model, rel=0.1)
    found = runner.invoke(
        cli, ["index", "search", str(index_dir), "--queries", str(tmp_path / "queries.npy"), "--nprobe", "8",
              "--max-shards", "2", "--ef", "32", "--out", str(tmp_path / "r.npz")],
    )  # fmt: skip
    assert found.exit_code == 0, found.output
    assert "mean shards touched" in found.output
    touched = float(found.output.split("mean shards touched ")[1].split()[0])
    assert 1.0 <= touched <= 2.0
    assert np.load(tmp_path / "r.npz")["ids"].shape == (40, 10)
    wrong = runner.invoke(
        cli, ["index", "build", str(tmp_path / "base.npy"), "--out", str(tmp_path / "x"), "--nlist", "32",
              "--shards", "4", "--pq-m", "8"],
    )  # fmt: skip
    assert wrong.exit_code != 0 and "--pq-m applies to --local ivf-pq, not --local ivf-flat" in wrong.output


def test_the_service_searches_with_its_routing_and_refuses_a_bad_one(tmp_path: Path) -> None:
    from hpcrag.search.service import SearchService, ServiceOptions
    from tests.unit.search.service_helpers import client, running_service

    index_dir = build(tmp_path, "hnsw")
    routing = {"max_shards": 1, "shard_margin": None, "ef": 32, "refine": None}
    with running_service(index_dir, ServiceOptions(port=0, routing=routing)) as (service, _):
        answer = client(service).post("/search", json={"queries": QUERIES[:8].tolist(), "k": 5, "nprobe": 8})
    assert answer.status_code == 200, answer.text
    direct = DistributedIndex.open(index_dir).search(QUERIES[:8], k=5, nprobe=8, max_shards=1, ef=32)
    assert answer.json()["ids"] == direct.ids.tolist()
    with pytest.raises(HpcragError, match="--refine re-ranks ivf-pq candidates; this index is hnsw"):
        SearchService(DistributedIndex.open(index_dir), ServiceOptions(port=0, routing={"refine": 5}))


def test_defaults_follow_the_parameters_given_and_small_pq_builds_are_refused(
    tmp_path: Path,
) -> None:
    wide = build(tmp_path, "hnsw", name="wide", M=64)  # the default build effort rises to M
    assert read_manifest(wide).local == {"kind": "hnsw", "M": 64, "ef_construction": 64}
    np.save(tmp_path / "dim100.npy", np.random.default_rng(0).standard_normal((300, 100)).astype(np.float32))
    options = BuildOptions(nlist=4, nshards=2, local_kind="ivf-pq")
    build_index(tmp_path / "dim100.npy", tmp_path / "pq100", options)
    assert read_manifest(tmp_path / "pq100").local["pq_m"] == 10  # the largest divisor of 100 up to 100/8
    np.save(tmp_path / "few.npy", BASE[:200])
    with pytest.raises(HpcragError, match="ivf-pq needs at least 256 vectors to train its codebooks"):
        build_index(
            tmp_path / "few.npy", tmp_path / "few", BuildOptions(nlist=4, nshards=2, local_kind="ivf-pq")
        )
    assert not (tmp_path / "few").exists()


def test_ivf_pq_re_ranks_in_slices_with_the_same_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hpcrag.search import local_scan

    opened = DistributedIndex.open(build(tmp_path, "ivf-pq", pq_m=8))
    whole = opened.search(QUERIES, k=10, nprobe=8, refine=10)
    monkeypatch.setattr(local_scan, "REFINE_BYTES", 100 * 32 * 4 * 3)  # three queries per slice
    sliced = opened.search(QUERIES, k=10, nprobe=8, refine=10)
    np.testing.assert_array_equal(sliced.ids, whole.ids)
    np.testing.assert_allclose(sliced.distances, whole.distances, rtol=1e-6)


def test_a_request_routes_over_the_service_default_and_bad_fields_are_400s(tmp_path: Path) -> None:
    from hpcrag.search.client import SearchClient
    from hpcrag.search.service import ServiceOptions
    from tests.unit.search.service_helpers import TOKEN, client, running_service

    index_dir = build(tmp_path, "hnsw")
    defaults = {"max_shards": 1, "shard_margin": None, "ef": 16, "refine": None}
    direct = DistributedIndex.open(index_dir)
    with running_service(index_dir, ServiceOptions(port=0, routing=defaults)) as (service, _):
        searcher = SearchClient(service.url, token=TOKEN)
        default = searcher.search(QUERIES[:6], k=5, nprobe=8)
        wide = searcher.search(QUERIES[:6], k=5, nprobe=8, max_shards=4, ef=256)
        margin = searcher.search(QUERIES[:6], k=5, nprobe=8, max_shards=4, shard_margin=1e-5)  # as .npy
        http = client(service)
        bad = {
            "max_shards": 9,
            "ef": "64",
            "shard_margin": "wide",
            "refine": 3,
        }
        answers = {
            name: http.post("/search", json={"queries": QUERIES[:2].tolist(), "nprobe": 8, name: value})
            for name, value in bad.items()
        }
        with pytest.raises(HpcragError, match="unknown search option 'nprobes'"):
            searcher.search(QUERIES[:2], nprobes=3)
    assert default.ids.tolist() == direct.search(QUERIES[:6], k=5, nprobe=8, max_shards=1, ef=16).ids.tolist()
    assert (default.shards_touched == 1).all()
    assert wide.ids.tolist() == direct.search(QUERIES[:6], k=5, nprobe=8, max_shards=4, ef=256).ids.tolist()
    assert (wide.shards_touched > 1).any()
    narrow = direct.search(QUERIES[:6], k=5, nprobe=8, max_shards=4, shard_margin=1e-5, ef=16)
    assert margin.ids.tolist() == narrow.ids.tolist()
    assert margin.shards_touched.tolist() == narrow.shards_touched.tolist()
    assert {name: answer.status_code for name, answer in answers.items()} == dict.fromkeys(bad, 400)
    # A request's error names its field, not the command line's flag.
    assert answers["max_shards"].json()["error"].startswith("max_shards must be in [1, 4]")
    assert answers["ef"].json()["error"] == '"ef" must be an integer (like 10), got "64"'
    assert answers["shard_margin"].json()["error"] == '"shard_margin" must be a number (like 0.5), got "wide"'
    assert answers["refine"].json()["error"] == "refine re-ranks ivf-pq candidates; this index is hnsw"


def test_a_row_too_large_to_score_is_refused_by_search_and_updates(tmp_path: Path) -> None:
    opened = DistributedIndex.open(build(tmp_path, "ivf-flat"))
    huge = np.full((1, 32), 1e19, dtype=np.float32)  # each square fits float32, their sum does not
    for call in (
        lambda: opened.search(np.vstack([QUERIES[:2], huge]), k=5, nprobe=4),
        lambda: opened.upsert(huge, np.array([7])),
    ):
        with pytest.raises(HpcragError, match=r"row \d is too large to score: its squared norm exceeds"):
            call()
    assert opened.search(QUERIES[:2], k=5, nprobe=4).ids.shape == (2, 5)
    # One value this large puts the row past the quick bound, but its squared norm fits: it is scored.
    large = np.zeros((1, 32), dtype=np.float32)
    large[0, 0] = 1e19
    assert opened.search(large, k=5, nprobe=4).ids.shape == (1, 5)


def test_a_npy_request_routes_by_its_query_parameters(tmp_path: Path) -> None:
    from hpcrag.search.service import ServiceOptions
    from tests.unit.search.service_helpers import client, running_service
    from tests.unit.search.test_service_limits import npy

    index_dir = build(tmp_path, "hnsw")
    direct = DistributedIndex.open(index_dir)
    headers = {"Content-Type": "application/x-npy"}
    routing = {"max_shards": 1, "shard_margin": None, "ef": 16, "refine": None}
    queries = (
        "k=5&nprobe=8",
        "k=5&nprobe=8&max_shards=4&ef=256",
        "k=5&nprobe=8&max_shards=4&shard_margin=0.25",
        "max_shards=5",
        "shard_margin=1e3",
        "shard_margin=0.5&shard_margin=1",
        "ef=32.5",
        "refine=4",
        "efs=4",
    )
    with running_service(index_dir, ServiceOptions(port=0, routing=routing)) as (service, _):
        http = client(service)
        answers = {q: http.post(f"/search?{q}", content=npy(QUERIES[:6]), headers=headers) for q in queries}
    found = {query: np.load(io.BytesIO(answer.content)) for query, answer in list(answers.items())[:3]}
    expected = [
        direct.search(QUERIES[:6], k=5, nprobe=8, max_shards=1, ef=16),
        direct.search(QUERIES[:6], k=5, nprobe=8, max_shards=4, ef=256),
        direct.search(QUERIES[:6], k=5, nprobe=8, max_shards=4, shard_margin=0.25, ef=16),
    ]
    for answer, want in zip(found.values(), expected, strict=True):
        np.testing.assert_array_equal(answer["ids"], want.ids)
        np.testing.assert_array_equal(answer["shards_touched"], want.shards_touched)
    assert (expected[0].shards_touched == 1).all() and (expected[1].shards_touched > 1).any()
    errors = {query: answer.json()["error"] for query, answer in list(answers.items())[3:]}
    assert {answer.status_code for answer in list(answers.values())[3:]} == {400}
    assert errors["max_shards=5"].startswith("max_shards must be in [1, 4]")
    assert errors["shard_margin=1e3"] == 'query parameter shard_margin must be a number like 0.5, got "1e3"'
    twice = errors["shard_margin=0.5&shard_margin=1"]
    assert twice == "query parameters filter, strategy, shard_margin may be given once each"
    assert errors["ef=32.5"] == 'query parameter ef must be a positive integer (like ef=10), got "32.5"'
    assert errors["refine=4"] == "refine re-ranks ivf-pq candidates; this index is hnsw"
    assert errors["efs=4"].startswith('unknown query parameter "efs"; valid: k, nprobe, min_seq, max_shards')


def test_the_kind_lists_agree() -> None:
    from hpcrag.catalog import search_plan
    from hpcrag.cli.index import build as build_command
    from hpcrag.search.local_kinds import KINDS

    choices = next(p.type.choices for p in build_command.params if p.name == "local_kind")
    assert tuple(choices) == KINDS == search_plan.KINDS


@pytest.mark.parametrize(
    ("metric", "per_shard"), [("l2", 32 * 32 * 4 + 32 * 8 * 256 * 4), ("ip", 32 * 32 * 4)]
)
def test_info_counts_what_an_ivf_pq_shard_holds_whatever_its_size(
    tmp_path: Path, metric: str, per_shard: int
) -> None:
    index_dir = build(tmp_path, "ivf-pq", metric, pq_m=8)  # nlist 32, dim 32
    runner = CliRunner()
    summary = json.loads(runner.invoke(cli, ["index", "info", str(index_dir), "--json"]).output)
    assert summary["local"]["bytes_per_shard"] == per_shard  # centroids, and faiss's l2 table
    text = runner.invoke(cli, ["index", "info", str(index_dir)]).output
    assert f"bytes per vector in memory, plus {per_shard / 2**20:,.1f} MiB per shard" in text
    hnsw = json.loads(
        runner.invoke(cli, ["index", "info", str(build(tmp_path, "hnsw", name="g")), "--json"]).output
    )
    assert hnsw["local"]["bytes_per_shard"] == 0


def test_an_exact_request_ignores_the_service_shard_selection_and_refuses_its_own(tmp_path: Path) -> None:
    from hpcrag.search.service import ServiceOptions
    from tests.unit.search.service_helpers import client, running_service
    from tests.unit.search.test_service_limits import npy

    index_dir = build(tmp_path, "hnsw")
    routing = {"max_shards": 1, "shard_margin": 0.5, "ef": 16, "refine": None}
    with running_service(index_dir, ServiceOptions(port=0, routing=routing)) as (service, _):
        http = client(service)
        body = {"queries": QUERIES[:4].tolist(), "k": 5, "strategy": "exact"}
        exact = http.post("/search", json=body)
        own = http.post("/search", json={**body, "max_shards": 2})
        binary = http.post(
            "/search?k=5&strategy=exact&shard_margin=0.2",
            content=npy(QUERIES[:4]),
            headers={"Content-Type": "application/x-npy"},
        )
    assert exact.status_code == 200, exact.text
    truth = reference.search(reference.exact(BASE, Metric.IP), QUERIES[:4], 5, Metric.IP)[1]
    assert exact.json()["ids"] == truth.tolist() and exact.json()["strategy"] == "exact"
    assert (own.status_code, binary.status_code) == (400, 400)
    refusal = 'strategy "exact" scans every matching row of every shard: drop '
    assert own.json()["error"] == refusal + 'max_shards or use strategy "auto" or "ivf"'
    assert binary.json()["error"].startswith(refusal + "shard_margin")


def test_faiss_builds_no_precomputed_table_past_its_limit_and_info_says_so() -> None:
    from hpcrag.search.local_kinds import FAISS_PRECOMPUTED_TABLE_MAX_BYTES, memory_per_shard

    faiss = pytest.importorskip("faiss")
    assert faiss.cvar.precomputed_table_max_bytes == FAISS_PRECOMPUTED_TABLE_MAX_BYTES
    spec = {"kind": "ivf-pq", "pq_m": 96, "nbits": 8}
    # nlist 65,536 x 96 x 256 x 4 B = 6 GiB of table: over the limit, so faiss keeps none.
    assert memory_per_shard(spec, 65_536, 768, Metric.L2) == 65_536 * 768 * 4
    assert memory_per_shard(spec, 1024, 768, Metric.L2) == 1024 * 768 * 4 + 1024 * 96 * 256 * 4
