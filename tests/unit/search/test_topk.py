"""The top-k selection and merge behind the reduction: both metric directions, padding, ties."""

from __future__ import annotations

import numpy as np
import pytest

from hpcrag.search import LocalComm, Metric
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
