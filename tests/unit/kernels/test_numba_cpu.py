"""The Numba CPU scan against a float64 reference: ids equal except ties, distances within 1e-3."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hpcrag.kernels.numba_cpu import scan_lists
from tests.search_helpers import build_small


def _case(rng: np.random.Generator, dim: int, sizes: list[int], nq: int):
    vectors = rng.standard_normal((sum(sizes), dim)).astype(np.float16)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    ids = rng.permutation(10 * len(vectors))[: len(vectors)].astype(np.int64)
    queries = rng.standard_normal((nq, dim)).astype(np.float32)
    sqnorms = (vectors.astype(np.float32) ** 2).sum(axis=1)
    return vectors, offsets, ids, queries, sqnorms


def _reference(queries, vectors, rows, l2: bool) -> np.ndarray:
    exact = vectors[rows].astype(np.float64)
    dots = queries.astype(np.float64) @ exact.T
    if l2:
        return (queries.astype(np.float64) ** 2).sum(1)[:, None] - 2 * dots + (exact**2).sum(1)[None, :]
    return -dots


def _check(keys, ids, ref, ref_ids, k: int) -> None:
    """Each row: the reference's best k (fewer if the lists hold fewer), then empty slots."""
    if ref.shape[1] == 0:
        assert (ids == -1).all() and np.isinf(keys).all()
        return
    for q in range(ref.shape[0]):
        order = np.lexsort((ref_ids, ref[q]))[:k]
        found = min(k, ref.shape[1])
        np.testing.assert_allclose(
            keys[q, :found], ref[q, order], rtol=1e-3, atol=1e-3 * np.abs(ref[q]).max()
        )
        if found < k:
            assert (ids[q, found:] == -1).all() and np.isinf(keys[q, found:]).all()
        exact = ref[q, order]
        # Ids may differ only among candidates whose reference keys tie within the tolerance.
        ties = np.isclose(exact[:, None], ref[q][None, :], rtol=1e-3, atol=1e-6).any(axis=0)
        allowed = set(ref_ids[ties].tolist())
        assert set(ids[q, :found].tolist()) <= allowed
        assert len(set(ids[q, :found].tolist())) == found


@pytest.mark.parametrize("dim", [100, 384, 768, 1536])
@pytest.mark.parametrize("l2", [False, True])
def test_matches_float64_reference(dim: int, l2: bool) -> None:
    rng = np.random.default_rng([dim, l2])
    sizes = [700, 0, 300, 1200, 5]
    vectors, offsets, ids, queries, sqnorms = _case(rng, dim, sizes, nq=6)
    probes = np.array([[0, 2, 3, -1], [1, 4, -1, -1], [3, 0, 4, 2], [4, -1, -1, -1], [2, -1, 0, 1], [-1] * 4])
    for k in (1, 10, 100, 1024):
        keys, found = scan_lists(queries, probes, vectors, ids, sqnorms, offsets, k, l2)
        assert keys.shape == (6, k) and found.dtype == np.int64
        for q in range(6):
            lists = sorted({int(p) for p in probes[q] if p >= 0})
            rows = np.concatenate([np.arange(offsets[p], offsets[p + 1]) for p in lists]) if lists else []
            rows = np.asarray(rows, dtype=np.int64)
            ref = _reference(queries[q : q + 1], vectors, rows, l2)
            _check(keys[q : q + 1], found[q : q + 1], ref, ids[rows], k)


def test_lists_shorter_than_k_and_float32_storage() -> None:
    rng = np.random.default_rng(7)
    vectors, offsets, ids, queries, sqnorms = _case(rng, 100, [3, 4], nq=2)
    keys, found = scan_lists(queries, np.array([[0, 1], [1, -1]]), vectors, ids, sqnorms, offsets, 10, True)
    assert (found[0, :7] >= 0).all() and (found[0, 7:] == -1).all()
    assert (found[1, :4] >= 0).all() and (found[1, 4:] == -1).all()
    assert np.all(np.diff(keys[0, :7]) >= 0)  # best first
    as32 = scan_lists(
        queries, np.array([[0, 1], [1, -1]]), vectors.astype(np.float32), ids, sqnorms, offsets, 10, True
    )
    np.testing.assert_array_equal(as32[1], found)
    nothing = scan_lists(queries, np.full((2, 2), -1), vectors, ids, sqnorms, offsets, 3, False)
    assert (nothing[1] == -1).all() and np.isinf(nothing[0]).all()
    with pytest.raises(TypeError, match="float16 or float32"):
        scan_lists(queries, np.array([[0]]), vectors.astype(np.float64), ids, sqnorms, offsets, 1, True)


def test_ties_are_broken_by_the_smaller_id() -> None:
    vectors = np.ones((6, 4), dtype=np.float16)
    ids = np.array([50, 10, 40, 20, 30, 60], dtype=np.int64)
    keys, found = scan_lists(
        np.ones((1, 4), np.float32),
        np.array([[0]]),
        vectors,
        ids,
        np.full(6, 4, np.float32),
        np.array([0, 6]),
        4,
        False,
    )
    assert found.tolist() == [[10, 20, 30, 40]]
    assert keys.tolist() == [[-4.0] * 4]


def test_warm_compiles_every_signature_a_search_uses() -> None:
    from hpcrag.kernels import numba_cpu

    warmed = numba_cpu.warm()
    assert warmed == ["float16 read-only", "float16 writable", "float32 read-only", "float32 writable"]
    kinds = {(str(sig[6].dtype), sig[6].mutable) for sig in numba_cpu._scan_tasks.signatures}
    assert {("uint16", False), ("uint16", True), ("float32", False), ("float32", True)} <= kinds


def test_opening_a_list_scanned_index_loads_the_scan_so_its_first_search_compiles_nothing(
    tmp_path: Path,
) -> None:
    """In a fresh process: after `open` the Numba scan already holds its machine code, and the first
    search adds no signature to it."""
    base = np.random.default_rng(4).standard_normal((600, 16)).astype(np.float32)
    flat = build_small(tmp_path, base, nlist=8, nshards=2, dtype="float16", name="flat")
    probe = f"""
import numpy as np
from hpcrag.kernels import numba_cpu
from hpcrag.search import DistributedIndex, LocalComm
index = DistributedIndex.open({str(flat)!r}, LocalComm())
loaded = len(numba_cpu._scan_tasks.signatures)
index.search(np.ones((3, 16), dtype=np.float32), k=5, nprobe=2)
print(loaded, len(numba_cpu._scan_tasks.signatures))
"""
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    loaded, after = (int(n) for n in result.stdout.split())
    assert loaded >= 1 and after == loaded


def test_loading_the_scan_writes_no_terminal_codes_to_a_terminal() -> None:
    """mpirun hands its ranks a pseudo-terminal: what they print must not trail colorama's ESC[0m."""
    leader, follower = pty.openpty()
    probe = "from hpcrag.kernels import numba_cpu; numba_cpu.warm(); print('done')"
    child = subprocess.run([sys.executable, "-c", probe], stdout=follower, stderr=follower, timeout=120)
    os.close(follower)
    output = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the terminal's far end closed: all read
            break
        if not chunk:
            break
        output += chunk
    os.close(leader)
    assert child.returncode == 0 and output.strip() == b"done", output
