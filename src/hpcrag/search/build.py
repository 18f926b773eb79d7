"""Building the index, as one process or as R <= S MPI ranks sharing the work.

Rank 0 trains the coarse centroids (faiss k-means on a sample); every rank assigns its slice of the
rows to lists; rank 0 groups the lists into shards (neighbours together, sizes balanced; given a
sample of real queries, also the searches each rank will do, `query_balance.py`); the rows
travel to the rank that owns their shard in bounded rounds (`Alltoallv`); each rank writes its shards.
With a local kind other than ivf-flat (`local_kinds.py`), each rank also builds its shards' own
index over the rows it writes (ivf-pq: codebooks trained once on rank 0 and shared).
Everything goes to a hidden sibling directory that is renamed to `--out` only when complete, so a
failed build leaves nothing half-written behind.
"""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hpcrag.errors import HpcragError
from hpcrag.search import layout
from hpcrag.search.attributes import (
    MISSING,
    AttributeSchema,
    encode_rows,
    read_attributes_file,
    with_undeclared,
)
from hpcrag.search.comm import Communicator, LocalComm, agree, row_bounds
from hpcrag.search.device import require_cupy
from hpcrag.search.grouping import group_lists
from hpcrag.search.inputs import check_finite, check_queries, check_storable, load_ids, open_vectors
from hpcrag.search.local_kinds import (
    FILES,
    LIVE_KINDS,
    MIN_PQ_TRAINING,
    build_local,
    local_spec,
    train_template,
)
from hpcrag.search.metric import Metric, prepare
from hpcrag.search.query_balance import QUERY_PROBES, balance_query_load, rank_loads
from hpcrag.search.replication import boundary_ratios, second_lists, threshold_for
from hpcrag.search.router import Router, coarse_quantizer
from hpcrag.search.threads import limit_threads, threads_per_rank
from hpcrag.util.workdirs import make_workdir, sigterm_held, stopped_by_sigterm

STORAGE_DTYPES = ("float16", "float32")
TRAIN_POINTS_PER_LIST = 256
GROUPING_SAMPLE = 20000
MIN_QUERY_SAMPLE = 100
MAX_QUERY_SAMPLE = 20_000  # more tells little more about where queries fall, and slows the grouping


