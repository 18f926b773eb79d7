"""Filtered search over attributes given with updates: "exact" equals brute force over the matching
rows, "ivf" equals faiss IVF-Flat (same centroids) over only the matching rows (the pre-filter
invariant), "auto" keeps recall at every selectivity and says which ran; deleted rows never appear.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hpcrag.errors import HpcragError
from hpcrag.search import DistributedIndex, Metric, reference
from hpcrag.search.metric import prepare
from hpcrag.search.synthetic import clustered
from tests.search_helpers import assert_same_neighbours, build_small, centroids_of

N, DIM, NLIST, K = 6000, 24, 16, 10
BASE, QUERIES = clustered(N, 40, DIM, clusters=16, spread=0.5, seed=9)
BUILT = 1000  # the index is built on the first rows; the rest arrive through add
WITHOUT_ATTRIBUTES = range(900, 1000)  # base rows never given attributes
SOURCES = ("faq", "blog", "news")
FIRST_DAY = date(2024, 1, 1)

Row = Mapping[str, Any]


def attribute_rows(seed: int) -> list[dict[str, Any]]:
    """bucket uniform in 0..999 (selectivity by threshold), a source (sometimes absent), a date in 2024."""
    rng = np.random.default_rng(seed)
    rows = []
    for bucket, source, day in zip(
        rng.integers(0, 1000, N).tolist(),
        rng.integers(0, 4, N).tolist(),
        rng.integers(0, 366, N).tolist(),
        strict=True,
    ):
        row: dict[str, Any] = {"bucket": bucket, "date": (FIRST_DAY + timedelta(days=day)).isoformat()}
        if source < len(SOURCES):
            row["source"] = SOURCES[source]
        rows.append(row)
    return rows


ATTRIBUTES = attribute_rows(17)


def has(row: Row, name: str, test: Callable[[Any], bool]) -> bool:
    """Whether the row holds `name` and its value passes `test` (a missing value matches nothing)."""
    return name in row and test(row[name])


# Each filter with the same condition written in Python, for the ground truth.
FILTERS: dict[str, tuple[dict[str, Any], Callable[[Row], bool]]] = {
    "50%": ({"bucket": {"lt": 500}}, lambda row: has(row, "bucket", lambda b: b < 500)),
    "10%": ({"bucket": {"lt": 100}}, lambda row: has(row, "bucket", lambda b: b < 100)),
    "1%": ({"bucket": {"lt": 10}}, lambda row: has(row, "bucket", lambda b: b < 10)),
    "0.1%": ({"bucket": 0}, lambda row: has(row, "bucket", lambda b: b == 0)),
    "str and time": (
        {"source": "faq", "date": {"gte": "2024-07-01"}},
        lambda row: (
            has(row, "source", lambda s: s == "faq") and has(row, "date", lambda d: d >= "2024-07-01")
        ),
    ),
    "or, in, not": (  # "not" also matches the rows without a bucket
        {"or": [{"source": {"in": ["blog", "news"]}}, {"not": {"bucket": {"gte": 50}}}]},
        lambda row: (
            has(row, "source", lambda s: s in ("blog", "news")) or not has(row, "bucket", lambda b: b >= 50)
        ),
    ),
    "ne skips a missing source": (
        {"source": {"ne": "faq"}, "bucket": {"lt": 100}},
        lambda row: has(row, "source", lambda s: s != "faq") and has(row, "bucket", lambda b: b < 100),
    ),
}


@dataclass
class Filtered:
    """An index whose rows carry attributes, and what it must hold: id -> (vector, attributes)."""

    root: Path
    metric: Metric
    index: DistributedIndex
    vectors: dict[int, np.ndarray]
    attributes: dict[int, Row]  # {} for a row without attributes

    def matching(self, predicate: Callable[[Row], bool]) -> tuple[np.ndarray, np.ndarray]:
        ids = np.array([i for i in sorted(self.vectors) if predicate(self.attributes[i])], dtype=np.int64)
        rows = (
            np.stack([self.vectors[i] for i in ids.tolist()]) if ids.size else np.empty((0, DIM), np.float32)
        )
        return ids, rows


def make_filtered(root: Path, metric: str) -> Filtered:
    index = DistributedIndex.open(root)
    attributed = [i for i in range(BUILT) if i not in WITHOUT_ATTRIBUTES]
    declared = index.upsert(
        BASE[attributed],
        attributed,
        attributes=[ATTRIBUTES[i] for i in attributed],
        declare={"bucket": "int", "source": "str", "date": "time"},
    )
    assert (declared.replaced, declared.added, declared.seq) == (len(attributed), 0, 1)
    assert declared.declared == {"bucket": "int", "source": "str", "date": "time"}
    for lo, hi in ((BUILT, 3500), (3500, N)):
        result = index.add(BASE[lo:hi], np.arange(lo, hi), attributes=ATTRIBUTES[lo:hi])
        assert (result.added, result.declared) == (hi - lo, None)
    assert index.schema.columns == (("bucket", "int"), ("source", "str"), ("date", "time"))
    assert (index.ntotal, index.seq) == (N, 3)
    attributes: dict[int, Row] = {i: ATTRIBUTES[i] for i in range(N)}
    attributes.update({i: {} for i in WITHOUT_ATTRIBUTES})
    return Filtered(root, Metric(metric), index, dict(enumerate(BASE)), attributes)


@pytest.fixture(scope="module", params=["l2", "ip"])
def filtered(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Filtered:
    """Shared by the tests that only search it."""
    metric = request.param
    return make_filtered(build_small(tmp_path_factory.mktemp(metric), BASE[:BUILT], metric=metric), metric)


def brute_force(metric: Metric, ids: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """The true top-k ids per query by NumPy, shorter than k when fewer rows match."""
    queries, rows = prepare(QUERIES, metric, "queries"), prepare(rows, metric, "rows")
    if metric is Metric.L2:
        keys = (queries**2).sum(1)[:, None] - 2 * queries @ rows.T + (rows**2).sum(1)[None, :]
    else:
        keys = -(queries @ rows.T)
    return ids[np.argsort(keys, axis=1, kind="stable")[:, :k]]


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of the true neighbours found (the truth may hold fewer than k)."""
    if truth.shape[1] == 0:
        return 1.0
    shares = [len(set(f.tolist()) & set(t.tolist())) / t.size for f, t in zip(found, truth, strict=True)]
    return float(np.mean(shares))


