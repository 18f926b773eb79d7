"""The live index in one process: after any sequence of add, delete and upsert the answers equal faiss
IndexIVFFlat (same centroids) over the surviving vectors, and brute force at nprobe = nlist; every
logged update moves `seq` by one, a reopened index replays to the same state, and a refused update
changes nothing (not even the log).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hpcrag.errors import HpcragError
from hpcrag.search import DistributedIndex, Metric, reference
from hpcrag.search.synthetic import clustered
from hpcrag.search.wal import LOG
from tests.search_helpers import assert_same_neighbours, build_small, centroids_of

DIM, NLIST, K = 16, 16, 10
BASE, QUERIES = clustered(2000, 30, DIM, clusters=10, spread=0.5, seed=5)
NEW_IDS = 10_000  # ids the updates add start here


class Live:
    """An index under test and the dict id -> vector it must hold."""

    def __init__(self, root: Path, metric: str, **open_args: Any) -> None:
        self.root = root
        self.metric = Metric(metric)
        self.index = DistributedIndex.open(root, **open_args)
        self.model: dict[int, np.ndarray] = dict(enumerate(BASE))
        self.seq = 0

    def survivors(self) -> tuple[np.ndarray, np.ndarray]:
        ids = np.array(sorted(self.model), dtype=np.int64)
        return ids, np.stack([self.model[i] for i in ids.tolist()])

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        result = self.index.add(vectors, ids)
        self.seq += 1
        assert (result.seq, result.added, result.replaced) == (self.seq, len(ids), 0)
        self.model.update(zip(ids.tolist(), vectors, strict=True))

    def upsert(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        unique = set(ids.tolist())
        replaced = len(unique & set(self.model))
        result = self.index.upsert(vectors, ids)
        self.seq += 1
        assert (result.seq, result.added, result.replaced) == (self.seq, len(unique) - replaced, replaced)
        self.model.update(zip(ids.tolist(), vectors, strict=True))  # of repeated ids the last row wins

    def delete(self, ids: np.ndarray) -> None:
        unique = sorted(set(ids.tolist()))
        present = [i for i in unique if i in self.model]
        result = self.index.delete(ids)
        self.seq += 1 if present else 0
        assert result.seq == self.seq
        assert result.deleted == len(present)
        assert result.unknown_ids == tuple(i for i in unique if i not in self.model)
        for ident in present:
            del self.model[ident]

    def check(self, nprobes: tuple[int, ...] = (1, 4)) -> None:
        """The index equals the references built over the model's vectors."""
        ids, vectors = self.survivors()
        assert self.index.ntotal == len(self.model)
        assert self.index.seq == self.seq
        ivf = reference.ivf_flat(vectors, centroids_of(self.root), self.metric, ids)
        for nprobe in nprobes:
            result = self.index.search(QUERIES, k=K, nprobe=nprobe)
            assert (result.seq, result.strategy) == (self.seq, "ivf")
            distances, expected = reference.search(ivf, QUERIES, K, self.metric, nprobe)
            assert_same_neighbours(result.ids, result.distances, expected, distances)
        result = self.index.search(QUERIES, k=K, nprobe=NLIST)
        exact = reference.exact(vectors, self.metric, ids)
        distances, expected = reference.search(exact, QUERIES, K, self.metric)
        assert_same_neighbours(result.ids, result.distances, expected, distances)


def near_base(rng: np.random.Generator, count: int) -> np.ndarray:
    """New vectors among the base's clusters, so that they land in many lists."""
    rows = BASE[rng.integers(0, len(BASE), size=count)]
    return (rows + rng.normal(scale=0.05, size=rows.shape)).astype(np.float32)


def live_ids_of_list(index: DistributedIndex, list_no: int) -> list[int]:
    found: list[int] = []
    for _, segment in index._live.segments():
        rows = segment.list_of_rows() == list_no
        if segment.live is not None:
            rows &= segment.live == 1
        found += np.asarray(segment.ids)[rows].tolist()
    return found


def list_of_id(index: DistributedIndex, ident: int) -> int:
    for _, segment in index._live.segments():
        rows = np.flatnonzero(np.asarray(segment.ids) == ident)
        for row in rows.tolist():
            if segment.live is None or segment.live[row]:
                return int(segment.list_of_rows()[row])
    raise AssertionError(f"id {ident} is not live in the index")


