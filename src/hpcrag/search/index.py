"""The Python face of the distributed index: open it over a communicator, search it, update it.

Every rank opens the index, loads the shards it owns (shard s lives on rank s % size) and replays
the update log (`wal.py`) on top of them. Rank 0 routes: it validates a batch, finds each query's
probed lists and broadcasts the batch with them; each rank scans only the probed lists it owns; the
top-k reduction brings the answer to rank 0.

Updates (`add`, `upsert`, `delete`) are validated on rank 0, which assigns each new vector to its
nearest list, appends one record to the log under the writer lock (durable before it returns) and
broadcasts it; every rank applies what concerns its shards (`live.py`). One record per call makes
an upsert atomic: no search sees the id missing or twice. Writers in other processes (another
replica, the CLI) are picked up by `refresh()` and before every write.

Shard selection is a step of its own (`Router.route`): with `max_shards` a query visits at most that
many shards, those owning its best probed centroids, and with `shard_margin` only those whose best
centroid is nearly as near as the nearest. How a shard answers depends on its local kind
(`local_kinds.py`): its lists (ivf-flat), or its own hnsw, ivf-pq or cagra index.

Filters (`filters.py`) become a row mask inside the scan. When a filter matches so few rows that
probing `nprobe` lists would miss neighbours (or would read more rows than the matches), every rank
scans its matching rows exactly instead; the result says which strategy ran.

Two ways to drive it:
- SPMD: every rank calls the same method; rank 0's arguments count, and only rank 0 gets the result.
- Service: rank 0 calls methods whenever it likes; the other ranks sit in `follow()` until rank 0
  calls `close()`.
A bad call is refused on rank 0 before any rank changes anything, and the same error is raised on
every rank that is inside the call, so no rank is left waiting. A search that fails on some rank
once under way (an exception: memory, a library error) is raised on every rank too, naming that
rank; a rank in `follow()` serves on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from hpcrag.errors import HpcragError
from hpcrag.search import layout
from hpcrag.search.arrays import to_numpy
from hpcrag.search.attributes import AttributeSchema, encode_rows, with_undeclared
from hpcrag.search.backends import make_scanner, warm_up
from hpcrag.search.comm import Communicator, LocalComm, RankFailures, agree, row_bounds
from hpcrag.search.device import array_module_for
from hpcrag.search.exact import exact_scan
from hpcrag.search.filters import Filter, compile_filter
from hpcrag.search.inputs import check_ids, check_queries, check_search_params, check_storable, cli_flag
from hpcrag.search.live import LiveShards
from hpcrag.search.local_kinds import KINDS, LIVE_KINDS, cagra_unavailable, check_search_effort
from hpcrag.search.local_scan import LocalKindScan
from hpcrag.search.metric import Metric, prepare
from hpcrag.search.reduction import reduce_topk
from hpcrag.search.replication import second_lists
from hpcrag.search.router import Router
from hpcrag.search.store import Segment, load_shard
from hpcrag.search.threads import limit_threads, threads_per_rank
from hpcrag.search.topk import empty_topk
from hpcrag.search.wal import ServingLock, Update, UpdateLog

STRATEGIES = ("auto", "ivf", "exact")
# auto: scan exactly when the matching rows are no more than IVF would read, or when the probed lists
# would hold fewer than this many matches per neighbour asked for (too few to find the true top-k).
MIN_EXPECTED_MATCHES_PER_K = 50


@dataclass(frozen=True)
class SearchResult:
    ids: np.ndarray  # (nq, k) int64, -1 where fewer than k neighbours exist
    distances: np.ndarray  # (nq, k) float32: similarity for ip/cosine, squared distance for l2
    shards_touched: np.ndarray  # (nq,) shards that scanned for each query
    seconds: float
    strategy: str = "ivf"  # "ivf": the probed lists; "exact": every matching row
    seq: int = 0  # the last update this answer reflects
    # (nshards,) how many of the queries each shard searched: a hot shard shows here (empty: unknown)
    shard_queries: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def mean_shards_touched(self) -> float:
        return float(self.shards_touched.mean()) if self.shards_touched.size else 0.0


@dataclass(frozen=True)
class UpdateResult:
    seq: int  # the log position after this update: a search with `seq >= this` reflects it
    added: int = 0  # new ids
    replaced: int = 0  # ids that held a live row before (upsert)
    deleted: int = 0
    unknown_ids: tuple[int, ...] = ()  # ids a delete did not find (not an error unless strict)
    declared: dict[str, str] | None = None  # attributes this update declared


class DistributedIndex:
    def __init__(
        self,
        root: Path,
        manifest: layout.Manifest,
        comm: Communicator,
        live: LiveShards,
        router: Router,
        scan_backend: str = "kernels",
    ) -> None:
        self.root = root
        self.manifest = manifest
        self.comm = comm
        self.metric = Metric(manifest.metric)
        self.schema = AttributeSchema(tuple(manifest.attributes.items()))
        self.seq = manifest.base_seq
        self._live = live
        self.scan_backend = scan_backend
        self.kind = manifest.local["kind"]
        lists = make_scanner(scan_backend, self.metric, comm.xp, manifest.nlist)
        warm_up(lists, [segment for _, segment in live.segments() if segment.local is None])  # list-scanned
        if self.kind == "ivf-flat":
            self._scan = lists
        else:
            self._scan = LocalKindScan(manifest.local, self.metric, lists, router.host_centroids)
            self._scan.warm([segment for _, segment in live.segments()])
        self._router = router
        self._owned = comm.xp.asarray(live.owned)  # once, not per batch: on the GPU it is a copy
        self._log = UpdateLog(root, manifest.base_seq) if comm.rank == 0 else None
        self._serving = ServingLock(root) if comm.rank == 0 else None
        self._ntotal = manifest.ntotal
        # The build's boundary-copy threshold (`replication.py`; 0: it copied none).
        self.copy_threshold = float(manifest.build.get("replicate_threshold", 0.0))
        # Ids of a replicated index put without second copies (logged by an hpcrag that made them only
        # at compact): `compact` copies these by the build's rule, and no other row.
        self.logged_without_copies: set[int] = set()
        self._closed = False

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
        """Collective: open the index in `root` on every rank of `comm` (default: this process only),
        with every logged update applied."""
        root = Path(root)
        comm = comm or LocalComm(array_module_for(device))
        xp = comm.xp
        if xp is np:
            limit_threads(threads or threads_per_rank(comm.local_size))
        manifest = agree(comm, lambda: _checked_manifest(root, comm.size, device, scan_backend))
        owned = [shard for shard in range(manifest.nshards) if shard % comm.size == comm.rank]
        bases = agree(comm, lambda: {s: load_shard(root, manifest, s, verify, xp) for s in owned})
        list_shard = np.asarray(manifest.list_shard, dtype=np.int64)
        # Every rank routes a slice of each batch, so every rank holds the centroids.
        centroids = agree(comm, lambda: _load_centroids(root, manifest, verify))
        held = np.asarray(manifest.list_counts) > 0
        router = Router(centroids, Metric(manifest.metric), list_shard, xp, held)
        live = LiveShards(bases, list_shard, manifest.nlist, len(manifest.attributes), xp)
        index = cls(root, manifest, comm, live, router, scan_backend)
        replay = agree(comm, lambda: index._log.read_new() if comm.rank == 0 else None)
        index._apply(comm.bcast_obj(replay))
        return index

    @property
    def dim(self) -> int:
        return self.manifest.dim

    def segments(self, shard: int) -> list[Segment]:
        """The segments of an owned shard: its base, then the deltas of rows added since."""
        return self._live.shards[shard]

    @property
    def router(self) -> Router:
        """The coarse routing every rank holds: probes and shard selection."""
        return self._router

    @property
    def ntotal(self) -> int:
        """Live vectors: the base rows plus those added, less those deleted."""
        return self._ntotal

    # -- searching ------------------------------------------------------------------------------

    def search(
        self,
        queries: Any = None,
        k: int = 10,
        nprobe: int = 1,
        filter: Filter | Mapping[str, Any] | None = None,
        strategy: str = "auto",
        max_shards: int | None = None,
        ef: int | None = None,
        refine: int | None = None,
        shard_margin: float | None = None,
    ) -> SearchResult | None:
        """Collective on the ranks that call it: the result on rank 0, None elsewhere.

        `filter` is a filter spec (see `filters.py`) or a compiled `Filter`; `strategy` forces "ivf"
        (the probed lists) or "exact" (every matching row); "auto" picks per batch. `max_shards`
        caps the shards a query visits (default: every shard owning one of its probes), and a shard
        past the first is visited only if its nearest probed centroid's squared distance is within
        (1 + `shard_margin`) x the nearest's; `ef` is the graph search effort (hnsw, cagra),
        `refine` the ivf-pq re-rank factor."""
        if self.comm.rank != 0:
            self._follow_until("search")
            return None
        try:
            check_search_params(k, nprobe, self.manifest.nlist)
            check_strategy(strategy)
            self.check_routing(max_shards, shard_margin, ef, refine)
            if strategy == "exact" and (max_shards is not None or shard_margin is not None):
                raise HpcragError(
                    "--strategy exact scans every matching row of every shard: it takes no --max-shards or "
                    "--shard-margin"
                )
            flt = self.compile_filter(filter)
            self._check_backend(flt is not None or self.seq != self.manifest.base_seq)
            self._check_kind(flt is not None or strategy == "exact", "filters and exact search")
            batch = check_queries(self.comm.xp.asarray(queries), self.dim)
            batch = prepare(batch, self.metric, "queries")
        except Exception as exc:  # whatever rank 0 refuses, the other ranks must hear of it
            self.comm.announce({"op": "error", "message": str(exc)})
            raise
        routing = {
            "max_shards": max_shards,
            "shard_margin": shard_margin,
            "effort": {"ef": ef, "refine": refine},
        }
        return self._root_search(batch, k, nprobe, flt, strategy, routing)

    def check_routing(
        self,
        max_shards: int | None = None,
        shard_margin: float | None = None,
        ef: int | None = None,
        refine: int | None = None,
        spell: Callable[[str], str] = cli_flag,
    ) -> None:
        """Refuse shard selection or search effort this index cannot take (a clear HpcragError that
        names each knob as `spell` does: command-line flags by default, request fields for a service)."""
        check_max_shards(max_shards, self.manifest.nshards, spell)
        check_shard_margin(shard_margin, spell)
        check_search_effort(self.kind, ef, refine, spell)

    def _check_kind(self, asked: bool, what: str) -> None:
        """Refuse, on rank 0, updates, filters and exact scans where the local kind takes none."""
        if asked and self.kind not in LIVE_KINDS:
            raise HpcragError(
                f"this index's shards are {self.kind} (built with --local {self.kind}), which takes no "
                f"{what}; rebuild with --local {' or '.join(LIVE_KINDS)} for a live or filtered index"
            )

    def _check_backend(self, live: bool) -> None:
        """Refuse, on rank 0 before any rank works, what the faiss backend cannot do: updates, filters."""
        if live and self.scan_backend == "faiss":
            raise HpcragError(
                "the faiss scan backend reads the index as built: it cannot apply updates or filters; "
                "use --scan-backend kernels (or compact the index first)"
            )

    def compile_filter(self, spec: Filter | Mapping[str, Any] | None) -> Filter | None:
        """A filter spec checked against this index's attributes (rank 0's view)."""
        if spec is None or isinstance(spec, Filter):
            return spec
        return compile_filter(spec, self.schema)

    def _root_search(
        self, batch: Any, k: int, nprobe: int, flt: Filter | None, strategy: str, routing: dict[str, Any]
    ) -> SearchResult:
        started = time.perf_counter()
        nq = batch.shape[0]
        header = {"op": "search", "k": k, "nprobe": nprobe, "nq": nq, "filter": flt, "strategy": strategy}
        header.update(routing)
        self.comm.announce(header)
        batch = self.comm.bcast_array(batch, batch.shape, batch.dtype)
        (scores, ids), probes, chosen, matching = self._search_here(batch, header)
        scores, ids = reduce_topk(self.comm, scores, ids, k, self.metric)
        if chosen == "ivf":
            touched, shard_queries = self._router.shard_load(to_numpy(probes))
        else:  # an exact scan reads every shard with a matching row, for every query
            touched = np.full(nq, int(matching.sum()))
            shard_queries = np.where(matching, nq, 0).astype(np.int64)
        return SearchResult(
            ids=to_numpy(ids),
            distances=to_numpy(scores).astype(np.float32),
            shards_touched=touched,
            seconds=time.perf_counter() - started,
            strategy=chosen,
            seq=self.seq,
            shard_queries=shard_queries,
        )

    def _follower_search(self, header: dict[str, Any]) -> None:
        xp, nq, k = self.comm.xp, header["nq"], header["k"]
        batch = self.comm.bcast_array(None, (nq, self.dim), xp.float32)
        (scores, ids), _, _, _ = self._search_here(batch, header)
        reduce_topk(self.comm, scores, ids, k, self.metric)

    def _search_here(
        self, batch: Any, header: dict[str, Any]
    ) -> tuple[tuple[Any, Any], Any, str, np.ndarray]:
        """This rank's part of a search (collective): route its slice of the batch, then scan the
        shards it owns. Returns its top-k for every query, every query's routed probes, the
        strategy that ran and (exact) which shards have matching rows. An exception on any rank
        (memory, a library error) is raised on every rank, naming it (`RankFailures`): none is left
        waiting, and the index answers the next call as before."""
        xp, k, flt, strategy = self.comm.xp, header["k"], header["filter"], header["strategy"]
        failures = RankFailures(self.comm, "search")
        bounds = row_bounds(batch.shape[0], self.comm.size)
        lo, hi = (int(bound) for bound in bounds[self.comm.rank : self.comm.rank + 2])
        part = failures.run(
            lambda: self._route_slice(batch[lo:hi], header),
            lambda: xp.full((hi - lo, header["nprobe"]), -1, dtype=xp.int64),  # no probes: unrouted
        )
        probes = self.comm.allgather_rows(part, bounds)
        parts, counts = failures.run(lambda: self._live.parts(flt), lambda: ([], {}))
        chosen = "ivf" if strategy == "auto" else strategy
        matching = np.zeros(self.manifest.nshards, dtype=bool)
        if chosen == "exact" or (strategy == "auto" and flt is not None):
            gathered = self.comm.allgather_obj((counts, failures.failure))
            failures.check([failure for _, failure in gathered])
            per_shard: dict[int, int] = {}
            for rank_counts, _ in gathered:
                per_shard.update(rank_counts)
            matching[[shard for shard, count in per_shard.items() if count]] = True
            if strategy == "auto":
                chosen = self._choose(sum(per_shard.values()), header["nprobe"], k)
        found = failures.run(
            lambda: self._scan_owned(batch, probes, parts, header, chosen),
            lambda: empty_topk(xp, batch.shape[0], k, self.metric.worst),
        )
        failures.check()
        return found, probes, chosen, matching

    def _route_slice(self, mine: Any, header: dict[str, Any]) -> Any:
        """This rank's slice of the batch routed: each rank routes a slice (on rank 0 alone,
        scoring the whole batch against the centroids kept the others waiting)."""
        if not mine.shape[0]:
            return self.comm.xp.empty((0, header["nprobe"]), dtype=self.comm.xp.int64)
        return self._router.route(mine, header["nprobe"], header["max_shards"], header["shard_margin"])

    def _scan_owned(
        self, batch: Any, probes: Any, parts: list, header: dict[str, Any], chosen: str
    ) -> tuple[Any, Any]:
        """This rank's top-k for every query: its matching rows (exact), or the probes it owns."""
        xp, k = self.comm.xp, header["k"]
        if chosen == "exact":
            return exact_scan(batch, parts, k, self.metric, xp)
        owned = (probes >= 0) & self._owned[xp.maximum(probes, 0)]  # -1: a probe shard selection dropped
        rows = xp.flatnonzero(owned.any(axis=1))
        scores, ids = empty_topk(xp, batch.shape[0], k, self.metric.worst)
        if rows.size:
            local_probes = xp.where(owned[rows], probes[rows], -1)
            scores[rows], ids[rows] = self._scan(batch[rows], local_probes, k, parts, header["effort"])
        return scores, ids

    def _choose(self, matching: int, nprobe: int, k: int) -> str:
        share = nprobe / self.manifest.nlist
        probed_rows = self._ntotal * share
        if matching <= probed_rows or matching * share < MIN_EXPECTED_MATCHES_PER_K * k:
            return "exact"
        return "ivf"

    # -- updating -------------------------------------------------------------------------------

    def add(
        self,
        vectors: Any = None,
        ids: Any = None,
        attributes: Sequence[Mapping[str, Any] | None] | None = None,
        declare: Mapping[str, str] | None = None,
    ) -> UpdateResult | None:
        """Collective: add new ids (an id already in the index is an error: use `upsert`)."""
        return self._update("add", vectors, ids, attributes, declare, strict=False)

    def upsert(
        self,
        vectors: Any = None,
        ids: Any = None,
        attributes: Sequence[Mapping[str, Any] | None] | None = None,
        declare: Mapping[str, str] | None = None,
    ) -> UpdateResult | None:
        """Collective: add or replace; of ids repeated in one call the last row counts."""
        return self._update("upsert", vectors, ids, attributes, declare, strict=False)

    def delete(self, ids: Any = None, strict: bool = False) -> UpdateResult | None:
        """Collective: delete ids; ids not in the index are reported, or with `strict` refused."""
        return self._update("delete", None, ids, None, None, strict)

    def refresh(self) -> int:
        """Rank 0: apply what other writers appended to the log since; returns the state's seq."""
        if self._log.has_new():
            records = self._log.read_new()
            if records:
                self._broadcast_apply(records)
        return self.seq

    def _update(
        self,
        kind: str,
        vectors: Any,
        ids: Any,
        attributes: Sequence[Mapping[str, Any] | None] | None,
        declare: Mapping[str, str] | None,
        strict: bool,
    ) -> UpdateResult | None:
        if self.comm.rank != 0:
            self._follow_until("done")
            return None
        try:
            self._check_backend(True)
            self._check_kind(True, "updates")
            result = self._root_update(kind, vectors, ids, attributes, declare, strict)
        except Exception as exc:  # whatever rank 0 refuses, the other ranks must hear of it
            self.comm.announce({"op": "error", "message": str(exc)})
            raise
        self.comm.announce({"op": "done"})
        return result

    def _root_update(
        self,
        kind: str,
        vectors: Any,
        ids: Any,
        attributes: Sequence[Mapping[str, Any] | None] | None,
        declare: Mapping[str, str] | None,
        strict: bool,
    ) -> UpdateResult:
        ids = check_ids(ids)
        if kind == "delete":
            ids = np.unique(ids)
            with self._log.writing() as unseen:
                self._broadcast_apply(unseen)
                present = self._contains(ids)
                unknown = tuple(int(i) for i in ids[~present])
                if strict and unknown:
                    raise HpcragError(
                        f"{len(unknown)} of {ids.size} ids are not in the index "
                        f"(first: {list(unknown[:5])}); nothing was deleted"
                    )
                if present.any():
                    self._append_and_apply(Update("delete", ids=ids[present]))
            return UpdateResult(seq=self.seq, deleted=int(present.sum()), unknown_ids=unknown)
        rows, ids, attributes = self._checked_rows(kind, vectors, ids, attributes)
        lists = np.asarray(to_numpy(self._router.probe(self.comm.xp.asarray(rows), 1)))[:, 0]
        stored = np.asarray(to_numpy(rows)).astype(self.manifest.dtype)
        with self._log.writing() as unseen:
            # Other writers' records first: the schema and the ids below are checked against them.
            self._broadcast_apply(unseen)
            schema = self._schema_for(attributes, declare)
            encoded = encode_rows(schema, attributes if attributes is not None else [None] * ids.size)
            new_columns = dict(schema.columns[len(self.schema.columns) :])
            present = self._contains(ids)
            if kind == "add" and present.any():
                taken = ids[present][:5].tolist()
                raise HpcragError(
                    f"{int(present.sum())} ids are already in the index (first: {taken}); "
                    "use upsert to replace them, or delete them first"
                )
            update = Update(
                "put",
                ids=ids,
                lists=lists.astype(np.int64),
                vectors=stored,
                attributes=encoded,
                columns=new_columns or None,
                copies=self._copies(stored, lists),
            )
            self._append_and_apply(update)
        return UpdateResult(
            seq=self.seq,
            added=int((~present).sum()),
            replaced=int(present.sum()),
            declared=new_columns or None,
        )

    def _copies(self, stored: np.ndarray, lists: np.ndarray) -> np.ndarray | None:
        """Per row, the list of another shard that gets its second copy, by the build's rule and
        threshold (`replication.py`), judged on the row as stored; None when the build copied none."""
        if self.copy_threshold <= 0:
            return None
        rows = self.comm.xp.asarray(stored, dtype=self.comm.xp.float32)  # where the router's centroids are
        return second_lists(self._router, rows, lists.astype(np.int64), self.copy_threshold)

    def _checked_rows(
        self,
        kind: str,
        vectors: Any,
        ids: np.ndarray,
        attributes: Sequence[Mapping[str, Any] | None] | None,
    ) -> tuple[Any, np.ndarray, Sequence[Mapping[str, Any] | None] | None]:
        """Prepared vectors with unique ids (an upsert keeps the last row of a repeated id)."""
        rows = check_queries(self.comm.xp.asarray(vectors), self.dim, what="vectors")
        if rows.shape[0] != ids.size:
            raise HpcragError(f"{rows.shape[0]} vectors but {ids.size} ids: give one id per vector")
        if attributes is not None and len(attributes) != ids.size:
            raise HpcragError(f"{len(attributes)} attribute rows for {ids.size} vectors: give one per vector")
        rows = prepare(rows, self.metric, "vectors")
        check_storable(rows, self.manifest.dtype)
        unique, first = np.unique(ids, return_index=True)
        if unique.size != ids.size:
            if kind == "add":
                repeated = ids[np.setdiff1d(np.arange(ids.size), first)][0]
                raise HpcragError(
                    f"id {int(repeated)} appears more than once in this call; ids must be unique "
                    "(upsert keeps the last row of a repeated id)"
                )
            keep = np.sort(ids.size - 1 - np.unique(ids[::-1], return_index=True)[1])
            rows, ids = rows[self.comm.xp.asarray(keep)], ids[keep]
            attributes = None if attributes is None else [attributes[i] for i in keep]
        return rows, ids, attributes

    def _schema_for(
        self, attributes: Sequence[Mapping[str, Any] | None] | None, declare: Mapping[str, str] | None
    ) -> AttributeSchema:
        """The schema with what this update declares, and what its undeclared attributes imply."""
        schema = self.schema
        if declare:
            schema = schema.extended(AttributeSchema(tuple(declare.items())))
        return schema if attributes is None else with_undeclared(schema, attributes)

    def _append_and_apply(self, update: Update) -> None:
        self._mark_format_for(update)
        self._broadcast_apply([replace(update, seq=self._log.append(update))])

    def _mark_format_for(self, update: Update) -> None:
        """Stamp, before `update` is logged, the oldest format version that reads the index right
        with it: 2 for an update to hnsw or ivf-pq shards (a reader of 1 would ignore it and serve
        deleted rows), 4 for one that logs second copies (a reader of 3 cannot parse it). An older
        hpcrag then refuses the index by its version, instead of misreading it."""
        needed = self.manifest.format_version
        if self.kind != "ivf-flat":
            needed = max(needed, layout.FORMAT_VERSION)
        if update.copies is not None:
            needed = max(needed, layout.LOGGED_COPIES_VERSION)
        if needed != self.manifest.format_version:
            self.manifest = replace(self.manifest, format_version=needed)
            layout.write_manifest(self.root, self.manifest)

    def _broadcast_apply(self, records: list[Update]) -> None:
        if records:
            self.comm.announce({"op": "apply"})
            self._apply(self.comm.bcast_obj(records))

    def _apply(self, records: list[Update]) -> None:
        """Every rank: apply logged records in order (what concerns this rank's shards)."""
        if not records:
            return
        for update in records:
            if update.columns:
                self.schema = self.schema.extended(AttributeSchema(tuple(update.columns.items())))
                self._live.widen(len(self.schema.columns))
            if self.copy_threshold > 0 and update.kind in ("put", "delete"):
                if update.kind == "put" and update.copies is None:
                    self.logged_without_copies.update(update.ids.tolist())
                else:
                    self.logged_without_copies.difference_update(update.ids.tolist())
            if update.kind == "delete":
                self._live.delete(update.ids)
            elif update.kind == "put":
                self._live.put(update.ids, update.lists, update.vectors, update.attributes, update.copies)
                self._router.hold(update.lists)
                if update.copies is not None:
                    self._router.hold(update.copies[update.copies >= 0])
            self.seq = update.seq
        self._ntotal = sum(self.comm.allgather_obj(sum(self._live.live_vectors().values())))

    def _contains(self, ids: np.ndarray) -> np.ndarray:
        self.comm.announce({"op": "contains", "n": int(ids.size)})
        ids = self.comm.bcast_obj(ids)  # host ids on every rank (bcast_array would move them to a GPU)
        found = self.comm.gather_obj(self._live.contains(ids))
        return np.logical_or.reduce(found) if self.comm.rank == 0 else found

    # -- the followers' side ---------------------------------------------------------------------

    def follow(self) -> None:
        """Non-root ranks: serve rank 0's calls until it calls `close()`; idle, they sleep."""
        self._follow_until("stop")
        self._closed = True

    def _follow_until(self, last: str) -> None:
        """Serve rank 0's steps until the one that ends the call this rank is in (`last`)."""
        while True:
            header = self.comm.announce(None)
            op = header["op"]
            if op == "stop":
                if last == "stop":
                    return
                raise HpcragError("rank 0 closed the index while this rank was in a call")
            if op == "error":
                if last != "stop":
                    raise HpcragError(header["message"])
            elif op == "search":
                try:
                    self._follower_search(header)
                except HpcragError:
                    if last == "search":  # SPMD: this rank's call raises as rank 0's does
                        raise
                    # Serving: rank 0 answers its caller with the failure; this rank serves on.
            elif op == "apply":
                self._apply(self.comm.bcast_obj(None))
            elif op == "contains":
                self.comm.gather_obj(self._live.contains(self.comm.bcast_obj(None)))
            if op == last:
                return

    def close(self) -> None:
        """Release the index. Rank 0 releases the ranks in `follow()`; in SPMD use every rank calls it."""
        if self._closed:
            return
        self._closed = True
        if self.comm.rank == 0:
            if self.comm.size > 1:
                self.comm.announce({"op": "stop"})
            self._serving.close()
        else:
            self._follow_until("stop")


