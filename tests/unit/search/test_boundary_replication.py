"""Boundary replication (`--replicate`): vectors near another shard's lists are stored there too.

Shown here: the rule on a hand-computed case; a build copies about the share asked for, never an id
twice in one shard, and records them (format version 3); every answer holds each id once and, at full
effort over every list, equals brute force; a query held to one shard finds more of its neighbours;
deletes and upserts reach both copies, counts stay per vector, rows added since the build get their
copies as they are added (or, logged by an hpcrag that made none, at `compact`), and `compact` keeps
the copies.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from hpcrag.cli.main import cli
from hpcrag.errors import HpcragError
from hpcrag.search import DistributedIndex, Metric, layout, reference
from hpcrag.search.build import BuildOptions, build_index
from hpcrag.search.compact import compact_index
from hpcrag.search.layout import IndexFormatError, read_manifest
from hpcrag.search.replication import boundary_ratios, second_lists, threshold_for
from hpcrag.search.router import Router
from hpcrag.search.topk import merge_topk
from tests.search_helpers import assert_same_neighbours
from tests.unit.search.test_live_updates import BASE, NEW_IDS, NLIST, QUERIES, Live, near_base

K = 10
SHARE = 0.3
FULL_EFFORT = {"ivf-flat": {}, "hnsw": {"ef": 4096}}


def build(tmp_path: Path, kind: str, replicate: float, metric: str = "ip", base: np.ndarray = BASE) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    np.save(tmp_path / "base.npy", base)
    out = tmp_path / f"{kind}-{replicate}"
    options = BuildOptions(
        nlist=NLIST, nshards=4, metric=Metric(metric), dtype="float32", local_kind=kind, replicate=replicate
    )
    build_index(tmp_path / "base.npy", out, options)
    return out


def stored_ids(root: Path) -> list[np.ndarray]:
    manifest = read_manifest(root)
    return [np.load(layout.shard_dir(root, s.shard) / "ids.npy") for s in manifest.shards]


def assert_brute_force(live: Live, kind: str) -> None:
    ids, vectors = live.survivors()
    assert live.index.ntotal == len(ids)
    result = live.index.search(QUERIES, k=K, nprobe=NLIST, **FULL_EFFORT[kind])
    exact = reference.exact(vectors, live.metric, ids)
    distances, expected = reference.search(exact, QUERIES, K, live.metric)
    assert_same_neighbours(result.ids, result.distances, expected, distances)
    assert_each_id_once(result.ids)


def assert_each_id_once(ids: np.ndarray) -> None:
    for row in ids:
        real = row[row >= 0]
        assert real.size == np.unique(real).size, row


def test_the_rule_copies_a_vector_to_the_nearest_list_of_another_shard() -> None:
    centroids = np.array([[0.0, 0.0], [1.0, 0.0], [10.0, 0.0], [0.0, 3.0]], dtype=np.float32)
    list_shard = np.array([0, 0, 1, 2], dtype=np.int32)
    router = Router(centroids, Metric.L2, list_shard, np)
    rows = np.array([[0.1, 0.0], [0.0, 1.4], [5.0, 40.0]], dtype=np.float32)
    own = np.array([0, 0, 3])
    ratio, lists = boundary_ratios(router, rows, own)
    # Row 0: nearest list 0 (d1 0.01); list 1 shares its shard, so the candidate is list 3 (d2 9.01).
    # Row 1: list 0 (1.96), then list 3 of shard 2 (2.56). Row 2: list 3 (1394), then list 1 of
    # shard 0 (1616) before list 2 of shard 1 (1625).
    np.testing.assert_allclose(ratio, [9.01 / 0.01, 2.56 / 1.96, 1616.0 / 1394.0], rtol=1e-5)
    assert lists.tolist() == [3, 3, 1]
    assert threshold_for(ratio, 0.0) == 0.0
    assert threshold_for(ratio, 2 / 3) == pytest.approx(2.56 / 1.96, rel=1e-5)
    assert second_lists(router, rows, own, threshold_for(ratio, 2 / 3)).tolist() == [-1, 3, 1]
    assert second_lists(router, rows, own, 0.0).tolist() == [-1, -1, -1]


def test_the_other_shard_is_judged_against_the_list_a_row_is_stored_in() -> None:
    """A row stored in list 0 (shard 0) whose nearest centroid is now list 2 (shard 1), as float16
    rounding or a near tie can make it: its copy goes to shard 1, never back into shard 0."""
    centroids = np.array([[0.0, 0.0], [0.0, 5.0], [1.0, 0.0]], dtype=np.float32)
    router = Router(centroids, Metric.L2, np.array([0, 0, 1], dtype=np.int32), np)
    row = np.array([[0.6, 0.0]], dtype=np.float32)  # d 0.36 to list 0, 0.16 to list 2, 25.36 to list 1
    ratio, lists = boundary_ratios(router, row, np.array([0]))
    assert lists.tolist() == [2] and ratio[0] == pytest.approx(0.16 / 0.36, rel=1e-5)
    ratio, lists = boundary_ratios(router, row, np.array([2]))  # stored in shard 1: the copy goes to 0
    assert lists.tolist() == [0] and ratio[0] == pytest.approx(0.36 / 0.16, rel=1e-5)


def test_a_vector_with_no_other_shard_among_its_lists_gets_no_copy() -> None:
    centroids = np.eye(3, dtype=np.float32)
    router = Router(centroids, Metric.L2, np.zeros(3, dtype=np.int32), np)
    ratio, lists = boundary_ratios(router, np.eye(3, dtype=np.float32) * 0.9, np.arange(3))
    assert np.isinf(ratio).all() and (lists == -1).all()
    assert threshold_for(ratio, 1.0) == 0.0


def test_merge_keeps_each_id_once_at_its_best_score() -> None:
    a = (np.array([[0.9, 0.5, 0.2]], dtype=np.float32), np.array([[7, 3, 5]]))
    b = (np.array([[0.8, 0.5, 0.1]], dtype=np.float32), np.array([[3, 7, 9]]))
    for first, second in ((a, b), (b, a)):
        scores, ids = merge_topk(first, second, 4, True, Metric.IP.worst)
        assert ids.tolist() == [[7, 3, 5, 9]]
        np.testing.assert_array_equal(scores, np.array([[0.9, 0.8, 0.2, 0.1]], dtype=np.float32))
    scores, ids = merge_topk(a, a, 4, True, Metric.IP.worst)  # fewer distinct ids than k: padded
    assert ids.tolist() == [[7, 3, 5, -1]] and scores[0, 3] == Metric.IP.worst


@pytest.mark.parametrize("kind", ["ivf-flat", "hnsw"])
def test_build_copies_about_the_share_and_answers_equal_brute_force(tmp_path: Path, kind: str) -> None:
    root = build(tmp_path, kind, SHARE)
    manifest = read_manifest(root)
    assert manifest.format_version == layout.REPLICAS_VERSION
    assert manifest.ntotal == len(BASE)
    assert abs(manifest.replicas / len(BASE) - SHARE) < 0.1  # the threshold comes from a sample
    shards = stored_ids(root)
    assert sum(ids.size for ids in shards) == len(BASE) + manifest.replicas
    assert all(np.unique(ids).size == ids.size for ids in shards)  # never twice in one shard
    assert np.array_equal(np.unique(np.concatenate(shards)), np.arange(len(BASE)))
    copies = sum(
        int(np.load(layout.shard_dir(root, s.shard) / layout.REPLICA).sum())
        for s in manifest.shards
        if layout.REPLICA in s.files
    )
    assert copies == manifest.replicas
    assert sum(manifest.list_counts) == len(BASE) + manifest.replicas
    live = Live(root, "ip")
    assert_brute_force(live, kind)
    exact = live.index.search(QUERIES, k=K, strategy="exact")
    distances, expected = reference.search(reference.exact(BASE, Metric.IP), QUERIES, K, Metric.IP)
    assert_same_neighbours(exact.ids, exact.distances, expected, distances)
    assert_each_id_once(exact.ids)


def test_one_shard_per_query_finds_more_neighbours_with_copies(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)  # no clusters: many neighbours sit across a shard boundary
    base, queries = (
        rng.standard_normal((6000, 16), dtype=np.float32),
        rng.standard_normal((200, 16), dtype=np.float32),
    )
    expected = reference.search(reference.exact(base, Metric.IP), queries, K, Metric.IP)[1]
    recall = {}
    for share in (0.0, 0.5):
        index = DistributedIndex.open(build(tmp_path, "ivf-flat", share, base=base))
        found = index.search(queries, k=K, nprobe=NLIST, max_shards=1)
        assert (found.shards_touched == 1).all()
        recall[share] = reference.recall_at(found.ids, expected, K)
        index.close()
    assert recall[0.5] > recall[0.0] + 0.05, recall


@pytest.mark.parametrize("kind", ["ivf-flat", "hnsw"])
def test_updates_reach_both_copies_and_compact_keeps_them(tmp_path: Path, kind: str) -> None:
    root = build(tmp_path, kind, SHARE, metric="l2")
    copied = np.concatenate(
        [
            np.load(layout.shard_dir(root, s.shard) / "ids.npy")[
                np.load(layout.shard_dir(root, s.shard) / layout.REPLICA) == 1
            ]
            for s in read_manifest(root).shards
            if layout.REPLICA in s.files
        ]
    )
    live = Live(root, "l2")
    rng = np.random.default_rng(8)
    # A deleted copied vector is gone from every shard: searching at its own vector misses it.
    gone = copied[:40]
    live.delete(np.concatenate([gone, [987_654]]))
    found = live.index.search(BASE[gone], k=K, nprobe=NLIST, **FULL_EFFORT[kind]).ids
    assert not np.isin(gone, found).any()
    assert_brute_force(live, kind)
    # An upserted copied vector is found once, at its new vector.
    moved = copied[40:70]
    live.upsert(near_base(rng, moved.size), moved)
    live.add(near_base(rng, 25), np.arange(NEW_IDS, NEW_IDS + 25))
    assert_brute_force(live, kind)
    # Rows added since the build got their copies by the build's rule as they were added.
    new_ids = np.concatenate([moved, np.arange(NEW_IDS, NEW_IDS + 25)])
    threshold = live.index.manifest.build["replicate_threshold"]
    vectors = np.stack([live.model[i] for i in new_ids.tolist()])
    own = live.index.router.probe(vectors, 1)[:, 0]  # where an update puts a row
    second = second_lists(live.index.router, vectors, own, threshold)
    assert 0 < (second >= 0).sum() < new_ids.size
    before = read_manifest(root).replicas
    live.index.close()
    report = compact_index(root)
    after = read_manifest(root)
    assert report.vectors == after.ntotal == len(live.model)
    assert after.replicas == before - gone.size - moved.size + (second >= 0).sum()
    holders = {int(i): [s for s, ids in enumerate(stored_ids(root)) if i in ids] for i in new_ids}
    for ident, target in zip(new_ids.tolist(), second.tolist(), strict=True):
        owners = holders[ident]
        assert len(owners) == (2 if target >= 0 else 1)
        if target >= 0:
            assert after.list_shard[target] in owners
    assert after.format_version == layout.REPLICAS_VERSION
    assert sum(s.ntotal for s in after.shards) == after.ntotal + after.replicas
    assert report.drift.error_ratio == pytest.approx(1.0, abs=0.2)  # copies do not count as drift
    model = live.model
    live = Live(root, "l2")
    live.model = model
    assert_brute_force(live, kind)
    live.index.close()


@pytest.mark.parametrize("kind", ["ivf-flat", "hnsw"])
def test_rows_added_get_their_copy_at_once_as_compact_would_store_them(tmp_path: Path, kind: str) -> None:
    """An add or upsert stores each row's second copy by the build's rule as it applies: a query held
    to one shard answers the same before compact as after, and deletes reach both copies."""
    root = build(tmp_path, kind, 0.5, metric="l2")
    live = Live(root, "l2")
    rng = np.random.default_rng(21)
    added = np.arange(NEW_IDS, NEW_IDS + 120)
    live.add(near_base(rng, added.size), added)
    live.upsert(near_base(rng, 20), added[:20])
    assert read_manifest(root).format_version == layout.LOGGED_COPIES_VERSION  # a reader of 3 refuses
    threshold = live.index.manifest.build["replicate_threshold"]
    vectors = np.stack([live.model[i] for i in added.tolist()])
    own = live.index.router.probe(vectors, 1)[:, 0]
    second = second_lists(live.index.router, vectors, own, threshold)
    assert 10 < (second >= 0).sum() < added.size
    # Each added row sits in its own list's shard and, where the rule says, in its copy's list.
    for ident, home, target in zip(added.tolist(), own.tolist(), second.tolist(), strict=True):
        held = {
            (shard, int(segment.list_of_rows()[row]))
            for shard, (segment, row) in live.index._live._delta_home[ident].items()
        }
        expected = {(int(live.index.router.list_shard[home]), home)}
        if target >= 0:
            expected.add((int(live.index.router.list_shard[target]), target))
        assert held == expected, ident
    assert_brute_force(live, kind)  # each vector counted and answered once
    queries = vectors[::3] + np.float32(0.01)
    effort = FULL_EFFORT[kind]
    before = live.index.search(queries, k=K, nprobe=NLIST, max_shards=1, **effort)
    gone = added[100:]
    live.delete(gone)
    assert not np.isin(gone, live.index.search(vectors[100:], k=K, nprobe=NLIST, **effort).ids).any()
    live.add(np.stack([vectors[i] for i in range(100, 120)]), gone)
    # The log replayed at open gives the same copies.
    reopened = DistributedIndex.open(root)
    replayed = reopened.search(queries, k=K, nprobe=NLIST, max_shards=1, **effort)
    assert_same_neighbours(replayed.ids, replayed.distances, before.ids, before.distances)
    reopened.close()
    live.index.close()
    replicas = read_manifest(root).replicas
    report = compact_index(root)
    assert read_manifest(root).replicas == replicas + (second >= 0).sum()
    assert read_manifest(root).format_version == layout.REPLICAS_VERSION
    # Counted in vectors, copies aside: the rows added and still live are the 120 added ids.
    assert report.rows_folded - report.rows_dropped == added.size
    assert report.vectors == len(live.model)
    compacted = DistributedIndex.open(root)
    after = compacted.search(queries, k=K, nprobe=NLIST, max_shards=1, **effort)
    if kind == "ivf-flat":  # the same rows in the same shards, scanned whole
        assert_same_neighbours(after.ids, after.distances, before.ids, before.distances)
    assert reference.recall_at(after.ids, before.ids, K) >= 0.99
    compacted.close()


def test_compact_copies_rows_logged_without_copies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A log written by an hpcrag that copied rows only at compact: compact copies them by the rule."""
    root = build(tmp_path, "ivf-flat", 0.5, metric="l2")
    rng = np.random.default_rng(4)
    vectors, ids = near_base(rng, 60), np.arange(NEW_IDS, NEW_IDS + 60)
    index = DistributedIndex.open(root)
    with monkeypatch.context() as patch:
        patch.setattr(DistributedIndex, "_copies", lambda self, stored, lists: None)
        index.add(vectors, ids)
    assert read_manifest(root).format_version == layout.REPLICAS_VERSION
    own = index.router.probe(vectors, 1)[:, 0]
    second = second_lists(index.router, vectors, own, index.manifest.build["replicate_threshold"])
    assert (second >= 0).any()
    replicas = read_manifest(root).replicas
    index.close()
    compact_index(root)
    assert read_manifest(root).replicas == replicas + (second >= 0).sum()
    holders = {int(i): [s for s, held in enumerate(stored_ids(root)) if i in held] for i in ids}
    for ident, home, target in zip(ids.tolist(), own.tolist(), second.tolist(), strict=True):
        shards = read_manifest(root).list_shard
        assert sorted(holders[ident]) == sorted({shards[home], *([shards[target]] if target >= 0 else [])})


