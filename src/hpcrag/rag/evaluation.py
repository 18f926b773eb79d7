"""Retrieval evaluation: ranking metrics and a side-by-side run of several retrieval methods.

Nothing here knows a collection. A method is a callable that ranks chunk rows for a question; a
relevance callable says whether a row answers a question. `run_eval` calls every method on every
question, in an order rotated per question so that no method always runs first (and alone profits
from, or pays for, warm caches), times each call, and reports per method hit@k, MRR@10, nDCG@10 and
latency percentiles, plus paired bootstrap confidence intervals of the reference method's (the hybrid
by default) lead over each other method.

nDCG uses binary relevance. Its ideal DCG assumes as many relevant chunks as the question has, capped
at k. That number is rarely known for a collection, so when no `relevant_count` is given, each
question's count is the largest number of relevant rows any method returned for it (at least one):
the same for all methods, so they are compared on one scale, and a lower bound of the truth, so
nDCG may be overstated when every method misses a relevant chunk, never understated.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TypeAlias

import numpy as np

from hpcrag.errors import HpcragError
from hpcrag.rag.evalset import QaItem

# The chunk rows a method ranked for one question, best first; rows are opaque to this module.
RetrievalRun: TypeAlias = Sequence[Any]
Method: TypeAlias = Callable[[QaItem], RetrievalRun]
Relevance: TypeAlias = Callable[[QaItem, Any], bool]

DEPTH = 10  # the cut-off of MRR and nDCG


def hit_at_k(ranked_relevance: Sequence[bool], k: int) -> float:
    """1.0 when a relevant row is among the first k, else 0.0."""
    _check_k(k)
    return 1.0 if any(ranked_relevance[:k]) else 0.0


def mrr_at_k(ranked_relevance: Sequence[bool], k: int) -> float:
    """Reciprocal rank of the first relevant row among the first k, 0.0 when there is none."""
    _check_k(k)
    for rank, relevant in enumerate(ranked_relevance[:k], start=1):
        if relevant:
            return 1.0 / rank
    return 0.0


def ndcg_at_k(ranked_relevance: Sequence[bool], k: int, n_relevant: int | None = None) -> float:
    """Binary-relevance nDCG@k; the ideal ranking holds min(n_relevant, k) relevant rows on top.

    `n_relevant` defaults to the relevant rows in the whole list, and is raised to that count when it
    is smaller, so that the value stays within [0, 1].
    """
    _check_k(k)
    found = sum(1 for relevant in ranked_relevance if relevant)
    ideal_count = min(max(n_relevant or 0, found), k)
    if ideal_count == 0:
        return 0.0
    dcg = sum(1.0 / math.log2(rank + 1) for rank, rel in enumerate(ranked_relevance[:k], start=1) if rel)
    ideal = sum(1.0 / math.log2(rank + 1) for rank in range(1, ideal_count + 1))
    return dcg / ideal


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between the closest ranks."""
    if not values:
        raise ValueError("percentile of no values")
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def _check_k(k: int) -> None:
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")


@dataclass(frozen=True)
class Interval:
    """A paired difference `reference - other` of one metric's mean, with its bootstrap CI."""

    reference: str
    other: str
    metric: str
    difference: float
    low: float
    high: float

    @property
    def verdict(self) -> str:
        if self.low > 0:
            return f"{self.reference} better"
        if self.high < 0:
            return f"{self.other} better"
        return "no clear difference"