def reference_over(
    metric: Metric, ids: np.ndarray, rows: np.ndarray, root: Path, nprobe: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """(distances, ids) of faiss over only `rows`: IVF-Flat with the index's centroids, or brute force."""
    if nprobe is None:
        index = reference.exact(rows, metric, ids)
    else:
        index = reference.ivf_flat(rows, centroids_of(root), metric, ids)
    return reference.search(index, QUERIES, K, metric, nprobe)


# --- the strategies --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("selectivity", "nprobe", "expected"),
    [("50%", 4, "ivf"), ("50%", 2, None), ("10%", 2, None), ("1%", 2, "exact"), ("0.1%", 2, "exact")],
)
def test_auto_keeps_recall_at_every_selectivity(
    filtered: Filtered, selectivity: str, nprobe: int, expected: str | None
) -> None:
    spec, predicate = FILTERS[selectivity]
    ids, rows = filtered.matching(predicate)
    target = float(selectivity[:-1]) / 100
    assert target / 2 <= ids.size / N <= target * 2
    result = filtered.index.search(QUERIES, k=K, nprobe=nprobe, filter=spec)
    assert result.strategy in ("ivf", "exact")
    if expected is not None:
        assert result.strategy == expected
    truth = brute_force(filtered.metric, ids, rows, K)
    assert recall(result.ids, truth) >= 0.95
    assert ((result.ids == -1).sum(axis=1) == max(0, K - ids.size)).all()
    assert np.isin(result.ids[result.ids >= 0], ids).all()


@pytest.mark.parametrize("name", sorted(FILTERS))
def test_exact_equals_brute_force_over_the_matching_rows(filtered: Filtered, name: str) -> None:
    spec, predicate = FILTERS[name]
    ids, rows = filtered.matching(predicate)
    result = filtered.index.search(QUERIES, k=K, nprobe=1, filter=spec, strategy="exact")
    assert result.strategy == "exact" and result.seq == 3
    distances, expected = reference_over(filtered.metric, ids, rows, filtered.root, None)
    assert_same_neighbours(result.ids, result.distances, expected, distances)


