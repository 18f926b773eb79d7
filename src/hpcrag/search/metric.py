"""Similarity metrics: which direction is better, and how vectors are prepared before scoring.

`ip` and `cosine` rank larger scores first; `l2` ranks smaller (squared) distances first. Cosine is
inner product over L2-normalised rows, so the index stores normalised vectors for it.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from hpcrag.errors import HpcragError
from hpcrag.search.arrays import array_module


class Metric(StrEnum):
    IP = "ip"
    L2 = "l2"
    COSINE = "cosine"

    @classmethod
    def parse(cls, name: str) -> Metric:
        try:
            return cls(name)
        except ValueError:
            valid = ", ".join(m.value for m in cls)
            raise HpcragError(f"unknown metric {name!r}; use one of: {valid}") from None

    @property
    def larger_is_better(self) -> bool:
        return self is not Metric.L2

    @property
    def worst(self) -> float:
        """The score that loses to every real one: fills result slots that hold no neighbour."""
        return float("-inf") if self.larger_is_better else float("inf")

    def faiss_metric(self) -> int:
        import faiss

        return faiss.METRIC_L2 if self is Metric.L2 else faiss.METRIC_INNER_PRODUCT


def prepare(vectors: Any, metric: Metric, what: str, first_row: int = 0) -> Any:
    """Float32 rows ready to score: normalised for cosine (a zero row is refused: no direction)."""
    xp = array_module(vectors)
    out = vectors.astype(xp.float32, copy=True)
    if metric is Metric.COSINE:
        norms = xp.linalg.norm(out, axis=1, keepdims=True)
        zero = xp.flatnonzero(norms[:, 0] == 0)
        if zero.size:
            row = first_row + int(zero[0])
            raise HpcragError(
                f"{what} row {row} is all zeros: cosine similarity is undefined for it; "
                "drop zero rows or use --metric ip|l2"
            )
        out /= norms
    return out
