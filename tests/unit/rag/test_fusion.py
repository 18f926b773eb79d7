"""Fusion of dense and BM25 lists: convex (min-max, alpha), RRF, single sides, ids and determinism."""

from __future__ import annotations

import numpy as np
import pytest

from hpcrag.errors import HpcragError
from hpcrag.rag.fusion import FUSION_MODES, fuse

IDS = np.arange(1000, 1010, dtype=np.int64)  # chunk id of row r is 1000 + r

DENSE = ([3, 1, 5], [0.9, 0.7, 0.5])
SPARSE = ([1, 7, 3], [12.0, 8.0, 4.0])


def by_row(candidates):
    return {c.row: c for c in candidates}


def test_convex_normalises_each_side_and_weights_dense_by_alpha():
    fused = by_row(fuse("convex", DENSE, SPARSE, chunk_ids=IDS, alpha=0.7))
    # dense: 3 -> 1, 1 -> 0.5, 5 -> 0; bm25: 1 -> 1, 7 -> 0.5, 3 -> 0
    assert fused[3].score == pytest.approx(0.7)
    assert fused[1].score == pytest.approx(0.7 * 0.5 + 0.3 * 1.0)
    assert fused[5].score == pytest.approx(0.0)
    assert fused[7].score == pytest.approx(0.3 * 0.5)  # missing on the dense side: 0 there
    assert fused[1].scores == pytest.approx({"dense": 0.7, "bm25": 12.0, "fused": 0.65})
    assert fused[7].scores.keys() == {"bm25", "fused"}
    assert fused[3].ranks == {"dense": 1, "bm25": 3}
    assert fused[7].ranks == {"bm25": 2}
    assert fused[5].chunk_id == 1005


def test_convex_order_is_by_score_then_row():
    assert [c.row for c in fuse("convex", DENSE, SPARSE, chunk_ids=IDS)] == [3, 1, 7, 5]
    tied = fuse("convex", ([4, 2], [0.5, 0.5]), None, chunk_ids=IDS, alpha=0.7)
    assert [(c.row, c.score) for c in tied] == [(2, 0.7), (4, 0.7)]  # an all-equal side normalises to 1


def test_alpha_extremes_follow_one_side():
    assert [c.row for c in fuse("convex", DENSE, SPARSE, chunk_ids=IDS, alpha=1.0)][:3] == [3, 1, 5]
    assert [c.row for c in fuse("convex", DENSE, SPARSE, chunk_ids=IDS, alpha=0.0)][:3] == [1, 7, 3]


def test_rrf_sums_reciprocal_ranks():
    fused = by_row(fuse("rrf", DENSE, SPARSE, chunk_ids=IDS, rrf_k=60))
    assert fused[1].score == pytest.approx(1 / 62 + 1 / 61)
    assert fused[3].score == pytest.approx(1 / 61 + 1 / 63)
    assert fused[7].score == pytest.approx(1 / 62)
    assert [c.row for c in fuse("rrf", DENSE, SPARSE, chunk_ids=IDS)] == [1, 3, 7, 5]


def test_ranks_come_from_scores_not_input_order():
    shuffled = ([5, 3, 1], [0.5, 0.9, 0.7])
    fused = by_row(fuse("rrf", shuffled, None, chunk_ids=IDS))
    assert {row: c.ranks["dense"] for row, c in fused.items()} == {3: 1, 1: 2, 5: 3}


@pytest.mark.parametrize(
    ("mode", "rows", "side"), [("dense", [3, 1, 5], "dense"), ("bm25", [1, 7, 3], "bm25")]
)
def test_single_side_modes_use_raw_scores_of_that_side_only(mode, rows, side):
    fused = fuse(mode, DENSE, SPARSE, chunk_ids=IDS)
    assert [c.row for c in fused] == rows
    assert all(c.scores.keys() == {side, "fused"} and c.score == c.scores[side] for c in fused)


def test_padding_rows_duplicates_and_missing_sides():
    # an index pads short results with -1; a row listed twice keeps its best score
    fused = fuse("convex", ([2, -1, 2], [0.2, 0.0, 0.8]), None, chunk_ids=IDS)
    assert [(c.row, c.scores["dense"]) for c in fused] == [(2, 0.8)]
    assert fuse("rrf", None, None, chunk_ids=IDS) == []
    empty = (np.empty(0, np.int64), np.empty(0, np.float32))
    assert [c.row for c in fuse("convex", empty, SPARSE, chunk_ids=IDS)] == [1, 7, 3]


def test_chunk_ids_from_a_callable():
    fused = fuse("convex", DENSE, None, chunk_ids=lambda row: row * 10)
    assert [c.chunk_id for c in fused] == [30, 10, 50]


def test_bad_settings_are_user_errors():
    with pytest.raises(HpcragError, match=r"unknown fusion mode 'hybrid'.*convex, rrf, dense, bm25"):
        fuse("hybrid", DENSE, SPARSE, chunk_ids=IDS)
    with pytest.raises(HpcragError, match=r"alpha 1.5 is outside \[0, 1\]"):
        fuse("convex", DENSE, SPARSE, chunk_ids=IDS, alpha=1.5)
    with pytest.raises(HpcragError, match="RRF k 0 must be positive"):
        fuse("rrf", DENSE, SPARSE, chunk_ids=IDS, rrf_k=0)
    assert FUSION_MODES == ("convex", "rrf", "dense", "bm25")


def test_fused_candidates_do_not_share_dicts():
    first, second = fuse("convex", DENSE, SPARSE, chunk_ids=IDS)[:2]
    first.scores["rerank"] = 1.0
    assert "rerank" not in second.scores
