"""Run by every rank under mpirun: build an index, apply a fixed stream of updates, search, save.

    mpirun -n R python -m tests.integration.mpi_update_driver WORKDIR METRIC [REPLICATE]
WORKDIR holds base.npy and queries.npy; results go to WORKDIR/r{R}-{METRIC}[-replicated]/ (a build
with `--replicate REPLICATE`, also searched held to one shard per query). The stream (`plan`) is the
same on every rank and in the test, which replays it on a plain dict to know the survivors.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from hpcrag.search import BuildOptions, DistributedIndex, Metric, MpiComm, build_index
from hpcrag.search.metric import prepare
from hpcrag.search.router import coarse_quantizer

SEARCHES = [(10, 3), (10, 16)]
FILTER = {"bucket": {"lt": 3}}


def plan(base: np.ndarray, centroids: np.ndarray, metric: Metric, seed: int = 5) -> list[tuple[str, dict]]:
    """The update stream: adds, deletes (one whole list among them), upserts with repeated ids,
    re-added deleted ids, repeated and unknown ids in one delete; attributes on some rows."""
    rng = np.random.default_rng(seed)
    n, dim = base.shape
    lists = coarse_quantizer(centroids, metric).search(prepare(base, metric, "base"), 1)[1][:, 0]
    whole_list = np.flatnonzero(lists == lists[0])

    def vectors(count: int) -> np.ndarray:
        return (base[rng.integers(0, n, count)] + rng.normal(0, 0.3, (count, dim))).astype(np.float32)

    def buckets(count: int) -> list[dict[str, Any]]:
        return [{"bucket": int(b)} for b in rng.integers(0, 10, count)]

    new_ids = np.arange(100_000, 100_300)
    deleted = np.unique(np.concatenate([rng.choice(n, 200, replace=False), whole_list]))
    replaced = rng.choice(np.setdiff1d(np.arange(n), deleted), 100, replace=False)
    upsert_ids = np.concatenate([replaced, np.arange(200_000, 200_050), replaced[:5]])
    return [
        ("add", {"vectors": vectors(300), "ids": new_ids, "attributes": buckets(300)}),
        ("delete", {"ids": deleted}),
        ("upsert", {"vectors": vectors(155), "ids": upsert_ids, "attributes": buckets(155)}),
        ("add", {"vectors": vectors(50), "ids": deleted[:50], "attributes": buckets(50)}),
        ("delete", {"ids": np.concatenate([new_ids[:20], new_ids[:20], [999_999_999]])}),
    ]


def survivors(base: np.ndarray, steps: list[tuple[str, dict]]) -> dict[int, tuple[np.ndarray, int | None]]:
    """id -> (vector, bucket) after the stream, by plain dictionary updates."""
    model: dict[int, tuple[np.ndarray, int | None]] = {i: (base[i], None) for i in range(len(base))}
    for kind, args in steps:
        if kind == "delete":
            for ident in args["ids"].tolist():
                model.pop(ident, None)
            continue
        for row, ident in enumerate(args["ids"].tolist()):
            model[ident] = (args["vectors"][row], args["attributes"][row]["bucket"])
    return model


def main(workdir: Path, metric_name: str, replicate: float = 0.0) -> None:
    comm = MpiComm()
    metric = Metric(metric_name)
    out = workdir / f"r{comm.size}-{metric_name}{'-replicated' if replicate else ''}"
    base, queries = np.load(workdir / "base.npy"), np.load(workdir / "queries.npy")
    options = BuildOptions(nlist=16, nshards=4, metric=metric, dtype="float32", replicate=replicate)
    build_index(workdir / "base.npy", out / "index", options, comm=comm)
    index = DistributedIndex.open(out / "index", comm)
    steps = plan(base, np.load(out / "index" / "centroids.npy"), metric)
    seqs = []
    for kind, args in steps:
        result = getattr(index, kind)(**args)
        if result is not None:
            seqs.append(result.seq)
    found: dict[str, np.ndarray] = {}
    for k, nprobe in SEARCHES:
        result = index.search(queries, k=k, nprobe=nprobe)
        if result is not None:
            found[f"k{k}-p{nprobe}-ids"], found[f"k{k}-p{nprobe}-distances"] = result.ids, result.distances
    for strategy in ("ivf", "exact"):
        result = index.search(queries, k=10, nprobe=3, filter=FILTER, strategy=strategy)
        if result is not None:
            found[f"{strategy}-ids"], found[f"{strategy}-distances"] = result.ids, result.distances
    if replicate:
        result = index.search(queries, k=10, nprobe=16, max_shards=1)
        if result is not None:
            found["held-ids"], found["held-distances"] = result.ids, result.distances
    index.close()
    reopened = DistributedIndex.open(out / "index", comm)
    result = reopened.search(queries, k=10, nprobe=3)
    if comm.rank == 0:
        found["reopened-ids"] = result.ids
        np.savez(out / "results.npz", seqs=np.asarray(seqs), ntotal=reopened.ntotal, **found)
    reopened.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], float(sys.argv[3]) if len(sys.argv) > 3 else 0.0)
