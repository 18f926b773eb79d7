"""The top-k reduction: every rank's (nq, k) candidates merged into one answer on rank 0.

A binomial tree over point-to-point messages: in round r, ranks at odd multiples of 2**r send their
partial top-k to the rank 2**r below, which merges; after ceil(log2(size)) rounds rank 0 holds the
result. The same code runs over MPI with host arrays and over NCCL with device arrays; the merge is
`topk.merge_topk` on the host and the device merge kernel (kernels/topk_merge.cu) on a GPU, both
correct for larger-is-better and smaller-is-better metrics alike.
"""

from __future__ import annotations

from typing import Any

from hpcrag.search.comm import Communicator
from hpcrag.search.metric import Metric
from hpcrag.search.topk import merge_topk


def reduce_topk(comm: Communicator, scores: Any, ids: Any, k: int, metric: Metric) -> tuple[Any, Any] | None:
    """Collective: returns the merged (scores, ids) on rank 0 and None on every other rank."""
    merge = _merge_for(comm.xp)
    step = 1
    while step < comm.size:
        if comm.rank % (2 * step) == step:
            comm.send_array(scores, comm.rank - step)
            comm.send_array(ids, comm.rank - step)
            return None
        partner = comm.rank + step
        if comm.rank % (2 * step) == 0 and partner < comm.size:
            theirs = (
                comm.recv_array(scores.shape, scores.dtype, partner),
                comm.recv_array(ids.shape, ids.dtype, partner),
            )
            scores, ids = merge((scores, ids), theirs, k, metric.larger_is_better, metric.worst)
        step *= 2
    return (scores, ids) if comm.rank == 0 else None


def _merge_for(xp: Any) -> Any:
    if xp.__name__ == "cupy":
        from hpcrag.kernels import cuda

        if cuda.unavailable(tensor_cores=False) is None:
            return cuda.merge_topk
    return merge_topk
