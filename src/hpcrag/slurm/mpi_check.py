"""Run by every rank under `srun --mpi=pmix`: rank 0 prints one JSON line describing all ranks.

The line says which cluster, partition and nodes the ranks ran on, their CUDA_VISIBLE_DEVICES,
and whether an allreduce over all ranks gave the expected sum; a wrong sum exits non-zero.
"""

from __future__ import annotations

import json
import os
import socket
import sys


def main() -> int:
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    me = {
        "rank": rank,
        "node": os.environ.get("SLURMD_NODENAME", socket.gethostname()),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
    }
    ranks = comm.gather(me, root=0)
    total = comm.allreduce(rank + 1, op=MPI.SUM)
    expected = size * (size + 1) // 2
    if rank == 0:
        print(
            json.dumps(
                {
                    "cluster": os.environ.get("SLURM_CLUSTER_NAME", ""),
                    "partition": os.environ.get("SLURM_JOB_PARTITION", ""),
                    "job_id": os.environ.get("SLURM_JOB_ID", ""),
                    "size": size,
                    "allreduce": total,
                    "expected": expected,
                    "ok": total == expected,
                    "ranks": ranks,
                    "mpi": MPI.Get_library_version().splitlines()[0].strip(),
                }
            ),
            flush=True,
        )
    return 0 if total == expected else 1


if __name__ == "__main__":
    sys.exit(main())