@pytest.mark.parametrize("name", sorted(FILTERS))
@pytest.mark.parametrize("nprobe", [1, 4])
def test_ivf_equals_faiss_over_only_the_matching_rows(filtered: Filtered, name: str, nprobe: int) -> None:
    spec, predicate = FILTERS[name]
    ids, rows = filtered.matching(predicate)
    result = filtered.index.search(QUERIES, k=K, nprobe=nprobe, filter=spec, strategy="ivf")
    assert result.strategy == "ivf"
    distances, expected = reference_over(filtered.metric, ids, rows, filtered.root, nprobe)
    assert_same_neighbours(result.ids, result.distances, expected, distances)


def test_a_compiled_filter_works_like_its_spec(filtered: Filtered) -> None:
    spec, _ = FILTERS["str and time"]
    compiled = filtered.index.compile_filter(spec)
    by_spec = filtered.index.search(QUERIES, k=K, nprobe=4, filter=spec, strategy="ivf")
    by_filter = filtered.index.search(QUERIES, k=K, nprobe=4, filter=compiled, strategy="ivf")
    np.testing.assert_array_equal(by_filter.ids, by_spec.ids)


def test_no_filter_with_exact_is_brute_force(filtered: Filtered) -> None:
    ids = np.arange(N)
    result = filtered.index.search(QUERIES, k=K, nprobe=1, strategy="exact")
    assert result.strategy == "exact" and (result.shards_touched == 4).all()
    distances, expected = reference_over(filtered.metric, ids, BASE, filtered.root, None)
    assert_same_neighbours(result.ids, result.distances, expected, distances)


# --- deletes, empty results, refusals -----------------------------------------------------------


def test_deleted_rows_never_appear(tmp_path: Path) -> None:
    state = make_filtered(build_small(tmp_path, BASE[:BUILT], metric="l2"), "l2")
    spec, predicate = FILTERS["1%"]
    ids, _ = state.matching(predicate)
    gone = ids[::2]
    assert state.index.delete(gone).deleted == gone.size
    moved = ids[1:6:2]  # upserted with new vectors: the old rows must not come back either
    fresh = QUERIES[: moved.size] * 2
    state.index.upsert(fresh, moved, attributes=[{"bucket": 3} for _ in moved])
    for ident in gone.tolist():
        del state.vectors[ident]
    for ident, vector in zip(moved.tolist(), fresh, strict=True):
        state.vectors[ident], state.attributes[ident] = vector, {"bucket": 3}
    survivors, rows = state.matching(predicate)
    assert survivors.size == ids.size - gone.size
    for strategy in ("auto", "ivf", "exact"):
        for nprobe in (1, 4, NLIST):
            result = state.index.search(QUERIES, k=K, nprobe=nprobe, filter=spec, strategy=strategy)
            assert not np.isin(result.ids, gone).any(), (strategy, nprobe)
            probes = None if result.strategy == "exact" else nprobe
            distances, expected = reference_over(state.metric, survivors, rows, state.root, probes)
            assert_same_neighbours(result.ids, result.distances, expected, distances)
    unfiltered = state.index.search(QUERIES, k=K, nprobe=NLIST, strategy="exact")
    assert not np.isin(unfiltered.ids, gone).any()


@pytest.mark.parametrize("strategy", ["auto", "ivf", "exact"])
@pytest.mark.parametrize("spec", [{"bucket": 5000}, {"source": {"in": []}}, {"source": "nowhere"}])
def test_a_filter_that_matches_nothing_gives_no_neighbours(
    filtered: Filtered, strategy: str, spec: dict[str, Any]
) -> None:
    result = filtered.index.search(QUERIES, k=K, nprobe=4, filter=spec, strategy=strategy)
    assert (result.ids == -1).all()
    assert np.isinf(result.distances).all()


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"colour": "red"}, r"unknown attribute \W?colour\W?.*bucket, source, date"),
        ({"bucket": "ten"}, r"bucket.*must be an integer"),
        ({"date": {"gte": True}}, r"date.*must be a time"),
        ({"source": {"lt": "faq"}}, r"source.*range"),
    ],
)
def test_a_filter_that_does_not_fit_the_schema_is_refused(
    filtered: Filtered, spec: dict[str, Any], message: str
) -> None:
    with pytest.raises(HpcragError, match=message):
        filtered.index.search(QUERIES, k=K, nprobe=4, filter=spec)


def test_an_unknown_strategy_is_refused(filtered: Filtered) -> None:
    with pytest.raises(HpcragError, match=r"unknown filter strategy 'fast'; use one of auto, ivf, exact"):
        filtered.index.search(QUERIES, k=K, nprobe=4, filter={"bucket": 1}, strategy="fast")


