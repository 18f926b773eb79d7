"""Synthetic clustered data: Gaussian blobs around random centres, with queries drawn like the base.

Clustered data is what IVF and semantic shard grouping are for; `clustered` gives tests and the
benchmark a reproducible collection whose structure is known.
"""

from __future__ import annotations

import numpy as np


def clustered(
    n: int, nq: int, dim: int, clusters: int = 64, spread: float = 0.3, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(base (n, dim), queries (nq, dim)) float32 drawn from the same `clusters` blobs."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)

    def draw(count: int) -> np.ndarray:
        which = rng.integers(0, clusters, size=count)
        noise = rng.standard_normal((count, dim)).astype(np.float32) * (spread / np.sqrt(dim))
        return (centres[which] + noise).astype(np.float32)

    return draw(n), draw(nq)
