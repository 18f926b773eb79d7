"""Distance-kernel benchmark: hpcrag's fused top-k scan against matrix products plus top-k, and faiss.

GPU (when CuPy sees one): d = 768 and 384, N from 1M to 20M FP16 vectors, query batches B in
{1, 8, 64, 256, 1024}, k = 10 and 100, side by side in one run:
  fused    kernels/ivf_scan_wmma.cu (the whole collection as one list, split over warps)
  matmul   CuPy FP16 product (FP32 accumulation) in slices, then argpartition top-k, merged
  faiss    faiss GpuIndexFlat with FP16 storage, where faiss GPU is installed
and the two measured ceilings: device-to-device copy bandwidth (read + write) and FP16 matmul
throughput. Reported: database vectors scanned per second, distance evaluations per second, and the
fraction of the ceiling that binds (bandwidth for small B, matmul throughput for large B).

CPU (always): the Numba scan against NumPy products plus argpartition and faiss IndexFlat, on a
smaller N, with the machine's memory-copy bandwidth and SGEMM throughput as ceilings.

Results are checked against a reference before anything is timed. Timing: CUDA events on the GPU
(median of REPEATS after a warm-up), perf_counter on the CPU.

Usage: .venv/bin/python scripts/bench_kernels.py [--cpu-only] [--out benchmarks/kernels-<device>.md]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

REPEATS = 5
GPU_DIMS = (768, 384)
GPU_SIZES = (1_000_000, 5_000_000, 20_000_000)
BATCHES = (1, 8, 64, 256, 1024)
KS = (10, 100)
CPU_DIMS = (384,)
CPU_SIZES = (200_000,)
CPU_BATCHES = (1, 8, 64, 256)


def cpu_time(run: Callable[[], object]) -> float:
    run()
    samples = []
    for _ in range(3):
        began = time.perf_counter()
        run()
        samples.append(time.perf_counter() - began)
    return statistics.median(samples)


def ceilings(
    xp: object, timer: Callable[[Callable[[], object]], float], copy_bytes: int, gemm_n: int, dtype: object
) -> tuple[float, float]:
    """(copy bandwidth in bytes/s counting read + write, matrix-product flop/s) on `xp`'s device."""
    src = xp.ones(copy_bytes, dtype=xp.uint8)
    dst = xp.empty_like(src)
    copy = timer(partial(xp.copyto, dst, src))
    a = xp.ones((gemm_n, gemm_n), dtype=dtype)
    gemm = timer(partial(xp.matmul, a, a))
    return 2 * copy_bytes / copy, 2 * gemm_n**3 / gemm


def numpy_search(queries: np.ndarray, db: np.ndarray, k: int) -> np.ndarray:
    return np.argpartition(-(queries @ db.T), k - 1, axis=1)[:, :k]


