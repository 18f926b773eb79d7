"""The top-k selection and merge behind the reduction: both metric directions, padding, ties."""

from __future__ import annotations

import numpy as np
import pytest

from hpcrag.search import LocalComm, Metric, topk
from hpcrag.search.reduction import reduce_topk
from hpcrag.search.topk import merge_topk, select_topk


@pytest.mark.parametrize("metric", list(Metric))
def test_select_matches_a_full_sort(metric: Metric) -> None:
    rng = np.random.default_rng(3)
    scores = rng.standard_normal((50, 200)).astype(np.float32)
    ids = rng.permutation(50 * 200).reshape(50, 200).astype(np.int64)
    top_scores, top_ids = select_topk(scores, ids, 7, metric.larger_is_better, metric.worst)
    order = np.argsort(-scores if metric.larger_is_better else scores, axis=1)[:, :7]
    np.testing.assert_array_equal(top_ids, np.take_along_axis(ids, order, axis=1))
    np.testing.assert_array_equal(top_scores, np.take_along_axis(scores, order, axis=1))


@pytest.mark.parametrize("metric", [Metric.IP, Metric.L2])
def test_rows_already_in_order_are_kept_and_only_the_others_sorted(metric: Metric) -> None:
    rng = np.random.default_rng(8)
    scores = np.sort(rng.standard_normal((40, 10)).astype(np.float32), axis=1)
    scores = scores[:, ::-1].copy() if metric.larger_is_better else scores  # every row best first
    ids = rng.permutation(400).reshape(40, 10).astype(np.int64)
    scores[5, 3] = scores[5, 4]  # a tie whose ids must come in order
    ids[5, 3], ids[5, 4] = max(ids[5, 3], ids[5, 4]), min(ids[5, 3], ids[5, 4])
    scores[9] = scores[9, ::-1].copy()  # a row in reverse
    before = scores.copy(), ids.copy()
    top_scores, top_ids = select_topk(scores, ids, 10, metric.larger_is_better, metric.worst)
    key = -before[0] if metric.larger_is_better else before[0]
    order = np.lexsort((before[1], key), axis=1)
    np.testing.assert_array_equal(top_ids, np.take_along_axis(before[1], order, axis=1))
    np.testing.assert_array_equal(top_scores, np.take_along_axis(before[0], order, axis=1))
    assert top_ids[5, 3] < top_ids[5, 4] and top_ids[9].tolist() == before[1][9, ::-1].tolist()
    np.testing.assert_array_equal(ids, before[1])  # the caller's arrays are left as they were
    np.testing.assert_array_equal(scores, before[0])


@pytest.mark.parametrize("metric", [Metric.IP, Metric.L2])
def test_fewer_candidates_than_k_are_padded(metric: Metric) -> None:
    scores = np.array([[1.0, 3.0]], dtype=np.float32)
    top_scores, top_ids = select_topk(scores, np.array([[10, 11]]), 4, metric.larger_is_better, metric.worst)
    assert top_ids.tolist() == ([[11, 10, -1, -1]] if metric.larger_is_better else [[10, 11, -1, -1]])
    assert np.isinf(top_scores[0, 2:]).all()
    assert (top_scores[0, 2:] == metric.worst).all()


def test_equal_scores_order_by_id_and_merge_commutes() -> None:
    metric = Metric.L2
    a = (np.array([[0.5, 0.5, 0.9]], dtype=np.float32), np.array([[42, 7, 1]]))
    b = (np.array([[0.5, 0.1, 2.0]], dtype=np.float32), np.array([[3, 99, 5]]))
    ab = merge_topk(a, b, 4, metric.larger_is_better, metric.worst)
    ba = merge_topk(b, a, 4, metric.larger_is_better, metric.worst)
    assert ab[1].tolist() == ba[1].tolist() == [[99, 3, 7, 42]]
    np.testing.assert_array_equal(ab[0], np.array([[0.1, 0.5, 0.5, 0.5]], dtype=np.float32))


def test_empty_slots_lose_to_every_real_candidate() -> None:
    metric = Metric.IP
    empty = (np.full((1, 3), metric.worst, dtype=np.float32), np.full((1, 3), -1))
    real = (np.array([[-1e30, -5.0, 2.0]], dtype=np.float32), np.array([[1, 2, 3]]))
    assert merge_topk(empty, real, 3, True, metric.worst)[1].tolist() == [[3, 2, 1]]


def test_reduction_of_one_rank_is_the_identity() -> None:
    scores, ids = np.ones((2, 3), dtype=np.float32), np.arange(6).reshape(2, 3)
    out = reduce_topk(LocalComm(), scores, ids, 3, Metric.IP)
    assert out is not None and out[1] is ids


def reference_merge(a, b, k: int, larger_is_better: bool) -> list[list[int]]:
    """Each id at its best score, ordered by (score, id): the merge spelled out one row at a time."""
    out = []
    for row in range(a[1].shape[0]):
        best: dict[int, float] = {}
        for scores, ids in (a, b):
            for score, ident in zip(scores[row].tolist(), ids[row].tolist(), strict=True):
                if ident < 0:
                    continue
                if ident not in best or (score > best[ident] if larger_is_better else score < best[ident]):
                    best[ident] = score
        ranked = sorted(best.items(), key=lambda item: (-item[1] if larger_is_better else item[1], item[0]))
        out.append([ident for ident, _ in ranked[:k]] + [-1] * max(0, k - len(ranked)))
    return out


