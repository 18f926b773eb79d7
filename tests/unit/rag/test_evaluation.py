"""Ranking metrics on hand-computed cases, the interleaved runner and the paired bootstrap."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from hpcrag.errors import HpcragError
from hpcrag.rag.evalset import QaItem, RelevantRef
from hpcrag.rag.evaluation import (
    format_report,
    hit_at_k,
    mrr_at_k,
    ndcg_at_k,
    paired_bootstrap_ci,
    percentile,
    run_eval,
)

F, T = False, True


def _item(qid: str) -> QaItem:
    return QaItem(id=qid, question=f"question {qid}?", relevant=(RelevantRef("faq.html", contains=qid),))


def _by_id(item: QaItem, row: str) -> bool:
    return row == item.id


def test_hit_at_k() -> None:
    assert hit_at_k([F, T, F, T], 1) == 0.0
    assert hit_at_k([F, T, F, T], 2) == 1.0
    assert hit_at_k([], 10) == 0.0


def test_mrr_at_k() -> None:
    assert mrr_at_k([F, T, F, T], 10) == 0.5
    assert mrr_at_k([F, F, T], 2) == 0.0
    assert mrr_at_k([F, F, T], 3) == pytest.approx(1 / 3)


def test_ndcg_at_k_hand_computed() -> None:
    # Relevant at ranks 2 and 4 of two relevant: (1/log2 3 + 1/log2 5) / (1 + 1/log2 3).
    assert ndcg_at_k([F, T, F, T], 10, n_relevant=2) == pytest.approx(1.0616063 / 1.6309298, abs=1e-6)
    # Three relevant, ideal capped at k=2: DCG@2 = 1, ideal = 1 + 1/log2 3.
    assert ndcg_at_k([T, F, T], 2, n_relevant=3) == pytest.approx(1 / 1.6309298, abs=1e-6)
    # A second relevant chunk that was never retrieved halves nothing at rank 1 but lowers the score.
    assert ndcg_at_k([T], 10, n_relevant=1) == 1.0
    assert ndcg_at_k([T], 10, n_relevant=2) == pytest.approx(1 / 1.6309298, abs=1e-6)
    assert ndcg_at_k([F, F], 10, n_relevant=1) == 0.0


def test_ndcg_count_defaults_to_and_is_raised_to_the_relevant_rows_found() -> None:
    assert ndcg_at_k([F, T], 10) == pytest.approx(1 / math.log2(3))
    assert ndcg_at_k([T, T], 10, n_relevant=1) == 1.0


def test_metrics_reject_k_below_one() -> None:
    with pytest.raises(ValueError, match="k must be at least 1"):
        hit_at_k([T], 0)


def test_percentile_interpolates() -> None:
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5
    assert percentile([float(v) for v in range(1, 101)], 99) == pytest.approx(99.01)
    with pytest.raises(ValueError):
        percentile([], 50)


def test_methods_are_called_in_an_order_rotated_per_round() -> None:
    calls: list[str] = []

    def method(name: str):
        def run(item: QaItem) -> list[str]:
            calls.append(name)
            return [item.id]

        return run

    items = [_item(f"q{i}") for i in range(3)]
    methods = {name: method(name) for name in ("bm25", "dense", "hybrid")}
    report = run_eval(items, methods, _by_id, repeats=2, warmup=1)
    assert calls[:3] == ["bm25", "dense", "hybrid"]  # the untimed warm-up
    rounds = [calls[i : i + 3] for i in range(3, len(calls), 3)]
    assert rounds == [
        ["bm25", "dense", "hybrid"],
        ["dense", "hybrid", "bm25"],
        ["hybrid", "bm25", "dense"],
        ["bm25", "dense", "hybrid"],
        ["dense", "hybrid", "bm25"],
        ["hybrid", "bm25", "dense"],
    ]
    assert [m.calls for m in report.methods] == [6, 6, 6]


def test_run_eval_scores_each_method() -> None:
    items = [_item("a"), _item("b")]
    rankings = {
        "bm25": {"a": ["x", "a"], "b": ["x", "y", "z"]},  # rank 2, then a miss
        "hybrid": {"a": ["a", "x"], "b": ["b", "b"]},  # rank 1 twice; two relevant rows for b
    }
    methods = {name: (lambda item, r=ranks: r[item.id]) for name, ranks in rankings.items()}
    report = run_eval(items, methods, _by_id, ks=(1, 2), warmup=0)
    bm25, hybrid = report.methods
    assert (bm25.name, bm25.n, bm25.hits, bm25.mrr) == ("bm25", 2, {1: 0.0, 2: 0.5}, 0.25)
    assert hybrid.hits == {1: 1.0, 2: 1.0}
    assert hybrid.mrr == 1.0
    # Question b's pooled relevant count is 2 (hybrid's two rows); bm25 found none of them.
    assert [q.relevant_count for q in report.questions] == [1, 2]
    assert hybrid.ndcg == 1.0
    assert bm25.ndcg == pytest.approx((1 / math.log2(3) + 0.0) / 2)
    assert report.questions[0].first_relevant_rank == {"bm25": 2, "hybrid": 1}
    assert report.questions[1].first_relevant_rank == {"bm25": None, "hybrid": 1}
    assert bm25.p50_ms >= 0.0 and bm25.p99_ms >= bm25.p50_ms


def test_relevant_count_overrides_the_pooled_count() -> None:
    report = run_eval(
        [_item("a")], {"hybrid": lambda item: ["a"]}, _by_id, warmup=0, relevant_count=lambda i: 2
    )
    assert report.methods[0].ndcg == pytest.approx(1 / 1.6309298, abs=1e-6)


def test_paired_bootstrap_ci_covers_the_true_difference_about_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(7)
    covered = 0
    for trial in range(200):
        other = rng.uniform(0.0, 1.0, size=60)
        reference = other + 0.1 + rng.normal(0.0, 0.2, size=60)  # true mean difference 0.1
        _, low, high = paired_bootstrap_ci(reference, other, resamples=2000, seed=trial)
        covered += low <= 0.1 <= high
    assert 0.88 <= covered / 200 <= 0.99


def test_paired_bootstrap_ci_is_centred_on_the_mean_difference_and_deterministic() -> None:
    rng = np.random.default_rng(11)
    other = rng.uniform(0.0, 1.0, size=400)
    reference = other + 0.1 + rng.normal(0.0, 0.2, size=400)
    mean, low, high = paired_bootstrap_ci(reference, other, seed=3)
    assert mean == pytest.approx(float(np.mean(reference - other)))
    assert low < mean < high
    assert low > 0.0  # the lead is resolved: standard error 0.2 / sqrt(400) = 0.01
    assert high - low == pytest.approx(2 * 1.96 * 0.2 / 20, rel=0.2)
    assert paired_bootstrap_ci(reference, other, seed=3) == (mean, low, high)


def test_comparisons_judge_the_reference_against_each_method() -> None:
    items = [_item(f"q{i}") for i in range(20)]
    methods = {
        "bm25": lambda item: ["x", item.id],  # always rank 2
        "dense": lambda item: [item.id],
        "hybrid": lambda item: [item.id],
    }
    report = run_eval(items, methods, _by_id, warmup=0)
    by_other = {(c.other, c.metric): c for c in report.comparisons}
    assert set(by_other) == {
        ("bm25", "MRR@10"),
        ("bm25", "nDCG@10"),
        ("dense", "MRR@10"),
        ("dense", "nDCG@10"),
    }
    bm25 = by_other["bm25", "MRR@10"]
    assert (bm25.difference, bm25.low, bm25.high, bm25.verdict) == (0.5, 0.5, 0.5, "hybrid better")
    assert by_other["dense", "nDCG@10"].verdict == "no clear difference"


def test_unknown_reference_is_a_user_error() -> None:
    with pytest.raises(HpcragError, match="reference method 'hybrid' is not among"):
        run_eval([_item("a")], {"bm25": lambda item: []}, _by_id)


def test_format_report_aligns_a_table_and_json_round_trips() -> None:
    items = [_item("a"), _item("b")]
    methods = {"bm25": lambda item: ["x", item.id], "hybrid": lambda item: [item.id]}
    report = run_eval(items, methods, _by_id, warmup=0)
    text = format_report(report)
    lines = text.splitlines()
    assert lines[0].split() == [
        "method",
        "n",
        "hit@1",
        "hit@5",
        "hit@10",
        "MRR@10",
        "nDCG@10",
        "p50",
        "ms",
        "p99",
        "ms",
    ]
    assert lines[1].split()[:7] == ["bm25", "2", "0.000", "1.000", "1.000", "0.500", "0.631"]
    assert lines[2].split()[:7] == ["hybrid", "2", "1.000", "1.000", "1.000", "1.000", "1.000"]
    assert len(lines[0]) == len(lines[1]) == len(lines[2])
    assert "hybrid - bm25  MRR@10   +0.500  [+0.500, +0.500]  hybrid better" in text
    data = json.loads(report.to_json())
    assert [m["name"] for m in data["methods"]] == ["bm25", "hybrid"]
    assert data["methods"][0]["hits"] == {"1": 0.0, "5": 1.0, "10": 1.0}
    assert data["questions"][0]["first_relevant_rank"] == {"bm25": 2, "hybrid": 1}
