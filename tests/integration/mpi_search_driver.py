"""Run by every rank under mpirun: build one index per case with all ranks, search it, save results.

    mpirun -n R python -m tests.integration.mpi_search_driver WORKDIR
WORKDIR holds base.npy, dups.npy and queries.npy; results go to WORKDIR/r{R}/{case}-k{k}-p{nprobe}.npz
and, with shard selection, WORKDIR/r{R}/{case}-routed{nq}.npz.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from hpcrag.search import BuildOptions, DistributedIndex, Metric, MpiComm, build_index

CASES = {
    "ip": ("base.npy", "ip"),
    "l2": ("base.npy", "l2"),
    "cosine": ("base.npy", "cosine"),
    "dups": ("dups.npy", "l2"),
}
SEARCHES = [(10, 3), (10, 16), (5000, 16)]
ROUTED = {"k": 10, "nprobe": 6, "max_shards": 2, "shard_margin": 0.5}  # with shard selection


def main(workdir: Path) -> None:
    comm = MpiComm()
    out = workdir / f"r{comm.size}"
    queries = np.load(workdir / "queries.npy")
    for case, (source, metric) in CASES.items():
        options = BuildOptions(nlist=16, nshards=4, metric=Metric(metric), dtype="float32", chunk_rows=500)
        build_index(workdir / source, out / case, options, comm=comm)
        index = DistributedIndex.open(out / case, comm)
        for k, nprobe in SEARCHES:
            result = index.search(queries, k=k, nprobe=nprobe)
            if result is not None:
                np.savez(out / f"{case}-k{k}-p{nprobe}.npz", ids=result.ids, distances=result.distances)
        # Each rank routes a slice of the batch: a batch of fewer queries than ranks leaves some idle.
        for nq in (1, 2, len(queries)):
            result = index.search(queries[:nq], **ROUTED)
            if result is not None:
                np.savez(out / f"{case}-routed{nq}.npz", ids=result.ids, touched=result.shards_touched)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
