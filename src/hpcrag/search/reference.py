"""faiss references the distributed search is checked and benchmarked against.

`ivf_flat` builds a single-process faiss IndexIVFFlat from given centroids (so it probes exactly
the lists the distributed index probes); `exact` is brute force (IndexFlat). Both take raw vectors
and apply the metric's preparation (cosine normalises) like the index does.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hpcrag.search.metric import Metric, prepare


def ivf_flat(base: np.ndarray, centroids: np.ndarray, metric: Metric, ids: np.ndarray | None = None) -> Any:
    """With `ids`, rows carry those ids (the survivors of updates); else their row numbers."""
    import faiss

    dim = base.shape[1]
    quantizer = faiss.IndexFlat(dim, metric.faiss_metric())
    quantizer.add(np.ascontiguousarray(centroids, dtype=np.float32))
    index = faiss.IndexIVFFlat(quantizer, dim, centroids.shape[0], metric.faiss_metric())
    index.is_trained = True
    _add(index, prepare(base, metric, "base"), ids)
    return index


def exact(base: np.ndarray, metric: Metric, ids: np.ndarray | None = None) -> Any:
    import faiss

    index = faiss.IndexFlat(base.shape[1], metric.faiss_metric())
    if ids is not None:
        index = faiss.IndexIDMap2(index)
    _add(index, prepare(base, metric, "base"), ids)
    return index


def _add(index: Any, rows: np.ndarray, ids: np.ndarray | None) -> None:
    if ids is None:
        index.add(rows)
    else:
        index.add_with_ids(rows, np.ascontiguousarray(ids, dtype=np.int64))


def search(index: Any, queries: np.ndarray, k: int, metric: Metric, nprobe: int | None = None) -> Any:
    """(distances, ids) from a faiss index, with the queries prepared for the metric."""
    if nprobe is not None:
        index.nprobe = nprobe
    return index.search(prepare(queries, metric, "queries"), k)


def recall_at(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean over queries of |found[:, :k] ∩ truth[:, :k]| / k."""
    hits = [len(set(found[i, :k].tolist()) & set(truth[i, :k].tolist())) for i in range(len(found))]
    return float(np.mean(hits)) / k