@pytest.mark.parametrize("metric", [Metric.IP, Metric.L2])
@pytest.mark.parametrize("k", [1, 10, 300])
def test_merge_of_sets_sharing_ids_keeps_each_once_at_its_best_score(metric: Metric, k: int) -> None:
    rng = np.random.default_rng(k)
    sets = []
    for _ in range(2):
        ids = np.stack([rng.permutation(2 * k + 5)[:k] for _ in range(40)]).astype(np.int64)
        scores = rng.standard_normal((40, k)).astype(np.float32).round(1)  # rounding makes ties
        ids[rng.random((40, k)) < 0.1] = -1
        scores[ids < 0] = metric.worst
        sets.append(select_topk(scores, ids, k, metric.larger_is_better, metric.worst))
    scores, ids = merge_topk(sets[0], sets[1], k, metric.larger_is_better, metric.worst)
    assert ids.tolist() == reference_merge(sets[0], sets[1], k, metric.larger_is_better)
    flipped = merge_topk(sets[1], sets[0], k, metric.larger_is_better, metric.worst)
    np.testing.assert_array_equal(flipped[1], ids)
    np.testing.assert_array_equal(flipped[0], scores)


@pytest.mark.parametrize("metric", [Metric.IP, Metric.L2])
def test_rows_one_set_leaves_empty_are_the_other_sets_rows_ordered(metric: Metric) -> None:
    rng = np.random.default_rng(11)
    k, nq = 6, 30
    sets = []
    for empty_rows in (slice(0, 10), slice(5, 15)):  # rows 5-9 empty in both, 0-4 and 10-14 in one
        ids = np.stack([rng.permutation(20)[:k] for _ in range(nq)]).astype(np.int64)
        scores = rng.standard_normal((nq, k)).astype(np.float32).round(1)  # unsorted, with ties
        ids[empty_rows] = -1
        scores[ids < 0] = metric.worst
        sets.append((scores, ids))
    scores, ids = merge_topk(sets[0], sets[1], k, metric.larger_is_better, metric.worst)
    assert ids.tolist() == reference_merge(sets[0], sets[1], k, metric.larger_is_better)
    assert ids[5:10].tolist() == [[-1] * k] * 5
    for row in range(nq):
        best: dict[int, float] = {}
        for set_scores, set_ids in sets:
            for score, ident in zip(set_scores[row].tolist(), set_ids[row].tolist(), strict=True):
                better = ident not in best or (score > best[ident]) == metric.larger_is_better
                if ident >= 0 and better:
                    best[ident] = score
        assert scores[row].tolist() == [best.get(i, metric.worst) for i in ids[row].tolist()]


@pytest.mark.parametrize("larger_is_better", [True, False])
def test_wide_merges_find_the_shared_ids_the_pairwise_comparison_finds(larger_is_better: bool) -> None:
    """The sort a wide merge uses against the pairwise comparison of narrow ones: same slots hidden,
    with ids in both sets at better, worse and equal scores, and empty slots."""
    rng = np.random.default_rng(21)
    for width in (3, 40, 200):
        a_ids = np.stack([rng.permutation(3 * width)[:width] for _ in range(60)]).astype(np.int64)
        b_ids = np.stack([rng.permutation(3 * width)[:width] for _ in range(60)]).astype(np.int64)
        a_ids[rng.random(a_ids.shape) < 0.2] = -1
        b_ids[rng.random(b_ids.shape) < 0.2] = -1
        a = (rng.integers(0, 4, a_ids.shape).astype(np.float32), a_ids)  # few values: equal scores
        b = (rng.integers(0, 4, b_ids.shape).astype(np.float32), b_ids)
        paired = topk._shared_ids_paired(np, a, b, larger_is_better)
        ranked = topk._shared_ids_sorted(np, a, b, larger_is_better)
        assert paired[0].any() and paired[1].any()
        np.testing.assert_array_equal(ranked[0], paired[0])
        np.testing.assert_array_equal(ranked[1], paired[1])


def test_a_large_k_merges_both_sets_whole() -> None:
    """k = 20,000 for 50 queries, ids shared at a third of the slots: a pairwise comparison of slots
    would take minutes (2 x 10^10 pairs); the merge keeps each id once, at its better score."""
    rng = np.random.default_rng(5)
    k = 20_000
    a_ids = np.stack([rng.permutation(k) for _ in range(50)])
    b_ids = np.where(rng.random((50, k)) < 1 / 3, a_ids, a_ids + k)  # a third shared, slot for slot
    a = (rng.random((50, k)).astype(np.float32), a_ids)
    b = (rng.random((50, k)).astype(np.float32), b_ids)
    scores, ids = merge_topk(
        select_topk(*a, k, True, -np.inf), select_topk(*b, k, True, -np.inf), k, True, -np.inf
    )
    shared = b_ids == a_ids
    candidates = np.concatenate(
        [np.where(shared, np.maximum(a[0], b[0]), a[0]), np.where(shared, -np.inf, b[0])], 1
    )
    np.testing.assert_array_equal(scores, -np.sort(-candidates, axis=1)[:, :k])
    assert all(np.unique(row).size == k for row in ids)
