"""The WMMA scan's host side (task planning and candidate assembly), with the kernel's work done
by a NumPy stand-in that follows the .cu line by line: the assembled top-k must equal the Numba scan.
What only the GPU can check (the kernel itself) is in tests/gpu."""

from __future__ import annotations

import numpy as np
import pytest

from hpcrag.kernels import tasks as task_plan
from hpcrag.kernels.numba_cpu import scan_lists
from hpcrag.search.topk import select_topk


def _kernel_stand_in(tasks, queries, vectors, sqnorms, ids, k, l2):
    keys = np.full((tasks.candidate_rows, k), np.inf, np.float32)
    found = np.full((tasks.candidate_rows, k), -1, np.int64)
    for task in range(tasks.count):
        rows = np.arange(tasks.begin[task], tasks.end[task])
        for slot in range(task_plan.TILE):
            query, out = (
                tasks.query[task * task_plan.TILE + slot],
                tasks.out_row[task * task_plan.TILE + slot],
            )
            if out < 0:
                continue
            dots = vectors[rows].astype(np.float32) @ queries[query]
            key = np.maximum(queries[query] @ queries[query] - 2 * dots + sqnorms[rows], 0) if l2 else -dots
            best = np.lexsort((rows, key))[:k]
            keys[out, : best.size], found[out, : best.size] = key[best], ids[rows[best]]
    return keys, found


@pytest.mark.parametrize("l2", [False, True])
def test_planned_tasks_cover_every_pair_once_and_assemble_to_the_scan(l2: bool) -> None:
    rng = np.random.default_rng(11)
    sizes = [150, 0, 20, 300, 7]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    vectors = rng.standard_normal((offsets[-1], 40)).astype(np.float16)
    ids = rng.permutation(5000)[: offsets[-1]].astype(np.int64)
    sqnorms = (vectors.astype(np.float32) ** 2).sum(axis=1)
    nq, k = 37, 9
    queries = rng.standard_normal((nq, 40)).astype(np.float32)
    probes = np.stack([rng.permutation(5)[:3] for _ in range(nq)])
    probes[5] = -1
    tasks = task_plan.plan_tasks(probes, offsets, chunk_rows=64)  # long lists split, as on a GPU
    # Every (query, row) of its probed lists is in exactly one task slot.
    seen = np.zeros((nq, offsets[-1]), dtype=int)
    for task in range(tasks.count):
        for query in tasks.query[task * task_plan.TILE : (task + 1) * task_plan.TILE]:
            if query >= 0:
                seen[query, tasks.begin[task] : tasks.end[task]] += 1
    for q in range(nq):
        want = np.zeros(offsets[-1], dtype=int)
        for lst in probes[q][probes[q] >= 0]:
            want[offsets[lst] : offsets[lst + 1]] = 1
        np.testing.assert_array_equal(seen[q], want)
    assert (tasks.end - tasks.begin <= 64).all()

    keys, found = task_plan.assemble(
        np, tasks, *_kernel_stand_in(tasks, queries, vectors, sqnorms, ids, k, l2), nq
    )
    scores = np.where(found < 0, np.inf, keys).astype(np.float32)
    got_keys, got_ids = select_topk(scores, found, k, larger_is_better=False, worst=float("inf"))
    want_keys, want_ids = scan_lists(queries, probes, vectors, ids, sqnorms, offsets, k, l2)
    np.testing.assert_array_equal(got_ids, want_ids)
    np.testing.assert_allclose(got_keys, want_keys, rtol=1e-4, atol=1e-4)


def test_unavailable_says_why_without_a_gpu() -> None:
    from hpcrag.kernels import cuda

    reason = cuda.unavailable()
    assert reason is not None and ("CuPy is not installed" in reason or "GPU" in reason)
