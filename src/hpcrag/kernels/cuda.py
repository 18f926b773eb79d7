"""CuPy loaders for `kernels/*.cu`: compile-time parameters as -D defines, one RawModule per
parameter set (CuPy also caches the compiled binary on disk), and the launches that use them.

`unavailable()` says, in one line, why the tensor-core path cannot run here (no CuPy, no GPU, a GPU
older than sm_70, k above what fits in shared memory); callers fall back and show that line.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

from hpcrag.kernels.tasks import TILE, assemble, plan_tasks
from hpcrag.paths import kernels_dir

WMMA_MAX_K = 256  # 16 rows x K (float32 key + int32 row) of shared memory per warp
MERGE_THREADS = 128
CHUNK_ROWS = 4096  # rows per task on a GPU: a long list is split so that many warps share it


def kernel_source(name: str) -> str:
    path = kernels_dir() / f"{name}.cu"
    if not path.is_file():
        raise FileNotFoundError(f"kernel source {path} is missing; hpcrag runs from its repository checkout")
    return path.read_text()


def unavailable(k: int | None = None, tensor_cores: bool = True) -> str | None:
    """Why these kernels cannot run here (the WMMA scan by default, or only the merge with
    `tensor_cores=False`), or None when they can."""
    try:
        import cupy
    except ImportError:
        return "CuPy is not installed (pip install -e '.[cuda12]')"
    try:
        capability = cupy.cuda.Device().compute_capability
    except cupy.cuda.runtime.CUDARuntimeError as exc:
        return f"no usable GPU ({exc})"
    if tensor_cores and int(capability[:-1]) < 7:
        return f"tensor-core WMMA needs sm_70 or newer; this GPU is sm_{capability}"
    if tensor_cores and k is not None and k > WMMA_MAX_K:
        return f"k={k} is above the WMMA kernel's {WMMA_MAX_K} (shared memory)"
    return None


@cache
def module(name: str, defines: tuple[tuple[str, int], ...]) -> Any:
    """The compiled RawModule of kernels/<name>.cu for one set of -D parameters."""
    import cupy

    options = ("--std=c++17", *(f"-D{key}={value}" for key, value in defines))
    return cupy.RawModule(code=kernel_source(name), options=options)


def padded_dim(dim: int) -> int:
    return -(-dim // TILE) * TILE


@dataclass(frozen=True)
class DeviceLists:
    """One shard on the device in the WMMA kernel's layout: FP16 rows padded to a multiple of 16
    dimensions, plus 16 zero rows so the last tile of the last list reads inside the array."""

    vectors: Any  # (n + 16, d_pad) float16
    sqnorms: Any  # (n,) float32
    ids: Any  # (n,) int64
    offsets: np.ndarray  # (nlist + 1,) int64, on the host
    dim: int


def device_lists(vectors: Any, sqnorms: Any, ids: Any, offsets: np.ndarray) -> DeviceLists:
    import cupy

    n, dim = vectors.shape
    padded = cupy.zeros((n + TILE, padded_dim(dim)), dtype=cupy.float16)
    padded[:n, :dim] = cupy.asarray(vectors, dtype=cupy.float16)
    return DeviceLists(
        padded, cupy.asarray(sqnorms, cupy.float32), cupy.asarray(ids, cupy.int64), offsets, dim
    )


def _output(xp: Any, shape: tuple[int, ...], dtype: Any, poison: bool) -> Any:
    """An output buffer; `poison` fills it with garbage so a test sees any slot a kernel skips."""
    if not poison:
        return xp.empty(shape, dtype=dtype)
    return xp.full(shape, np.nan if np.dtype(dtype).kind == "f" else -7, dtype=dtype)


def wmma_scan(
    queries: Any,
    probes: np.ndarray,
    lists: DeviceLists,
    k: int,
    l2: bool,
    poison: bool = False,
    chunk_rows: int | None = None,
) -> tuple[Any, Any]:
    """Per query, the best k (keys, ids) of its probed lists of this shard, unordered within the
    query's candidate rows: returns (nq, c * k) keys and ids, keys being distances (l2) or negated
    scores, empty slots (inf, -1)."""
    import cupy

    nq = queries.shape[0]
    tasks = plan_tasks(probes, lists.offsets, chunk_rows or CHUNK_ROWS)
    if tasks.count == 0:
        return cupy.full((nq, k), np.inf, cupy.float32), cupy.full((nq, k), -1, cupy.int64)
    d_pad = lists.vectors.shape[1]
    padded_queries = cupy.zeros((nq + 1, d_pad), dtype=cupy.float16)  # the last row: zeros for empty slots
    padded_queries[:nq, : lists.dim] = queries.astype(cupy.float16)
    qnorms = cupy.zeros(nq + 1, dtype=cupy.float32)
    qnorms[:nq] = (queries * queries).sum(axis=1)
    rows = cupy.asarray(np.where(tasks.query >= 0, tasks.query, nq))
    out_keys = _output(cupy, (tasks.candidate_rows, k), cupy.float32, poison)
    out_ids = _output(cupy, (tasks.candidate_rows, k), cupy.int64, poison)
    kernel = module("ivf_scan_wmma", (("D_PAD", d_pad), ("K", k), ("METRIC", int(l2)))).get_function(
        "ivf_scan_wmma"
    )
    kernel(
        (tasks.count,),
        (32,),
        (
            padded_queries[rows],
            qnorms[rows],
            cupy.asarray(tasks.begin),
            cupy.asarray(tasks.end),
            cupy.asarray(tasks.out_row),
            lists.vectors,
            lists.sqnorms,
            lists.ids,
            out_keys,
            out_ids,
            np.int32(tasks.count),
        ),
    )
    return assemble(cupy, tasks, out_keys, out_ids, nq)


def merge_topk(
    a: tuple[Any, Any], b: tuple[Any, Any], k: int, larger_is_better: bool, worst: float, poison: bool = False
) -> tuple[Any, Any]:
    """Device merge of two sorted top-k sets (kernels/topk_merge.cu); same result as the host merge."""
    import cupy

    nq = a[0].shape[0]
    scores = _output(cupy, (nq, k), cupy.float32, poison)
    ids = _output(cupy, (nq, k), cupy.int64, poison)
    kernel = module("topk_merge", (("K", k), ("LARGER_IS_BETTER", int(larger_is_better)))).get_function(
        "topk_merge"
    )
    blocks = max(1, -(-nq // MERGE_THREADS))
    kernel(
        (blocks,),
        (MERGE_THREADS,),
        (
            cupy.ascontiguousarray(a[0], dtype=cupy.float32),
            cupy.ascontiguousarray(a[1], dtype=cupy.int64),
            cupy.ascontiguousarray(b[0], dtype=cupy.float32),
            cupy.ascontiguousarray(b[1], dtype=cupy.int64),
            scores,
            ids,
            np.int32(nq),
            np.float32(worst),
        ),
    )
    return scores, ids