def paired_bootstrap_ci(
    reference: Sequence[float],
    other: Sequence[float],
    *,
    confidence: float = 0.95,
    resamples: int = 10_000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Mean of `reference - other` per question and its percentile bootstrap CI, resampling questions.

    Pairing keeps each question's two values together, so question difficulty cancels out.
    """
    diffs = np.asarray(reference, dtype=np.float64) - np.asarray(other, dtype=np.float64)
    if diffs.size == 0:
        raise ValueError("bootstrap of no questions")
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    block = max(1, 4_000_000 // diffs.size)  # bounds the index matrix to ~32 MB
    for start in range(0, resamples, block):
        stop = min(start + block, resamples)
        means[start:stop] = diffs[rng.integers(0, diffs.size, size=(stop - start, diffs.size))].mean(axis=1)
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return float(diffs.mean()), float(low), float(high)


@dataclass(frozen=True)
class MethodResult:
    name: str
    n: int  # questions
    hits: dict[int, float]  # k -> mean hit@k
    mrr: float  # MRR@DEPTH
    ndcg: float  # nDCG@DEPTH
    p50_ms: float
    p99_ms: float
    calls: int  # timed calls (questions x repeats)


@dataclass(frozen=True)
class QuestionResult:
    id: str
    first_relevant_rank: dict[str, int | None]  # method -> 1-based rank, None when not retrieved
    relevant_count: int  # the ideal DCG's count of relevant chunks


@dataclass(frozen=True)
class EvalReport:
    ks: tuple[int, ...]
    depth: int
    repeats: int
    reference: str | None
    confidence: float
    methods: list[MethodResult]
    comparisons: list[Interval]
    questions: list[QuestionResult] = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def run_eval(
    items: Sequence[QaItem],
    methods: Mapping[str, Method],
    is_relevant: Relevance,
    ks: Sequence[int] = (1, 5, 10),
    repeats: int = 1,
    *,
    reference: str | None = "hybrid",
    relevant_count: Callable[[QaItem], int] | None = None,
    warmup: int = 1,
    confidence: float = 0.95,
    seed: int = 0,
) -> EvalReport:
    """Run every method on every question, interleaved, and compare them.

    Each question is asked `repeats` times of every method; round r (counting over all questions)
    calls the methods in their given order rotated by r, so every method runs first equally often.
    Rankings come from a question's first round; latency percentiles use every timed call. Before
    timing, each method answers the first question `warmup` times, so lazy loading (a model, an
    index) is not counted as a query's latency. `reference` names the method compared with each
    other one (None compares none).
    """
    names = list(methods)
    if not items:
        raise HpcragError("no questions to evaluate; give a QA file with at least one question")
    if not names:
        raise HpcragError("no retrieval methods to evaluate; configure at least one")
    if reference is not None and reference not in methods:
        raise HpcragError(f"reference method {reference!r} is not among {names}; pick one of them")
    if repeats < 1 or not ks or min(ks) < 1:
        raise HpcragError(f"repeats ({repeats}) and every k ({list(ks)}) must be at least 1; raise them")
    for name in names:
        for _ in range(warmup):
            methods[name](items[0])

    latencies: dict[str, list[float]] = {name: [] for name in names}
    relevance: list[dict[str, list[bool]]] = []
    round_index = 0
    for item in items:
        ranked: dict[str, list[bool]] = {}
        for _ in range(repeats):
            shift = round_index % len(names)
            for name in names[shift:] + names[:shift]:
                start = time.perf_counter()
                rows = methods[name](item)
                latencies[name].append((time.perf_counter() - start) * 1000.0)
                if name not in ranked:
                    ranked[name] = [bool(is_relevant(item, row)) for row in rows]
            round_index += 1
        relevance.append(ranked)

    questions, scores = _score(items, names, relevance, relevant_count)
    results = [
        MethodResult(
            name=name,
            n=len(items),
            hits={k: float(np.mean([hit_at_k(r[name], k) for r in relevance])) for k in ks},
            mrr=float(np.mean(scores[name]["mrr"])),
            ndcg=float(np.mean(scores[name]["ndcg"])),
            p50_ms=percentile(latencies[name], 50),
            p99_ms=percentile(latencies[name], 99),
            calls=len(latencies[name]),
        )
        for name in names
    ]
    comparisons = [] if reference is None else _compare(reference, names, scores, confidence, seed)
    return EvalReport(
        ks=tuple(ks),
        depth=DEPTH,
        repeats=repeats,
        reference=reference,
        confidence=confidence,
        methods=results,
        comparisons=comparisons,
        questions=questions,
    )


def _score(
    items: Sequence[QaItem],
    names: list[str],
    relevance: list[dict[str, list[bool]]],
    relevant_count: Callable[[QaItem], int] | None,
) -> tuple[list[QuestionResult], dict[str, dict[str, list[float]]]]:
    """Per question: first relevant rank per method and the MRR and nDCG each method scored."""
    questions = []
    scores: dict[str, dict[str, list[float]]] = {name: {"mrr": [], "ndcg": []} for name in names}
    for item, ranked in zip(items, relevance, strict=True):
        if relevant_count is not None:
            count = relevant_count(item)
        else:  # pooled over methods: see the module docstring
            count = max(1, *(sum(ranked[name]) for name in names))
        for name in names:
            scores[name]["mrr"].append(mrr_at_k(ranked[name], DEPTH))
            scores[name]["ndcg"].append(ndcg_at_k(ranked[name], DEPTH, count))
        questions.append(
            QuestionResult(
                id=item.id,
                first_relevant_rank={name: _first_rank(ranked[name]) for name in names},
                relevant_count=count,
            )
        )
    return questions, scores


def _compare(
    reference: str, names: list[str], scores: dict[str, dict[str, list[float]]], confidence: float, seed: int
) -> list[Interval]:
    intervals = []
    for name in names:
        if name == reference:
            continue
        for metric, key in ((f"MRR@{DEPTH}", "mrr"), (f"nDCG@{DEPTH}", "ndcg")):
            ci = paired_bootstrap_ci(
                scores[reference][key], scores[name][key], confidence=confidence, seed=seed
            )
            intervals.append(Interval(reference, name, metric, *ci))
    return intervals


def _first_rank(ranked_relevance: list[bool]) -> int | None:
    return next((rank for rank, rel in enumerate(ranked_relevance, start=1) if rel), None)


def format_report(report: EvalReport) -> str:
    """An aligned text table of the methods, then one line per comparison with the reference."""
    header = [
        "method",
        "n",
        *(f"hit@{k}" for k in report.ks),
        f"MRR@{report.depth}",
        f"nDCG@{report.depth}",
        "p50 ms",
        "p99 ms",
    ]
    rows = [
        [
            m.name,
            str(m.n),
            *(f"{m.hits[k]:.3f}" for k in report.ks),
            f"{m.mrr:.3f}",
            f"{m.ndcg:.3f}",
            f"{m.p50_ms:.2f}",
            f"{m.p99_ms:.2f}",
        ]
        for m in report.methods
    ]
    lines = _align([header, *rows], left={0})
    if report.comparisons:
        level = f"paired bootstrap {report.confidence:.0%} CI over questions"
        lines += ["", f"{report.reference} minus each other method ({level}):"]
        lines += _align(
            [
                [
                    f"{c.reference} - {c.other}",
                    c.metric,
                    f"{c.difference:+.3f}",
                    f"[{c.low:+.3f}, {c.high:+.3f}]",
                    c.verdict,
                ]
                for c in report.comparisons
            ],
            left={0, 1, 4},
        )
    return "\n".join(lines)


def _align(table: list[list[str]], left: set[int]) -> list[str]:
    """Columns padded to their widest cell: those in `left` left-aligned, numbers right-aligned."""
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return [
        "  ".join(
            cell.ljust(widths[i]) if i in left else cell.rjust(widths[i]) for i, cell in enumerate(row)
        ).rstrip()
        for row in table
    ]
