"""The Python face of the distributed index: open it over a communicator and search it.

Every rank opens the index and loads the shards it owns (shard s lives on rank s % size). Rank 0
routes: it validates a batch, finds each query's probed lists and broadcasts the batch with them;
each rank scans only the probed lists it owns; the top-k reduction brings the answer to rank 0.

Two ways to drive it:
- SPMD: every rank calls `search(...)`; rank 0's arguments count, and only rank 0 gets the result.
- Service: rank 0 calls `search` whenever it likes; the other ranks sit in `follow()` until rank 0
  calls `close()`.
A bad batch is refused on rank 0 before any rank does work, and the same error is raised on every
rank that is inside `search`, so no rank is left waiting.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hpcrag.errors import HpcragError
from hpcrag.search import layout
from hpcrag.search.arrays import to_numpy
from hpcrag.search.backends import make_scanner
from hpcrag.search.comm import Communicator, LocalComm, agree
from hpcrag.search.device import array_module_for
from hpcrag.search.inputs import check_queries, check_search_params
from hpcrag.search.metric import Metric, prepare
from hpcrag.search.reduction import reduce_topk
from hpcrag.search.router import Router
from hpcrag.search.store import LocalLists, load_shard
from hpcrag.search.threads import limit_threads, threads_per_rank
from hpcrag.search.topk import empty_topk


@dataclass(frozen=True)
class SearchResult:
    ids: np.ndarray  # (nq, k) int64, -1 where fewer than k neighbours exist
    distances: np.ndarray  # (nq, k) float32: similarity for ip/cosine, squared distance for l2
    shards_touched: np.ndarray  # (nq,) shards that scanned for each query
    seconds: float

    @property
    def mean_shards_touched(self) -> float:
        return float(self.shards_touched.mean()) if self.shards_touched.size else 0.0


class DistributedIndex:
    def __init__(
        self,
        root: Path,
        manifest: layout.Manifest,
        comm: Communicator,
        lists: LocalLists,
        router: Router | None,
        scan_backend: str = "kernels",
    ) -> None:
        self.root = root
        self.manifest = manifest
        self.comm = comm
        self.metric = Metric(manifest.metric)
        self._lists = lists
        self._scan = make_scanner(scan_backend, lists, self.metric, comm.xp, manifest.nlist)
        self._router = router
        self._owned = comm.xp.asarray(lists.owned)  # once, not per batch: on the GPU it is a copy

    @classmethod
    def open(
        cls,
        root: Path | str,
        comm: Communicator | None = None,
        device: str = "cpu",
        verify: bool = True,
        threads: int | None = None,
        scan_backend: str = "kernels",
    ) -> DistributedIndex:
        """Collective: open the index in `root` on every rank of `comm` (default: this process only)."""
        root = Path(root)
        comm = comm or LocalComm(array_module_for(device))
        xp = comm.xp
        if xp is np:
            limit_threads(threads or threads_per_rank(comm.local_size))
        manifest = agree(comm, lambda: _checked_manifest(root, comm.size))
        owned = [shard for shard in range(manifest.nshards) if shard % comm.size == comm.rank]
        shards = agree(comm, lambda: [load_shard(root, manifest, s, verify, xp) for s in owned])
        list_shard = np.asarray(manifest.list_shard, dtype=np.int64)
        centroids = agree(comm, lambda: _load_centroids(root, manifest, verify) if comm.rank == 0 else None)
        router = Router(centroids, Metric(manifest.metric), list_shard, xp) if comm.rank == 0 else None
        lists = LocalLists(shards, list_shard, owned)
        return cls(root, manifest, comm, lists, router, scan_backend)

    @property
    def dim(self) -> int:
        return self.manifest.dim

    @property
    def ntotal(self) -> int:
        return self.manifest.ntotal

    def search(self, queries: Any = None, k: int = 10, nprobe: int = 1) -> SearchResult | None:
        """Collective on the ranks that call it: the result on rank 0, None elsewhere."""
        if self.comm.rank != 0:
            header = self.comm.announce(None)
            if header["op"] == "error":
                raise HpcragError(header["message"])
            if header["op"] == "stop":
                raise HpcragError("rank 0 closed the index while this rank was searching")
            self._follower_search(header)
            return None
        try:
            check_search_params(k, nprobe, self.manifest.nlist)
            batch = check_queries(self.comm.xp.asarray(queries), self.dim)
            batch = prepare(batch, self.metric, "queries")
        except HpcragError as exc:
            self.comm.announce({"op": "error", "message": str(exc)})
            raise
        return self._root_search(batch, k, nprobe)

    def follow(self) -> None:
        """Non-root ranks: serve rank 0's searches until it calls `close()`; idle, they sleep."""
        while True:
            header = self.comm.announce(None)
            if header["op"] == "stop":
                return
            if header["op"] == "search":
                self._follower_search(header)

    def close(self) -> None:
        """Rank 0: release the ranks waiting in `follow()`."""
        if self.comm.rank == 0 and self.comm.size > 1:
            self.comm.announce({"op": "stop"})

    def _root_search(self, batch: Any, k: int, nprobe: int) -> SearchResult:
        started = time.perf_counter()
        nq = batch.shape[0]
        probes = self._router.probe(batch, nprobe)
        self.comm.announce({"op": "search", "k": k, "nprobe": nprobe, "nq": nq})
        batch = self.comm.bcast_array(batch, batch.shape, batch.dtype)
        probes = self.comm.bcast_array(probes, probes.shape, probes.dtype)
        scores, ids = reduce_topk(self.comm, *self._scan_owned(batch, probes, k), k, self.metric)
        host_probes = to_numpy(probes)
        return SearchResult(
            ids=to_numpy(ids),
            distances=to_numpy(scores).astype(np.float32),
            shards_touched=self._router.shards_touched(host_probes),
            seconds=time.perf_counter() - started,
        )

    def _follower_search(self, header: dict[str, Any]) -> None:
        xp, nq, k = self.comm.xp, header["nq"], header["k"]
        batch = self.comm.bcast_array(None, (nq, self.dim), xp.float32)
        probes = self.comm.bcast_array(None, (nq, header["nprobe"]), xp.int64)
        reduce_topk(self.comm, *self._scan_owned(batch, probes, k), k, self.metric)

    def _scan_owned(self, batch: Any, probes: Any, k: int) -> tuple[Any, Any]:
        """This rank's top-k for every query of the batch; queries it owns no list of stay empty."""
        xp = self.comm.xp
        owned = self._owned[probes]
        rows = xp.flatnonzero(owned.any(axis=1))
        scores, ids = empty_topk(xp, batch.shape[0], k, self.metric.worst)
        if rows.size:
            local_probes = xp.where(owned[rows], probes[rows], -1)
            scores[rows], ids[rows] = self._scan(batch[rows], local_probes, k)
        return scores, ids


def _checked_manifest(root: Path, ranks: int) -> layout.Manifest:
    manifest = layout.read_manifest(root)
    if ranks > manifest.nshards:
        raise HpcragError(
            f"{ranks} ranks but the index in {root} has {manifest.nshards} shards: run at most "
            f"{manifest.nshards} ranks (-n {manifest.nshards})"
        )
    return manifest


def _load_centroids(root: Path, manifest: layout.Manifest, verify: bool) -> np.ndarray:
    path = root / layout.CENTROIDS
    centroids = np.asarray(layout.load_array(path, manifest.centroids, verify, mmap=False))
    if centroids.shape != (manifest.nlist, manifest.dim):
        raise layout.IndexFormatError(f"{path} is damaged: shape {centroids.shape}; rebuild the index")
    return centroids
