"""Updates and filters on shards whose local kind keeps its own index (hnsw, ivf-pq), in one process.

At the highest search effort and nprobe = nlist every answer equals brute force over the surviving
(and matching) vectors; at everyday effort a row added is found by the next search through its
list, and a deleted row never comes back; a reopened index replays to the same state, and `compact`
rebuilds the shard indexes with the updates folded in.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hpcrag.search import DistributedIndex, Metric, reference
from hpcrag.search.build import BuildOptions, build_index
from hpcrag.search.compact import compact_index
from hpcrag.search.layout import read_manifest
from hpcrag.search.synthetic import clustered
from hpcrag.search.wal import LOG
from tests.search_helpers import assert_same_neighbours, centroids_of
from tests.unit.search.test_live_updates import BASE, NEW_IDS, NLIST, QUERIES, Live, near_base

K = 10
FULL_EFFORT = {"hnsw": {"ef": 4096}, "ivf-pq": {"refine": 1000}}  # ivf-pq: re-rank every probed row
FILES = {"hnsw": "hnsw.faiss", "ivf-pq": "ivfpq.faiss"}
SOURCES = ("docs", "mail", "code")


def build(tmp_path: Path, kind: str, metric: str, attributes: bool = False) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    np.save(tmp_path / "base.npy", BASE)
    path = None
    if attributes:
        path = tmp_path / "attributes.jsonl"
        rows = [{"source": SOURCES[i % 3], "year": 2000 + i % 20} for i in range(len(BASE))]
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    options = BuildOptions(
        nlist=NLIST, nshards=4, metric=Metric(metric), dtype="float32", local_kind=kind, local_params={}
    )
    build_index(tmp_path / "base.npy", tmp_path / kind, options, attributes_path=path)
    return tmp_path / kind


def assert_brute_force(live: Live, kind: str) -> None:
    """At full effort over every list, the index equals brute force over the model's vectors."""
    ids, vectors = live.survivors()
    assert live.index.ntotal == len(ids) and live.index.seq == live.seq
    result = live.index.search(QUERIES, k=K, nprobe=NLIST, **FULL_EFFORT[kind])
    exact = reference.exact(vectors, live.metric, ids)
    distances, expected = reference.search(exact, QUERIES, K, live.metric)
    assert result.strategy == "ivf"
    assert_same_neighbours(result.ids, result.distances, expected, distances)


@pytest.mark.parametrize("kind", ["hnsw", "ivf-pq"])
@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_updates_equal_brute_force_over_the_survivors_and_compact_folds_them(
    tmp_path: Path, kind: str, metric: str
) -> None:
    live = Live(build(tmp_path, kind, metric), metric)
    rng = np.random.default_rng(3)
    live.add(near_base(rng, 200), np.arange(NEW_IDS, NEW_IDS + 200))
    assert_brute_force(live, kind)
    existing = np.array(sorted(live.model))
    live.delete(np.concatenate([rng.choice(existing, 150, replace=False), [900_000]]))
    assert_brute_force(live, kind)
    # Upsert base and added ids, some repeated (the last row wins), and new ones.
    existing = np.array(sorted(live.model))
    ids = np.concatenate([rng.choice(existing, 60, replace=False), np.arange(NEW_IDS + 200, NEW_IDS + 240)])
    ids = np.concatenate([ids, ids[:10]])
    live.upsert(near_base(rng, ids.size), ids)
    assert_brute_force(live, kind)
    gone = np.setdiff1d(np.arange(len(BASE)), np.array(sorted(live.model)))
    live.add(near_base(rng, 20), gone[:20])  # deleted ids come back
    assert_brute_force(live, kind)
    before = live.index.search(QUERIES, k=K, nprobe=4)

    live.index.close()
    live.index = DistributedIndex.open(live.root)  # the log replayed
    again = live.index.search(QUERIES, k=K, nprobe=4)
    np.testing.assert_array_equal(again.ids, before.ids)
    assert_brute_force(live, kind)
    live.index.close()

    report = compact_index(live.root)
    assert (report.seq, report.vectors) == (live.seq, len(live.model))
    assert not (live.root / LOG).exists()  # the new generation starts with no log
    manifest = read_manifest(live.root)
    assert manifest.local["kind"] == kind and all(FILES[kind] in shard.files for shard in manifest.shards)
    live.index = DistributedIndex.open(live.root)
    assert all(not segment.delta and segment.live is None for _, segment in live.index._live.segments())
    assert all(segment.local.ntotal == segment.rows for _, segment in live.index._live.segments())
    assert_brute_force(live, kind)


@pytest.mark.parametrize("kind", ["hnsw", "ivf-pq"])
def test_an_added_row_is_found_and_a_deleted_one_is_gone(tmp_path: Path, kind: str) -> None:
    live = Live(build(tmp_path, kind, "l2"), "l2")
    query = QUERIES[:1]
    nearest = int(live.index.search(query, k=1, nprobe=1).ids[0, 0])
    live.add(query, np.array([NEW_IDS]))  # at distance 0, in the query's nearest list
    found = live.index.search(query, k=2, nprobe=1)
    assert found.ids[0].tolist() == [NEW_IDS, nearest] and found.distances[0, 0] == pytest.approx(0, abs=1e-5)
    live.delete(np.array([NEW_IDS, nearest]))
    after = live.index.search(QUERIES, k=K, nprobe=4)
    assert not np.isin(after.ids, [NEW_IDS, nearest]).any()
    assert (after.ids >= 0).all()