def test_compact_never_copies_a_float16_row_into_its_own_shard(tmp_path: Path) -> None:
    """Rows added on a shard boundary whose nearest list changes once stored as float16: the rule,
    recomputed by compact on the stored vector, must still send the copy to another shard."""
    rng = np.random.default_rng(0)
    base = rng.standard_normal((2000, 8)).astype(np.float32)
    np.save(tmp_path / "base.npy", base)
    root = tmp_path / "f16"
    options = BuildOptions(nlist=16, nshards=4, metric=Metric.L2, dtype="float16", replicate=0.5)
    build_index(tmp_path / "base.npy", root, options)
    index = DistributedIndex.open(root)
    router, centroids = index.router, np.load(root / layout.CENTROIDS)
    pairs = [(i, j) for i in range(16) for j in range(16) if router.list_shard[i] != router.list_shard[j]]
    points = []
    for i, j in pairs:  # just off the bisector of two centroids of different shards
        across = (centroids[i] - centroids[j]) / np.linalg.norm(centroids[i] - centroids[j])
        shift = rng.uniform(0, 3e-3, (200, 1)) * across
        points.append((centroids[i] + centroids[j]) / 2 + rng.normal(0, 0.02, (200, 8)) + shift)
    points = np.concatenate(points).astype(np.float32)
    rounded = points.astype(np.float16).astype(np.float32)
    as_added, as_stored = router.probe(points, 1)[:, 0], router.probe(rounded, 1)[:, 0]
    flipped = np.flatnonzero(router.list_shard[as_added] != router.list_shard[as_stored])[:40]
    assert flipped.size >= 10  # 54 of the 38,400 points here; enough to show the case either way
    ids = np.arange(NEW_IDS, NEW_IDS + flipped.size)
    index.add(points[flipped], ids)
    index.close()
    compact_index(root)
    assert all(np.unique(stored).size == stored.size for stored in stored_ids(root))
    index = DistributedIndex.open(root)
    assert index.ntotal == len(base) + ids.size
    assert_each_id_once(index.search(points[flipped], k=K, nprobe=16).ids)
    assert index.delete(ids).deleted == ids.size
    assert not np.isin(ids, index.search(points[flipped], k=K, nprobe=16).ids).any()
    assert index.ntotal == len(base)
    index.close()