def check_strategy(strategy: str) -> None:
    if strategy not in STRATEGIES:
        raise HpcragError(f"unknown filter strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")


def check_max_shards(max_shards: int | None, nshards: int, spell: Callable[[str], str] = cli_flag) -> None:
    whole = isinstance(max_shards, (int, np.integer)) and not isinstance(max_shards, bool)
    if max_shards is not None and (not whole or not 1 <= max_shards <= nshards):
        raise HpcragError(
            f"{spell('max_shards')} must be in [1, {nshards}] (the index's shards), got {max_shards}"
        )


def check_shard_margin(margin: float | None, spell: Callable[[str], str] = cli_flag) -> None:
    if margin is not None and (isinstance(margin, bool) or not 0.0 <= margin <= 100.0):
        raise HpcragError(
            f"{spell('shard_margin')} must be a number in [0, 100] (0.3: 30% more squared distance), "
            f"got {margin!r}"
        )


def _checked_manifest(root: Path, ranks: int, device: str, scan_backend: str) -> layout.Manifest:
    manifest = layout.read_manifest(root)
    kind = manifest.local.get("kind") if isinstance(manifest.local, dict) else None
    if kind not in KINDS:
        raise layout.IndexFormatError(
            f"{root / layout.MANIFEST}: unknown local index kind {kind!r}; rebuild the index with this hpcrag"
        )
    if kind != "ivf-flat" and scan_backend != "kernels":
        raise HpcragError(
            f"--scan-backend {scan_backend} scans ivf-flat lists, and this index's shards are {kind}; "
            "leave --scan-backend at its default"
        )
    if kind in ("hnsw", "ivf-pq") and device != "cpu":
        raise HpcragError(f"{kind} shards are faiss CPU indexes: open this index with --device cpu")
    why = cagra_unavailable(device != "cpu") if kind == "cagra" else None
    if why:
        raise HpcragError(
            f"this index's shards are CAGRA graphs, and {why}: open it on a GPU node with cuVS installed "
            "(--device cuda)"
        )
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