@pytest.mark.parametrize("kind", ["hnsw", "ivf-pq"])
def test_filters_equal_brute_force_over_the_matching_survivors(tmp_path: Path, kind: str) -> None:
    live = Live(build(tmp_path, kind, "ip", attributes=True), "ip")
    rng = np.random.default_rng(4)
    # Base row i has source SOURCES[i % 3] and year 2000 + i % 20 (see `build`); added rows match.
    matching = {i: BASE[i] for i in range(len(BASE)) if i % 3 == 0 and i % 20 >= 10}
    added, deleted = np.arange(NEW_IDS, NEW_IDS + 100), rng.choice(len(BASE), 200, replace=False)
    vectors = near_base(rng, added.size)
    live.index.add(vectors, added, attributes=[{"source": "docs", "year": 2030} for _ in added])
    live.index.delete(deleted)
    matching.update(zip(added.tolist(), vectors, strict=True))
    for ident in deleted.tolist():
        matching.pop(ident, None)
    ids = np.array(sorted(matching))
    exact = reference.exact(np.stack([matching[i] for i in ids.tolist()]), Metric.IP, ids)
    distances, expected = reference.search(exact, QUERIES, K, Metric.IP)
    spec = {"and": [{"source": "docs"}, {"year": {"gte": 2010}}]}
    for strategy, effort in (("ivf", FULL_EFFORT[kind]), ("exact", {})):
        result = live.index.search(QUERIES, k=K, nprobe=NLIST, filter=spec, strategy=strategy, **effort)
        assert result.strategy == strategy
        assert_same_neighbours(result.ids, result.distances, expected, distances)
    everyday = live.index.search(QUERIES, k=K, nprobe=4, filter=spec)
    assert np.isin(everyday.ids[everyday.ids >= 0], ids).all()


def test_the_service_takes_updates_on_hnsw_shards(tmp_path: Path) -> None:
    from hpcrag.search.service import ServiceOptions
    from tests.unit.search.service_helpers import client, running_service

    index_dir = build(tmp_path, "hnsw", "l2")
    query = QUERIES[:1]
    with running_service(index_dir, ServiceOptions(port=0)) as (service, _):
        http = client(service)
        nearest = http.post("/search", json={"queries": query.tolist(), "k": 1, "nprobe": 2}).json()["ids"][
            0
        ][0]
        written = http.post("/upsert", json={"vectors": query.tolist(), "ids": [NEW_IDS]}).json()
        deleted = http.post("/delete", json={"ids": [nearest]}).json()
        body = {"queries": query.tolist(), "k": 3, "nprobe": 2, "ef": 64, "min_seq": deleted["seq"]}
        found = http.post("/search", json=body).json()
    assert (written["seq"], written["added"], deleted["seq"], deleted["deleted"]) == (1, 1, 2, 1)
    assert found["seq"] == 2 and found["ids"][0][0] == NEW_IDS and nearest not in found["ids"][0]
    reopened = DistributedIndex.open(index_dir).search(query, k=3, nprobe=2, ef=64)
    assert reopened.ids[0].tolist() == found["ids"][0]


def test_hnsw_finds_readable_rows_when_the_hidden_ones_surround_the_query(tmp_path: Path) -> None:
    # Delete the topic around a query (tight clusters): the graph walk ends among the deleted rows.
    base, queries = clustered(20000, 5, 32, clusters=20, spread=0.3, seed=1)
    np.save(tmp_path / "topics.npy", base)
    options = BuildOptions(nlist=64, nshards=4, metric=Metric.L2, dtype="float32", local_kind="hnsw")
    build_index(tmp_path / "topics.npy", tmp_path / "idx", options)
    index = DistributedIndex.open(tmp_path / "idx")
    query = queries[:1]
    centre = base[np.argmin(((base - query) ** 2).sum(axis=1))]
    topic = np.argsort(((base - centre) ** 2).sum(axis=1))[:1000]
    index.delete(topic)
    ids = np.setdiff1d(np.arange(len(base)), topic)
    truth = reference.search(reference.exact(base[ids], Metric.L2, ids), query, K, Metric.L2)
    result = index.search(query, k=K, nprobe=64)  # everyday ef: the probed lists are exact
    assert_same_neighbours(result.ids, result.distances, truth[1], truth[0])
    ivf = reference.ivf_flat(base[ids], centroids_of(tmp_path / "idx"), Metric.L2, ids)
    for nprobe in (2, 8):
        found = index.search(query, k=K, nprobe=nprobe).ids
        at_least = reference.search(ivf, query, K, Metric.L2, nprobe)[1]
        assert reference.recall_at(found, truth[1], K) >= reference.recall_at(at_least, truth[1], K)
        assert len(set(found[0].tolist())) == K  # each id once, though both scans read the segment


def test_the_first_update_to_a_version_1_graph_index_marks_it_version_2(tmp_path: Path) -> None:
    # hpcrag of format version 1 built hnsw shards but read no updates on them: it must not open
    # an index whose deletes it would ignore. Lists (ivf-flat) read updates in version 1 already.
    for kind in ("hnsw", "ivf-flat"):
        manifest = build(tmp_path / kind, kind, "ip") / "manifest.json"
        data = json.loads(manifest.read_text())
        manifest.write_text(json.dumps({**data, "format_version": 1}))
        index = DistributedIndex.open(manifest.parent)
        index.search(QUERIES[:2], k=3, nprobe=2)
        assert json.loads(manifest.read_text())["format_version"] == 1  # searching changes nothing
        index.delete(np.array([0, 1]))
        expected = 2 if kind == "hnsw" else 1
        assert json.loads(manifest.read_text())["format_version"] == expected, kind
        assert read_manifest(manifest.parent).local == data["local"]
        assert DistributedIndex.open(manifest.parent).ntotal == len(BASE) - 2