def test_a_filter_on_an_index_without_attributes_says_how_to_declare(tmp_path: Path) -> None:
    index = DistributedIndex.open(build_small(tmp_path, BASE[:BUILT]))
    with pytest.raises(HpcragError, match=r"unknown attribute \W?bucket\W?: this index has no attributes"):
        index.search(QUERIES, k=K, filter={"bucket": 1})


def test_attributes_survive_a_reopen(tmp_path: Path) -> None:
    state = make_filtered(build_small(tmp_path, BASE[:BUILT], metric="l2"), "l2")
    spec, predicate = FILTERS["str and time"]
    before = state.index.search(QUERIES, k=K, nprobe=2, filter=spec)
    state.index.close()
    reopened = DistributedIndex.open(state.root)
    assert reopened.schema == state.index.schema and reopened.seq == 3
    after = reopened.search(QUERIES, k=K, nprobe=2, filter=spec)
    assert after.strategy == before.strategy
    assert_same_neighbours(after.ids, after.distances, before.ids, before.distances)
    ids, rows = state.matching(predicate)
    distances, expected = reference_over(state.metric, ids, rows, state.root, None)
    exact = reopened.search(QUERIES, k=K, nprobe=2, filter=spec, strategy="exact")
    assert_same_neighbours(exact.ids, exact.distances, expected, distances)


def test_a_new_attribute_is_inferred_and_older_rows_lack_it(tmp_path: Path) -> None:
    state = make_filtered(build_small(tmp_path, BASE[:BUILT], metric="l2"), "l2")
    ids = np.arange(N, N + 4)
    rows = [{"lang": "en", "bucket": 1}, {"lang": "de"}, None, {"lang": "en", "seen": "2024-02-02T10:00:00Z"}]
    result = state.index.add(QUERIES[:4], ids, attributes=rows)
    assert result.declared == {"lang": "str", "seen": "time"}
    assert state.index.schema.names == ("bucket", "source", "date", "lang", "seen")
    english = state.index.search(QUERIES, k=K, filter={"lang": "en"}, strategy="exact")
    assert set(english.ids[english.ids >= 0].tolist()) == {N, N + 3}
    assert (english.ids[:, 2:] == -1).all()
    later = state.index.search(
        QUERIES, k=K, filter={"seen": {"gt": "2024-02-02"}}, strategy="ivf", nprobe=NLIST
    )
    assert set(later.ids[later.ids >= 0].tolist()) == {N + 3}
    not_english = state.index.search(QUERIES, k=K, nprobe=NLIST, filter={"lang": {"ne": "en"}})
    assert set(not_english.ids[not_english.ids >= 0].tolist()) == {N + 1}, "a missing lang is not ne"


# --- two writers -------------------------------------------------------------------------------


def test_a_stale_writer_puts_its_attributes_in_their_own_columns(tmp_path: Path) -> None:
    root = build_small(tmp_path, BASE[:BUILT], metric="l2")
    first, second = DistributedIndex.open(root), DistributedIndex.open(root)
    first.add(QUERIES[:2], [7000, 7001], attributes=[{"x": 1}, {"x": 2}])
    second.add(QUERIES[2:4], [7002, 7003], attributes=[{"y": 7}, {"y": 8}])
    reopened = DistributedIndex.open(root)
    assert reopened.schema.names == ("x", "y")
    assert reopened.search(QUERIES[2:3], k=1, filter={"y": 7}, strategy="exact").ids[0, 0] == 7002
    assert (reopened.search(QUERIES, k=1, filter={"x": 7}, strategy="exact").ids == -1).all()


def test_a_stale_writer_with_a_conflicting_type_leaves_the_index_usable(tmp_path: Path) -> None:
    root = build_small(tmp_path, BASE[:BUILT], metric="l2")
    first, second = DistributedIndex.open(root), DistributedIndex.open(root)
    first.add(QUERIES[:2], [7000, 7001], attributes=[{"x": "a"}, {"x": "b"}])
    with pytest.raises(HpcragError, match=r"attribute 'x' of row 0 must be a string"):
        second.add(QUERIES[2:4], [7002, 7003], attributes=[{"x": 7}, {"x": 8}])
    reopened = DistributedIndex.open(root)
    assert (reopened.seq, reopened.ntotal) == (1, BUILT + 2)