def run_sequence(live: Live, seed: int, check: bool) -> None:
    """Random batches of every kind of update, with the edge cases named in each step."""
    rng = np.random.default_rng(seed)
    after = live.check if check else lambda: None
    next_id = NEW_IDS

    def fresh(count: int) -> np.ndarray:
        nonlocal next_id
        next_id += count
        return np.arange(next_id - count, next_id, dtype=np.int64)

    live.add(near_base(rng, 200), fresh(200))
    after()
    existing = np.array(sorted(live.model))
    unknown = np.array([900_000, 900_001], dtype=np.int64)
    live.delete(np.concatenate([rng.choice(existing, 150, replace=False), unknown]))
    after()

    # An upsert of replaced and new ids, some repeated: the last row of a repeated id counts.
    existing = np.array(sorted(live.model))
    ids = np.concatenate([rng.choice(existing, 60, replace=False), fresh(40)])
    ids = np.concatenate([ids, rng.choice(ids, 20, replace=False)])
    live.upsert(near_base(rng, ids.size), ids)
    after()

    # Empty the list that query 0 probes first: at nprobe 1 it finds nothing at all.
    top = live.index.search(QUERIES[:1], k=1, nprobe=1).ids[0, 0]
    list_no = list_of_id(live.index, int(top))
    emptied = live_ids_of_list(live.index, list_no)
    assert len(emptied) > 1
    live.delete(np.array(emptied))
    assert live_ids_of_list(live.index, list_no) == []
    assert (live.index.search(QUERIES[:1], k=K, nprobe=1).ids == -1).all()
    after()

    # Deleted ids come back through add; a delete repeats ids.
    gone = np.setdiff1d(np.concatenate([existing, np.array(emptied)]), np.array(sorted(live.model)))
    back = rng.choice(gone, min(50, gone.size), replace=False)
    live.add(near_base(rng, back.size), back)
    after()
    existing = np.array(sorted(live.model))
    repeated = rng.choice(existing, 30, replace=False)
    live.delete(np.concatenate([repeated, repeated[:10], repeated[:3]]))
    after()

    # The emptied list fills again by upsert; an upsert that names one id only twice.
    refill = np.array(emptied[: max(2, len(emptied) // 2)])
    live.upsert(BASE[refill], refill)
    twice = np.array([int(refill[0]), int(refill[0])])
    last = near_base(rng, 2)
    live.upsert(last, twice)
    np.testing.assert_array_equal(live.model[int(refill[0])], last[1])
    after()
    live.add(near_base(rng, 100), fresh(100))
    after()


@pytest.mark.parametrize("metric", ["ip", "l2", "cosine"])
def test_invariants_hold_after_every_batch_of_updates(tmp_path: Path, metric: str) -> None:
    live = Live(build_small(tmp_path, BASE, nlist=NLIST, nshards=4, metric=metric), metric)
    live.check()
    run_sequence(live, seed=len(metric), check=True)
    assert live.seq == 9


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_a_reopened_index_replays_to_the_same_state(tmp_path: Path, metric: str) -> None:
    live = Live(build_small(tmp_path, BASE, nlist=NLIST, nshards=4, metric=metric), metric)
    run_sequence(live, seed=7, check=False)
    before = {nprobe: live.index.search(QUERIES, k=K, nprobe=nprobe) for nprobe in (1, 4, NLIST)}
    ntotal, seq = live.index.ntotal, live.index.seq
    live.index.close()

    live.index = DistributedIndex.open(live.root)
    assert (live.index.ntotal, live.index.seq) == (ntotal, seq) == (len(live.model), live.seq)
    for nprobe, earlier in before.items():
        now = live.index.search(QUERIES, k=K, nprobe=nprobe)
        assert now.seq == earlier.seq == seq
        assert_same_neighbours(now.ids, now.distances, earlier.ids, earlier.distances)
    live.check()


# --- refused updates change nothing --------------------------------------------------------------


def log_size(root: Path) -> int:
    path = root / LOG
    return path.stat().st_size if path.exists() else 0


def vectors(count: int, seed: int = 0) -> np.ndarray:
    return near_base(np.random.default_rng(seed), count)


def with_nan() -> np.ndarray:
    rows = vectors(3)
    rows[1, 4] = np.nan
    return rows


REFUSED: dict[str, tuple[Callable[[DistributedIndex], Any], str]] = {
    "add of an existing id": (
        lambda ix: ix.add(vectors(2), [10_500, 5]),
        r"1 ids are already in the index \(first: \[5\]\); use upsert",
    ),
    "repeated id in one add": (
        lambda ix: ix.add(vectors(3), [10_501, 10_502, 10_501]),
        r"id 10501 appears more than once in this call",
    ),
    "wrong dimension": (
        lambda ix: ix.upsert(np.ones((2, DIM // 2), np.float32), [10_501, 10_502]),
        rf"vectors: dimension {DIM // 2} does not match the index dimension {DIM}",
    ),
    "NaN": (lambda ix: ix.add(with_nan(), [10_501, 10_502, 10_503]), r"vectors row 1 holds NaN or inf"),
    "negative id": (lambda ix: ix.add(vectors(2), [10_501, -3]), r"ids must be between 0 and 2\*\*63-1"),
    "float ids": (
        lambda ix: ix.add(vectors(2), [10_501.0, 10_502.0]),
        r"ids must be integers, found float64",
    ),
    "bool ids": (lambda ix: ix.upsert(vectors(2), [True, False]), r"ids must be integers, found bool"),
    "bool ids to delete": (lambda ix: ix.delete(np.array([True])), r"ids must be integers, found bool"),
    "more vectors than ids": (
        lambda ix: ix.add(vectors(3), [10_501, 10_502]),
        r"3 vectors but 2 ids: give one id per vector",
    ),
    "more ids than vectors": (lambda ix: ix.upsert(vectors(1), [1, 2]), r"1 vectors but 2 ids"),
    "attribute rows": (
        lambda ix: ix.add(vectors(2), [10_501, 10_502], attributes=[{"n": 1}]),
        r"1 attribute rows for 2 vectors",
    ),
    "no ids": (lambda ix: ix.delete([]), r"ids: expected a non-empty list of integers"),
}


@pytest.fixture
def updated(tmp_path: Path) -> Live:
    """An l2 index with one logged update, so that the log exists."""
    live = Live(build_small(tmp_path, BASE, nlist=NLIST, nshards=4, metric="l2"), "l2")
    live.add(vectors(20, seed=3), np.arange(NEW_IDS, NEW_IDS + 20))
    return live


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_a_refused_update_changes_nothing(updated: Live, case: str) -> None:
    call, message = REFUSED[case]
    before = updated.index.search(QUERIES, k=K, nprobe=4)
    size = log_size(updated.root)
    with pytest.raises(HpcragError, match=message):
        call(updated.index)
    assert log_size(updated.root) == size
    after = updated.index.search(QUERIES, k=K, nprobe=4)
    assert after.seq == before.seq == updated.index.seq == 1
    np.testing.assert_array_equal(after.ids, before.ids)
    updated.check()


def test_float16_overflow_is_refused(tmp_path: Path) -> None:
    root = build_small(tmp_path, BASE.astype(np.float16), nlist=8, nshards=2, metric="ip", dtype="float16")
    index = DistributedIndex.open(root)
    rows = vectors(3)
    rows[2, 0] = 1e6
    with pytest.raises(HpcragError, match=r"vectors row 2 exceeds the float16 range .* --dtype float32"):
        index.add(rows, [10_001, 10_002, 10_003])
    assert log_size(root) == 0 and index.seq == 0 and index.ntotal == len(BASE)
    assert index.add(rows[:2], [10_001, 10_002]).added == 2


# --- delete ------------------------------------------------------------------------------------


def test_unknown_ids_are_reported_by_a_delete(updated: Live) -> None:
    updated.delete(np.array([3, 777_777, 888_888, 3]))
    assert updated.seq == 2
    size = log_size(updated.root)
    result = updated.index.delete([777_777])
    assert (result.seq, result.deleted, result.unknown_ids) == (2, 0, (777_777,))
    assert log_size(updated.root) == size, "a delete that finds nothing logs nothing"
    updated.check()


def test_a_strict_delete_of_unknown_ids_deletes_nothing(updated: Live) -> None:
    size = log_size(updated.root)
    with pytest.raises(HpcragError, match=r"2 of 3 ids are not in the index .*nothing was deleted"):
        updated.index.delete([4, 777_777, 888_888], strict=True)
    assert log_size(updated.root) == size
    updated.check()
    result = updated.index.delete([4, 5], strict=True)
    assert (result.seq, result.deleted, result.unknown_ids) == (2, 2, ())
    del updated.model[4], updated.model[5]
    updated.seq = 2
    updated.check()


# --- many small updates ----------------------------------------------------------------------------


def test_many_small_adds_keep_few_delta_segments(tmp_path: Path) -> None:
    live = Live(build_small(tmp_path, BASE[:1000], nlist=NLIST, nshards=4, metric="l2"), "l2")
    live.model = dict(enumerate(BASE[:1000]))
    rng = np.random.default_rng(11)
    for call in range(200):
        live.add(near_base(rng, 5), np.arange(NEW_IDS + 5 * call, NEW_IDS + 5 * call + 5))
        if call % 40 == 39:
            live.delete(rng.choice(np.array(sorted(live.model)), 5, replace=False))
    deltas: dict[int, int] = {}
    for shard, segment in live.index._live.segments():
        deltas[shard] = deltas.get(shard, 0) + segment.delta
    assert max(deltas.values()) <= 12, deltas
    assert sum(deltas.values()) >= 4, "every shard received rows"
    assert live.seq == 205
    live.check()


# --- two indexes on one folder ----------------------------------------------------------------


def test_refresh_shows_what_another_writer_logged(tmp_path: Path) -> None:
    root = build_small(tmp_path, BASE, nlist=NLIST, nshards=4, metric="ip")
    writer, reader = Live(root, "ip"), Live(root, "ip")
    stale = reader.index.search(QUERIES, k=K, nprobe=4)
    new_ids = np.arange(NEW_IDS, NEW_IDS + 50)
    writer.add(vectors(50, seed=4), new_ids)
    writer.delete(np.arange(0, 300))
    writer.upsert(QUERIES[:5] * 3, np.arange(300, 305))  # rows every query ranks high
    writer.check()

    unchanged = reader.index.search(QUERIES, k=K, nprobe=4)
    assert unchanged.seq == 0 and reader.index.ntotal == len(BASE)
    np.testing.assert_array_equal(unchanged.ids, stale.ids)

    assert reader.index.refresh() == 3
    reader.model, reader.seq = dict(writer.model), writer.seq
    reader.check()
    assert reader.index.refresh() == 3, "nothing new: the same state"

    # A write through the reader first catches up with what it has not seen.
    more = np.arange(NEW_IDS + 50, NEW_IDS + 60)
    writer.add(vectors(10, seed=5), more)
    with pytest.raises(HpcragError, match=r"already in the index"):
        reader.index.add(vectors(1), [int(more[0])])
    assert reader.index.seq == 4
    reader.model, reader.seq = dict(writer.model), writer.seq
    reader.delete(np.array([int(more[0])]))
    assert writer.index.refresh() == 5
    writer.model, writer.seq = dict(reader.model), reader.seq
    writer.check()


# --- scan backends -------------------------------------------------------------------------------


def test_the_matmul_backend_after_updates(tmp_path: Path) -> None:
    root = build_small(tmp_path, BASE, nlist=NLIST, nshards=4, metric="l2")
    live = Live(root, "l2", scan_backend="matmul")
    run_sequence(live, seed=3, check=False)
    live.check()


def test_the_faiss_backend_refuses_an_updated_index(tmp_path: Path) -> None:
    root = build_small(tmp_path, BASE, nlist=NLIST, nshards=4, metric="l2")
    live = Live(root, "l2", scan_backend="faiss")
    live.check()
    with pytest.raises(HpcragError, match=r"the faiss scan backend .*--scan-backend kernels"):
        live.index.delete(np.array([1, 2, 3]))
    assert live.index.seq == 0, "refused before anything was logged"
    live.index.close()
    writer = DistributedIndex.open(root)
    writer.delete(np.array([1, 2, 3]))
    writer.close()
    reopened = DistributedIndex.open(root, scan_backend="faiss")
    with pytest.raises(HpcragError, match=r"faiss scan backend"):
        reopened.search(QUERIES, k=K, nprobe=4)