def test_a_shard_holding_an_id_twice_is_refused_at_open(tmp_path: Path) -> None:
    root = build(tmp_path, "ivf-flat", 0.0)
    folder = layout.shard_dir(root, 1)
    ids = np.load(folder / "ids.npy")
    ids[1] = ids[0]
    manifest = read_manifest(root)
    entry = layout.save_array(folder / "ids.npy", ids)
    shards = [
        layout.ShardEntry(s.shard, s.ntotal, {**s.files, "ids.npy": entry}) if s.shard == 1 else s
        for s in manifest.shards
    ]
    layout.write_manifest(root, replace(manifest, shards=shards))
    with pytest.raises(IndexFormatError, match=rf"shard 1 holds id {ids[0]} twice; rebuild the index"):
        DistributedIndex.open(root)


@pytest.mark.parametrize("share", [-0.1, 1.5, float("nan")])
def test_a_share_outside_0_to_1_is_refused_before_any_work(tmp_path: Path, share: float) -> None:
    with pytest.raises(HpcragError, match=r"--replicate .* is not a share of the vectors: give a number"):
        build(tmp_path, "ivf-flat", share)
    assert not (tmp_path / f"ivf-flat-{share}").exists()


def test_one_shard_cannot_replicate_and_the_cli_says_so(tmp_path: Path) -> None:
    np.save(tmp_path / "base.npy", BASE)
    options = BuildOptions(nlist=NLIST, nshards=1, dtype="float32", replicate=0.2)
    with pytest.raises(HpcragError, match=r"build with --shards >= 2"):
        build_index(tmp_path / "base.npy", tmp_path / "one", options)
    args = ["index", "build", str(tmp_path / "base.npy"), "--out", str(tmp_path / "x"), "--nlist", "8"]
    result = CliRunner().invoke(cli, [*args, "--shards", "2", "--replicate", "2"])
    assert result.exit_code != 0 and "--replicate 2.0 is not a share of the vectors" in result.output


