"""Synthetic clustered data: Gaussian blobs around random centres, with queries drawn like the base.

Clustered data is what IVF and semantic shard grouping are for; `clustered` gives tests and the
benchmark a reproducible collection whose structure is known. With `topics`, the blob centres are
themselves grouped around a few topic centres, as embeddings of real text are (many sub-topics per
subject): the structure that lets neighbouring lists share a shard.
"""

from __future__ import annotations

import numpy as np


def clustered(
    n: int,
    nq: int,
    dim: int,
    clusters: int = 64,
    spread: float = 0.3,
    seed: int = 0,
    topics: int = 0,
    topic_spread: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """(base (n, dim), queries (nq, dim)) float32 drawn from the same `clusters` blobs."""
    rng = np.random.default_rng(seed)
    centres = _unit_rows(rng, clusters, dim)
    if topics:
        topic_of = rng.integers(0, topics, size=clusters)
        centres = _unit_rows(rng, topics, dim)[topic_of] + topic_spread * centres / np.sqrt(dim) * 4

    def draw(count: int) -> np.ndarray:
        which = rng.integers(0, clusters, size=count)
        noise = rng.standard_normal((count, dim)).astype(np.float32) * (spread / np.sqrt(dim))
        return (centres[which] + noise).astype(np.float32)

    return draw(n), draw(nq)


def _unit_rows(rng: np.random.Generator, count: int, dim: int) -> np.ndarray:
    rows = rng.standard_normal((count, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)