@dataclass(frozen=True)
class BuildOptions:
    nlist: int
    nshards: int
    metric: Metric = Metric.IP
    dtype: str = "float16"
    niter: int = 20
    seed: int = 1234
    chunk_rows: int = 65536
    overwrite: bool = False
    route_nprobe: int | None = None  # the nprobe the shard grouping optimises for (default nlist/16)
    local_kind: str = "ivf-flat"  # how each shard searches its rows (`local_kinds.KINDS`)
    local_params: Mapping[str, Any] = field(default_factory=dict)  # that kind's build parameters
    replicate: float = 0.0  # the share of vectors also stored in a second shard (`replication.py`)
    query_sample: Path | None = None  # queries whose searches the grouping spreads over the ranks
    serve_ranks: int | None = None  # the ranks the index will be searched with (default: the build's)

    def grouping_nprobe(self) -> int:
        return min(self.nlist, self.route_nprobe or max(1, self.nlist // 16))


Progress = Callable[[str], None]


def build_index(
    vectors_path: Path,
    out: Path,
    options: BuildOptions,
    ids_path: Path | None = None,
    comm: Communicator | None = None,
    progress: Progress | None = None,
    attributes_path: Path | None = None,
    schema: AttributeSchema | None = None,
) -> layout.Manifest:
    """Build the index of `vectors_path` into `out` (collective over `comm`); returns its manifest.

    `attributes_path` is a JSON Lines file, one object per vector; `schema` declares their types
    (default: inferred from the file)."""
    comm = comm or LocalComm()
    limit_threads(threads_per_rank(comm.local_size))  # ranks sharing a node share its cores
    say = progress if (progress and comm.rank == 0) else (lambda message: None)
    out = Path(out)
    vectors, local = agree(comm, lambda: _validate(vectors_path, out, options, comm.size))
    ids = agree(comm, lambda: _ids_for(ids_path, vectors.shape[0]))
    sample = agree(
        comm, lambda: _query_sample(options, vectors.shape[1], comm.size) if comm.rank == 0 else None
    )
    if attributes_path is not None and local["kind"] not in LIVE_KINDS:
        raise HpcragError(
            f"--attributes serve filters, which --local {local['kind']} shards do not take; drop "
            f"--attributes or build with --local {' or '.join(LIVE_KINDS)}"
        )
    schema, attributes = agree(comm, lambda: _attributes_for(attributes_path, schema, vectors.shape[0]))
    with stopped_by_sigterm(f"the build of {out}"):
        folder = agree(
            comm, lambda: make_workdir(out, "building", say, layout.MANIFEST) if comm.rank == 0 else None
        )
        workdir = Path(comm.bcast_obj(str(folder.path) if folder else None))
        try:
            manifest = _build(vectors, ids, (schema, attributes), workdir, options, local, comm, say, sample)
        except BaseException:
            if folder:
                shutil.rmtree(workdir, ignore_errors=True)
                folder.release()
            raise
    try:
        with sigterm_held():  # a finished index is not lost to a signal between two renames
            agree(comm, lambda: publish(workdir, out, options.overwrite) if folder else None)
    finally:
        if folder:  # a publish that failed keeps the finished index in the folder, and says where
            folder.release()
    say(f"index written to {out}")
    return manifest


def _validate(
    vectors_path: Path, out: Path, options: BuildOptions, ranks: int
) -> tuple[np.ndarray, dict[str, Any]]:
    """The vectors, and the checked local kind: every refusal comes before any work."""
    if options.nshards < 1 or options.nlist < 1:
        raise HpcragError("--nlist and --shards must be >= 1")
    if ranks > options.nshards:
        raise HpcragError(
            f"{ranks} ranks but only {options.nshards} shards: run at most {options.nshards} ranks "
            "or build more shards (--shards)"
        )
    if options.nlist < options.nshards:
        raise HpcragError(f"--nlist {options.nlist} < --shards {options.nshards}: each shard needs a list")
    if options.dtype not in STORAGE_DTYPES:
        raise HpcragError(f"unknown storage dtype {options.dtype!r}; use {' or '.join(STORAGE_DTYPES)}")
    if options.chunk_rows < 1:
        raise HpcragError("--chunk-rows must be >= 1")
    if not 0.0 <= options.replicate <= 1.0:  # also refuses NaN
        raise HpcragError(
            f"--replicate {options.replicate} is not a share of the vectors: give a number from 0 to 1 "
            "(0.3 stores 30% of them in a second shard)"
        )
    if options.replicate and options.nshards < 2:
        raise HpcragError(
            "--replicate copies vectors into a second shard: build with --shards >= 2, or drop it"
        )
    if out.exists() and not options.overwrite and (not out.is_dir() or any(out.iterdir())):
        raise HpcragError(f"{out} already exists; choose another --out or pass --overwrite")
    vectors = open_vectors(vectors_path)
    local = local_spec(options.local_kind, options.local_params, vectors.shape[1], gpu_visible())
    if local["kind"] == "ivf-pq" and vectors.shape[0] < MIN_PQ_TRAINING:
        raise HpcragError(
            f"ivf-pq needs at least {MIN_PQ_TRAINING} vectors to train its codebooks, {vectors_path} has "
            f"{vectors.shape[0]}; use --local ivf-flat for so small a collection"
        )
    if vectors.shape[0] < options.nlist:
        raise HpcragError(
            f"{vectors_path} has {vectors.shape[0]} vectors, fewer than --nlist {options.nlist}; "
            "use a smaller --nlist (about sqrt(n) is a good start)"
        )
    return vectors, local


def _query_sample(options: BuildOptions, dim: int, ranks: int) -> np.ndarray | None:
    """The checked sample queries (prepared for the metric), or None; every refusal before any work."""
    if options.query_sample is None:
        if options.serve_ranks is not None:
            raise HpcragError(
                "--serve-ranks says over how many ranks --query-sample spreads the searches: give both"
            )
        return None
    serve = _serving_ranks(options, ranks)
    plural = "" if serve == 1 else "s"
    given = (
        f"--serve-ranks {serve}" if options.serve_ranks is not None else f"this build's {serve} rank{plural}"
    )
    if serve < 2:
        raise HpcragError(
            f"--query-sample spreads the searches over the ranks that will search the index, and {given} "
            f"leaves nothing to spread: give --serve-ranks, the ranks that will, from 2 to --shards "
            f"{options.nshards}"
        )
    if serve > options.nshards:
        raise HpcragError(
            f"{given}: more ranks than the {options.nshards} shards, and each rank serves a shard; give "
            f"--serve-ranks from 2 to --shards {options.nshards}"
        )
    if not Path(options.query_sample).is_file():
        what = "a directory" if Path(options.query_sample).is_dir() else "no such file"
        raise HpcragError(f"--query-sample {options.query_sample}: {what} (give a .npy or .fvecs of queries)")
    queries = open_vectors(options.query_sample, "--query-sample queries")
    if queries.shape[0] > MAX_QUERY_SAMPLE:  # a seeded draw of rows, read from the memory map
        drawn = np.random.default_rng(options.seed).choice(queries.shape[0], MAX_QUERY_SAMPLE, replace=False)
        queries = queries[np.sort(drawn)]
    queries = check_queries(np.asarray(queries), dim, str(options.query_sample))
    if queries.shape[0] < MIN_QUERY_SAMPLE:
        raise HpcragError(
            f"{options.query_sample}: {queries.shape[0]} sample queries are too few to tell where queries "
            f"fall; give at least {MIN_QUERY_SAMPLE} (thousands from a query log are better)"
        )
    return prepare(queries, options.metric, str(options.query_sample))


def _serving_ranks(options: BuildOptions, ranks: int) -> int:
    """The ranks the index will be searched with: --serve-ranks, else the build's."""
    return ranks if options.serve_ranks is None else options.serve_ranks


def _balance(
    sample: np.ndarray,
    quantizer: Any,
    counts: np.ndarray,
    list_shard: np.ndarray,
    options: BuildOptions,
    ranks: int,
    say: Progress,
) -> tuple[np.ndarray, dict[str, Any]]:
    """`list_shard` with the sample queries' searches spread over the serving ranks, and a record."""
    serve = _serving_ranks(options, ranks)
    probes = quantizer.search(sample, QUERY_PROBES)[1]
    shard_rank = np.arange(options.nshards) % serve
    before = rank_loads(probes, list_shard, shard_rank)
    balanced = balance_query_load(probes, counts.astype(np.float64) + 1.0, list_shard, shard_rank)
    after = rank_loads(probes, balanced, shard_rank)
    count = sample.shape[0]
    record = {
        "queries": count,
        "serve_ranks": serve,
        "lists_moved": int((balanced != list_shard).sum()),
        # per sample query: the busiest rank's shard searches (they set a batch's pace), and everyone's
        "busiest_rank_searches": [round(before.max() / count, 4), round(after.max() / count, 4)],
        "searches_per_query": [round(before.sum() / count, 4), round(after.sum() / count, 4)],
    }
    busiest, searches = record["busiest_rank_searches"], record["searches_per_query"]
    say(
        f"spread the searches of {count:,} sample queries over {serve} ranks ({record['lists_moved']} "
        f"lists moved): per query, the busiest rank searches {busiest[1]:.2f} shards (was {busiest[0]:.2f}), "
        f"all ranks {searches[1]:.2f} (was {searches[0]:.2f})"
    )
    return balanced, record


def gpu_visible() -> bool:
    """Whether CuPy sees a CUDA GPU here (building CAGRA needs one)."""
    try:
        require_cupy()
    except HpcragError:
        return False
    return True


def _ids_for(ids_path: Path | None, count: int) -> np.ndarray:
    if ids_path is None:
        return np.arange(count, dtype=np.int64)
    return load_ids(ids_path, count)


def _attributes_for(
    path: Path | None, schema: AttributeSchema | None, count: int
) -> tuple[AttributeSchema, np.ndarray]:
    """The schema and the (count, A) int64 attribute columns of every vector (A = 0 without a file)."""
    if path is None:
        schema = schema or AttributeSchema()
        return schema, np.full((count, len(schema.columns)), MISSING, dtype=np.int64)
    rows = read_attributes_file(Path(path), count)
    schema = with_undeclared(schema or AttributeSchema(), rows)
    return schema, encode_rows(schema, rows)


def publish(workdir: Path, out: Path, overwrite: bool) -> None:
    """Swap the finished index into place; an old index is removed only after the new one is there."""
    if out.exists():
        if not overwrite and any(out.iterdir()):
            raise HpcragError(f"{out} appeared during the build; the new index is kept in {workdir}")
        retired = out.parent / f".{out.name}.retired-{uuid.uuid4().hex[:8]}"
        out.rename(retired)
        workdir.rename(out)
        shutil.rmtree(retired)
    else:
        workdir.rename(out)


def _build(
    vectors: np.ndarray,
    ids: np.ndarray,
    described: tuple[AttributeSchema, np.ndarray],
    workdir: Path,
    options: BuildOptions,
    local: dict[str, Any],
    comm: Communicator,
    say: Progress,
    query_sample: np.ndarray | None = None,
) -> layout.Manifest:
    started = time.monotonic()
    n, dim = vectors.shape
    schema, attributes = described
    columns = len(schema.columns)
    trained = agree(comm, lambda: _train(vectors, options, say) if comm.rank == 0 else None)
    centroids = comm.bcast_obj(trained[0] if comm.rank == 0 else None)
    quantizer = coarse_quantizer(centroids, options.metric)
    lo, hi = (int(bound) for bound in row_bounds(n, comm.size)[comm.rank : comm.rank + 2])
    chunks = [(start, min(start + options.chunk_rows, hi)) for start in range(lo, hi, options.chunk_rows)]
    rounds = max(comm.allgather_obj(len(chunks)))
    chunks += [(hi, hi)] * (rounds - len(chunks))

    say(f"assigning {n:,} vectors to {options.nlist} lists on {comm.size} rank(s)")
    list_of, error = agree(comm, lambda: _assign(vectors, chunks, quantizer, centroids, options, say))
    counts = np.sum(comm.allgather_obj(np.bincount(list_of, minlength=options.nlist)), axis=0)
    error = sum(comm.allgather_obj(error))
    list_shard, balanced = None, {}
    if comm.rank == 0:
        sample_probes = quantizer.search(trained[1], options.grouping_nprobe())[1]
        list_shard = group_lists(centroids, counts, options.nshards, options.seed, sample_probes)
        if query_sample is not None:
            list_shard, balanced = _balance(
                query_sample, quantizer, counts, list_shard, options, comm.size, say
            )
    list_shard = comm.bcast_obj(list_shard)
    router = Router(centroids, options.metric, list_shard, np)
    threshold = 0.0
    if comm.rank == 0 and options.replicate:
        own = router.probe(trained[1], 1)[:, 0]
        threshold = threshold_for(boundary_ratios(router, trained[1], own)[0], options.replicate)
    threshold = comm.bcast_obj(threshold)
    shard_rank = np.arange(options.nshards) % comm.size
    say(f"grouped {options.nlist} lists into {options.nshards} shards; exchanging rows")

    record = shard_record(options.dtype, dim, columns)
    received: list[np.ndarray] = []
    for index, (start, stop) in enumerate(chunks):
        rows = np.empty(stop - start, dtype=record)
        prepared = prepare(np.asarray(vectors[start:stop]), options.metric, "vectors", start)
        rows["list"] = list_of[start - lo : stop - lo]
        rows["id"] = ids[start:stop]
        rows["vector"] = prepared
        rows["attributes"] = attributes[start:stop]
        rows["replica"] = 0
        second = second_lists(router, prepared, rows["list"], threshold)
        copies = rows[second >= 0]
        copies["list"], copies["replica"] = second[second >= 0], 1
        rows = np.concatenate([rows, copies])
        owner = shard_rank[list_shard[rows["list"]]]
        received.extend(comm.alltoallv([rows[owner == rank] for rank in range(comm.size)]))
        say(f"exchanged round {index + 1}/{rounds}")
    mine = np.concatenate(received) if received else np.empty(0, dtype=record)

    template = None
    if local["kind"] == "ivf-pq":
        say(f"training ivf-pq codebooks (pq_m {local['pq_m']}) on the training sample")
        made = agree(
            comm,
            lambda: train_template(local, centroids, trained[1], options.metric) if comm.rank == 0 else None,
        )
        template = comm.bcast_obj(made)
    entries = agree(
        comm,
        lambda: [
            write_shard(
                workdir, shard, mine[list_shard[mine["list"]] == shard], options.nlist,
                local, options.metric, template,
            )
            for shard in range(options.nshards)
            if shard_rank[shard] == comm.rank
        ],
    )  # fmt: skip
    gathered = comm.gather_obj(entries)
    replicas = sum(comm.allgather_obj(int(mine["replica"].sum())))
    stored = np.sum(comm.allgather_obj(np.bincount(mine["list"], minlength=options.nlist)), axis=0)
    if replicas:
        say(f"stored {replicas:,} boundary vectors ({replicas / max(n, 1):.1%}) in a second shard as well")
    manifest = None
    if comm.rank == 0:
        shards = sorted((e for part in gathered for e in part), key=lambda e: e.shard)
        manifest = layout.Manifest(
            dim=dim,
            metric=options.metric.value,
            dtype=options.dtype,
            nlist=options.nlist,
            nshards=options.nshards,
            ntotal=n,
            list_shard=[int(s) for s in list_shard],
            list_counts=[int(c) for c in stored],
            centroids=layout.save_array(workdir / layout.CENTROIDS, centroids),
            shards=shards,
            build={
                "ranks": comm.size,
                "seed": options.seed,
                "niter": options.niter,
                "seconds": round(time.monotonic() - started, 3),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "trained_vectors": n,
                "quantization_error": error / max(n, 1),
                **({"replicate": options.replicate, "replicate_threshold": threshold} if replicas else {}),
                **({"query_balance": balanced} if balanced else {}),
            },
            attributes=schema.to_json(),
            local=local,
            replicas=replicas,
            format_version=layout.format_version_for(replicas),
        )
        layout.write_manifest(workdir, manifest)
    return comm.bcast_obj(manifest)


def _train(vectors: np.ndarray, options: BuildOptions, say: Progress) -> tuple[np.ndarray, np.ndarray]:
    """Centroids, and a few thousand of the training rows to steer the shard grouping."""
    import faiss

    n, dim = vectors.shape
    size = min(n, options.nlist * TRAIN_POINTS_PER_LIST)
    rows = np.sort(np.random.default_rng(options.seed).choice(n, size=size, replace=False))
    sample = np.asarray(vectors[rows])
    bad = np.flatnonzero(~np.isfinite(sample).all(axis=1))
    if bad.size:
        raise HpcragError(f"vectors row {rows[bad[0]]} holds NaN or inf; clean or drop it")
    sample = prepare(sample, options.metric, "vectors")
    if size < 39 * options.nlist:
        per_list = size / options.nlist
        say(f"note: only {per_list:.0f} vectors per list to train on; a smaller --nlist trains better")
    say(f"training {options.nlist} centroids on {size:,} of {n:,} vectors ({options.niter} iterations)")
    kmeans = faiss.Kmeans(
        dim,
        options.nlist,
        niter=options.niter,
        seed=options.seed,
        spherical=options.metric.larger_is_better,
        min_points_per_centroid=1,
        max_points_per_centroid=TRAIN_POINTS_PER_LIST,
    )
    kmeans.train(sample)
    return np.array(kmeans.centroids, dtype=np.float32), sample[:GROUPING_SAMPLE]


def _assign(
    vectors: np.ndarray,
    chunks: list[tuple[int, int]],
    quantizer,
    centroids: np.ndarray,
    options: BuildOptions,
    say: Progress,
) -> tuple[np.ndarray, float]:
    """Each row's list, and the sum of squared distances from rows to their centroids."""
    parts, error = [], 0.0
    total = sum(stop - start for start, stop in chunks)
    done, last = 0, time.monotonic()
    for start, stop in chunks:
        if stop == start:
            continue
        raw = np.asarray(vectors[start:stop])
        check_finite(raw, "vectors", start)
        rows = prepare(raw, options.metric, "vectors", start)
        check_storable(rows, options.dtype, start)
        lists = quantizer.search(rows, 1)[1][:, 0].astype(np.int32)
        parts.append(lists)
        error += squared_error(rows, centroids, lists)
        done += stop - start
        if time.monotonic() - last > 2.0 or done == total:
            say(f"assigned {done:,}/{total:,} rows on rank 0 ({100 * done / max(total, 1):.0f}%)")
            last = time.monotonic()
    return (np.concatenate(parts) if parts else np.empty(0, dtype=np.int32)), error


def squared_error(rows: np.ndarray, centroids: np.ndarray, lists: np.ndarray) -> float:
    """Sum over rows of the squared L2 distance to their list's centroid: how well the lists fit."""
    error = 0.0
    for lo in range(0, rows.shape[0], 65536):
        part = rows[lo : lo + 65536].astype(np.float32) - centroids[lists[lo : lo + 65536]]
        error += float(np.einsum("ij,ij->", part, part, dtype=np.float64))
    return error


def shard_record(dtype: str, dim: int, columns: int) -> np.dtype:
    """One row as it travels between ranks and is written: list, id, vector, attributes, and
    whether it is a boundary vector's second copy."""
    return np.dtype(
        [
            ("list", np.int32),
            ("id", np.int64),
            ("vector", dtype, (dim,)),
            ("attributes", np.int64, (columns,)),
            ("replica", np.uint8),
        ]
    )


def write_shard(
    workdir: Path,
    shard: int,
    rows: np.ndarray,
    nlist: int,
    local: Mapping[str, Any] | None = None,
    metric: Metric = Metric.IP,
    template: Any = None,
) -> layout.ShardEntry:
    """Write one shard's rows (`shard_record`), grouped by list and by id within a list, and the
    shard's own index when its local kind keeps one."""
    rows = rows[np.lexsort((rows["id"], rows["list"]))]
    vectors = rows["vector"]
    offsets = np.concatenate([[0], np.cumsum(np.bincount(rows["list"], minlength=nlist))]).astype(np.int64)
    sqnorms = (vectors.astype(np.float32) ** 2).sum(axis=1, dtype=np.float32)
    folder = layout.shard_dir(workdir, shard)
    arrays = {
        "vectors.npy": vectors,
        "ids.npy": rows["id"],
        "sqnorms.npy": sqnorms,
        "list_offsets.npy": offsets,
    }
    if rows["attributes"].shape[1]:
        arrays[layout.ATTRIBUTES] = rows["attributes"]
    if rows["replica"].any():
        arrays[layout.REPLICA] = rows["replica"]
    files = {name: layout.save_array(folder / name, array) for name, array in arrays.items()}
    kind_file = FILES.get((local or {}).get("kind", "ivf-flat"))
    if kind_file is not None:
        built = build_local(local, vectors, rows["list"], metric, template)
        files[kind_file] = layout.save_bytes(folder / kind_file, np.asarray(built, dtype=np.uint8))
    return layout.ShardEntry(shard=shard, ntotal=len(rows), files=files)
