"""Run by every rank under mpirun -n 2: a search that fails on rank 1 once under way reaches every rank.

    mpirun -n 2 python -m tests.integration.mpi_failure_driver WORKDIR
WORKDIR holds `index` (2 shards) and queries.npy. SPMD: every rank searches while rank 1's scan
raises once; then searches again. Serving: rank 1 follows while its routing and then its scan raise
once each; rank 0 searches three times and closes. An exact search (whose ranks gather their row
counts first) fails once on rank 1 too. Each rank writes what it saw to rank{R}.json, and rank 0
the answers that came after the failures to spmd.npy, exact.npy and served.npy.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from hpcrag.errors import HpcragError
from hpcrag.search import DistributedIndex, MpiComm

SEARCH = {"k": 5, "nprobe": 16}


def failing_once(step: Callable[..., Any], error: Exception) -> Callable[..., Any]:
    calls = []

    def step_or_fail(*args: Any, **kwargs: Any) -> Any:
        calls.append(None)
        if len(calls) == 1:
            raise error
        return step(*args, **kwargs)

    return step_or_fail


def main(workdir: Path) -> None:
    comm = MpiComm()
    queries = np.load(workdir / "queries.npy")
    index = DistributedIndex.open(workdir / "index", comm)
    seen: dict[str, Any] = {"errors": []}
    scan, route = index._scan, index._router.route
    if comm.rank == 1:
        index._scan = failing_once(scan, MemoryError("cannot allocate the scan's buffers"))
    try:
        index.search(queries, **SEARCH)
    except HpcragError as exc:
        seen["errors"].append(str(exc))
    answer = index.search(queries, **SEARCH)
    if comm.rank == 0:
        np.save(workdir / "spmd.npy", answer.ids)
    # An exact scan gathers every rank's row counts before scanning: the failure travels with them.
    parts = index._live.parts
    if comm.rank == 1:
        index._live.parts = failing_once(parts, OSError("cannot read a delta segment"))
    try:
        index.search(queries, strategy="exact", **SEARCH)
    except HpcragError as exc:
        seen["errors"].append(str(exc))
    answer = index.search(queries, strategy="exact", **SEARCH)
    if comm.rank == 0:
        np.save(workdir / "exact.npy", answer.ids)
    if comm.rank == 1:
        index._router.route = failing_once(route, RuntimeError("faiss: invalid argument"))
        index._scan = failing_once(scan, MemoryError("cannot allocate the scan's buffers"))
        index.follow()
        seen["followed to the end"] = True
    else:
        for _ in range(2):
            try:
                index.search(queries, **SEARCH)
            except HpcragError as exc:
                seen["errors"].append(str(exc))
        np.save(workdir / "served.npy", index.search(queries, **SEARCH).ids)
        index.close()
    (workdir / f"rank{comm.rank}.json").write_text(json.dumps(seen))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