def cpu_rows(lines: list[str]) -> None:
    import faiss

    from hpcrag.kernels.numba_cpu import scan_lists

    bandwidth, flops = ceilings(np, cpu_time, 64 << 20, 2048, np.float32)
    lines += [
        "## CPU",
        "",
        f"Ceilings: copy {bandwidth / 1e9:.1f} GB/s (read + write), SGEMM {flops / 1e9:.1f} GFLOP/s.",
        "",
        "| d | N | B | k | numba vec/s | numpy matmul+argpartition vec/s | faiss flat vec/s "
        "| numba % of read BW |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rng = np.random.default_rng(0)
    for dim in CPU_DIMS:
        for n in CPU_SIZES:
            db = rng.standard_normal((n, dim)).astype(np.float16)
            db32 = db.astype(np.float32)
            ids = np.arange(n, dtype=np.int64)
            sq = (db32**2).sum(axis=1)
            offsets = np.array([0, n], dtype=np.int64)
            flat = faiss.IndexFlatIP(dim)
            flat.add(db32)
            for batch in CPU_BATCHES:
                queries = rng.standard_normal((batch, dim)).astype(np.float32)
                probes = np.zeros((batch, 1), dtype=np.int64)
                for k in KS:
                    _, got = scan_lists(queries, probes, db, ids, sq, offsets, k, False)
                    want = np.argsort(-(queries @ db32.T), axis=1, kind="stable")[:, :k]
                    assert (got[:, :1] == want[:, :1]).all(), "numba scan disagrees with the reference"
                    t_numba = cpu_time(partial(scan_lists, queries, probes, db, ids, sq, offsets, k, False))
                    t_matmul = cpu_time(partial(numpy_search, queries, db32, k))
                    t_faiss = cpu_time(partial(flat.search, queries, k))
                    fraction = n * dim * 2 / t_numba / (bandwidth / 2)
                    lines.append(
                        f"| {dim} | {n:,} | {batch} | {k} | {n / t_numba:,.0f} | {n / t_matmul:,.0f} | "
                        f"{n / t_faiss:,.0f} | {100 * fraction:.0f}% |"
                    )
                    print(lines[-1], flush=True)


def gpu_time(run: Callable[[], object]) -> float:
    import cupy

    run()
    start, stop = cupy.cuda.Event(), cupy.cuda.Event()
    samples = []
    for _ in range(REPEATS):
        start.record()
        run()
        stop.record()
        stop.synchronize()
        samples.append(cupy.cuda.get_elapsed_time(start, stop) / 1e3)
    return statistics.median(samples)


def random_device_lists(rng: np.random.Generator, n: int, dim: int) -> object:
    """n random FP16 vectors as one list, written slice by slice into the kernel's padded layout."""
    import cupy

    from hpcrag.kernels import cuda

    padded = cupy.zeros((n + cuda.TILE, cuda.padded_dim(dim)), dtype=cupy.float16)
    step = 1 << 20
    for lo in range(0, n, step):
        rows = min(step, n - lo)
        padded[lo : lo + rows, :dim] = cupy.asarray(rng.standard_normal((rows, dim), dtype=np.float32))
    sqnorms = (padded[:n].astype(cupy.float32) ** 2).sum(axis=1)
    return cuda.DeviceLists(padded, sqnorms, cupy.arange(n, dtype=cupy.int64), np.array([0, n]), dim)


def fused_search(queries: object, lists: object, k: int, chunk: int) -> object:
    from hpcrag.kernels import cuda
    from hpcrag.search.topk import select_topk

    probes = np.zeros((queries.shape[0], 1), dtype=np.int64)
    keys, found = cuda.wmma_scan(queries, probes, lists, k, False, chunk_rows=chunk)
    return select_topk(keys, found, k, False, float("inf"))


def matmul_search(queries: object, db: object, k: int) -> object:
    import cupy

    from hpcrag.search.topk import select_topk

    step = 1 << 20
    parts = []
    for lo in range(0, db.shape[0], step):
        scores = (queries.astype(cupy.float16) @ db[lo : lo + step].T).astype(cupy.float32)
        top = cupy.argpartition(-scores, min(k, scores.shape[1]) - 1, axis=1)[:, :k]
        parts.append((cupy.take_along_axis(scores, top, axis=1), top + lo))
    scores = cupy.concatenate([p[0] for p in parts], axis=1)
    ids = cupy.concatenate([p[1] for p in parts], axis=1)
    return select_topk(scores, ids, k, True, float("-inf"))


def faiss_gpu_index(db: object, dim: int) -> object | None:
    try:
        import faiss
    except ImportError:
        return None
    if not hasattr(faiss, "StandardGpuResources"):
        return None
    import cupy

    config = faiss.GpuIndexFlatConfig()
    config.useFloat16 = True
    index = faiss.GpuIndexFlatIP(faiss.StandardGpuResources(), dim, config)
    step = 1 << 20
    for lo in range(0, db.shape[0], step):
        index.add(cupy.asnumpy(db[lo : lo + step].astype(cupy.float32)))
    return index


def gpu_rows(lines: list[str]) -> None:
    import cupy

    bandwidth, flops = ceilings(cupy, gpu_time, 2 << 30, 8192, cupy.float16)
    device = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    sms = cupy.cuda.Device().attributes["MultiProcessorCount"]
    lines += [
        f"## GPU: {device} ({sms} SMs)",
        "",
        f"Ceilings: device copy {bandwidth / 1e9:.0f} GB/s (read + write), "
        f"FP16 matmul {flops / 1e12:.0f} TFLOP/s.",
        "",
        "| d | N | B | k | fused vec/s | matmul+top-k vec/s | faiss vec/s | fused % of read BW "
        "| fused % of matmul |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    rng = np.random.default_rng(0)
    for dim in GPU_DIMS:
        for n in GPU_SIZES:
            lists = random_device_lists(rng, n, dim)
            db = lists.vectors[:n, :dim]
            chunk = max(16, n // (sms * 8))  # enough warps to fill the GPU at B = 1
            index = faiss_gpu_index(db, dim)
            for batch in BATCHES:
                queries = cupy.asarray(rng.standard_normal((batch, dim), dtype=np.float32))
                for k in KS:
                    got = fused_search(queries, lists, k, chunk)[1]
                    want = matmul_search(queries, db, k)[1]
                    agree = int((got[:, 0] == want[:, 0]).sum())
                    assert agree >= 0.99 * batch, f"fused scan disagrees with matmul ({agree}/{batch})"
                    t_fused = gpu_time(partial(fused_search, queries, lists, k, chunk))
                    t_matmul = gpu_time(partial(matmul_search, queries, db, k))
                    host_queries = cupy.asnumpy(queries)
                    t_faiss = gpu_time(partial(index.search, host_queries, k)) if index is not None else None
                    read_fraction = n * dim * 2 / t_fused / (bandwidth / 2)
                    flop_fraction = 2 * n * dim * batch / t_fused / flops
                    faiss_cell = f"{n / t_faiss:,.0f}" if t_faiss else "n/a"
                    lines.append(
                        f"| {dim} | {n:,} | {batch} | {k} | {n / t_fused:,.0f} | {n / t_matmul:,.0f} "
                        f"| {faiss_cell} | {100 * read_fraction:.0f}% | {100 * flop_fraction:.0f}% |"
                    )
                    print(lines[-1], flush=True)
            del lists, db, index
            cupy.get_default_memory_pool().free_all_blocks()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-only", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    from hpcrag.kernels.cuda import unavailable

    why = unavailable()
    lines = [
        "# Distance kernels",
        "",
        f"Command: `.venv/bin/python scripts/bench_kernels.py{' --cpu-only' if args.cpu_only else ''}`",
        f"Machine: {platform.node()}, Python {sys.version.split()[0]}.",
        "",
    ]
    if not args.cpu_only:
        if why is None:
            gpu_rows(lines)
        else:
            lines += [f"GPU part not run: {why}.", ""]
    cpu_rows(lines)
    out = args.out or Path("benchmarks") / ("kernels-cpu.md" if why or args.cpu_only else "kernels-gpu.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