def test_index_info_reports_the_copies(tmp_path: Path) -> None:
    root = build(tmp_path, "ivf-flat", SHARE)
    replicas = read_manifest(root).replicas
    text = CliRunner().invoke(cli, ["index", "info", str(root)])
    assert text.exit_code == 0, text.output
    share = f"{replicas / len(BASE):.1%}"
    said = f"{replicas} boundary vectors ({share}) are also stored in a second shard (--replicate)"
    assert said in text.output
    summary = json.loads(CliRunner().invoke(cli, ["index", "info", str(root), "--json"]).output)
    row = summary["local"]["bytes_per_vector"]  # per stored row: a vector with a copy holds two
    stored = (len(BASE) + replicas) / len(BASE)
    assert (
        f"{row['memory']:,.0f} bytes per stored row in memory, {row['disk']:,.0f} on disk "
        f"({row['memory'] * stored:,.0f} and {row['disk'] * stored:,.0f} per vector, "
        "its second copies included)"
    ) in text.output
    assert summary["replicas"] == replicas and summary["vectors"] == len(BASE)
    assert sum(s["vectors"] for s in summary["shards"]) == len(BASE) + replicas


def test_a_manifest_with_copies_below_version_3_is_refused(tmp_path: Path) -> None:
    root = build(tmp_path, "ivf-flat", SHARE)
    path = root / layout.MANIFEST
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "format_version": 2}))
    with pytest.raises(IndexFormatError, match=r"replicas \d+ in format version 2\); rebuild the index"):
        DistributedIndex.open(root)
