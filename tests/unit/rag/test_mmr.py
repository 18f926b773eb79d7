"""MMR: relevance against redundancy, the per-document cap, determinism, and what it records."""

from __future__ import annotations

import numpy as np
import pytest

from hpcrag.rag.fusion import Candidate
from hpcrag.rag.mmr import mmr


def unit(*vectors):
    array = np.array(vectors, dtype=np.float32)
    return array / np.linalg.norm(array, axis=1, keepdims=True)


# rows 0 and 1 are near duplicates, row 2 points elsewhere, row 3 is a third direction
VECTORS = unit([1, 0, 0], [0.99, 0.14, 0], [0, 1, 0], [0, 0, 1])


def candidates(*scores):
    return [
        Candidate(row=row, chunk_id=100 + row, score=s, scores={"fused": s}) for row, s in enumerate(scores)
    ]


def test_lambda_one_is_plain_relevance_order():
    picked = mmr(candidates(1.0, 0.9, 0.5, 0.1), VECTORS, k=3, lambda_=1.0)
    assert [c.row for c in picked] == [0, 1, 2]


def test_a_near_duplicate_gives_way_to_a_different_passage():
    picked = mmr(candidates(1.0, 0.9, 0.7, 0.1), VECTORS, k=3, lambda_=0.7)
    # relevance is min-max normalised over the set: 1, 8/9, 6/9, 0; row 1 is 0.99 similar to row 0
    assert [c.row for c in picked] == [0, 2, 1]
    assert picked[0].scores["mmr"] == pytest.approx(0.7)
    assert picked[1].scores["mmr"] == pytest.approx(0.7 * 6 / 9, abs=1e-6)
    similarity = float(VECTORS[0] @ VECTORS[1])
    assert picked[2].scores["mmr"] == pytest.approx(0.7 * 8 / 9 - 0.3 * similarity, abs=1e-6)
    assert picked[0].score == 1.0 and picked[0].scores["fused"] == 1.0  # the score itself is kept


def test_cap_per_document():
    document_of = np.array([7, 7, 7, 8])
    picked = mmr(
        candidates(1.0, 0.9, 0.8, 0.1), VECTORS, k=3, lambda_=1.0, max_per_document=2, document_of=document_of
    )
    assert [c.row for c in picked] == [0, 1, 3]
    only_one = mmr(
        candidates(1.0, 0.9, 0.8, 0.1), VECTORS, k=4, lambda_=1.0, max_per_document=1, document_of=document_of
    )
    assert [c.row for c in only_one] == [0, 3]  # fewer than k when the cap leaves nothing else


def test_ties_go_to_the_earlier_candidate_and_equal_scores_are_all_relevant():
    same = unit([1, 0], [1, 0], [1, 0])
    picked = mmr(candidates(0.4, 0.4, 0.4), same, k=2)
    assert [c.row for c in picked] == [0, 1]
    assert picked[0].scores["mmr"] == pytest.approx(0.7)  # all-equal relevance normalises to 1


def test_rows_index_the_vectors():
    vectors = unit([1, 0], [0, 1], [1, 0.01], [0.01, 1])
    pool = [Candidate(row=2, chunk_id=2, score=1.0), Candidate(row=0, chunk_id=0, score=0.9),
            Candidate(row=1, chunk_id=1, score=0.2)]  # fmt: skip
    assert [c.row for c in mmr(pool, vectors, k=2, lambda_=0.5)] == [2, 1]


def test_edges_and_bad_arguments():
    assert mmr([], VECTORS, k=3) == []
    assert mmr(candidates(1.0), VECTORS, k=0) == []
    with pytest.raises(ValueError, match="lambda_"):
        mmr(candidates(1.0), VECTORS, k=1, lambda_=1.5)
    with pytest.raises(ValueError, match="document_of"):
        mmr(candidates(1.0), VECTORS, k=1, max_per_document=1)


def test_input_candidates_are_not_changed():
    pool = candidates(1.0, 0.5)
    mmr(pool, VECTORS, k=2)
    assert all("mmr" not in c.scores for c in pool)
