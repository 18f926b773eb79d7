"""How many threads each rank may use, so that ranks sharing a node do not oversubscribe its cores.

A rank the launcher bound to some cores (srun --cpus-per-task, mpirun --bind-to) uses all of them; an
unbound rank takes its share of the node. HPCRAG_THREADS overrides both. The limit applies to BLAS
(through threadpoolctl) and to faiss's OpenMP pool.
"""

from __future__ import annotations

import os


def threads_per_rank(ranks_on_node: int) -> int:
    override = os.environ.get("HPCRAG_THREADS")
    if override:
        return max(1, int(override))
    bound = len(os.sched_getaffinity(0))
    total = os.cpu_count() or bound
    if bound < total:
        return bound
    return max(1, total // max(1, ranks_on_node))


def limit_threads(threads: int) -> None:
    import faiss
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads)
    faiss.omp_set_num_threads(threads)
