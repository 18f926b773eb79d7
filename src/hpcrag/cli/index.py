"""`hpcrag index ...`: build, search, serve and inspect a distributed index.

`build`, `search` and `serve` run the same way as one process or as every rank of `mpirun -n R` /
`srun --mpi=pmix -n R`: they detect an MPI launch themselves (or take `--comm`). Only rank 0 prints;
an error reaches every rank at once, so the job ends with one message and exit code 1, never a hang.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from hpcrag.cli.common import echo_json, replicate_option, tls_files, tls_options

if TYPE_CHECKING:
    from hpcrag.search.comm import Communicator
    from hpcrag.search.index import SearchResult
    from hpcrag.search.service import ServiceOptions
    from hpcrag.serve.registry import Registry

comm_option = click.option(
    "--comm",
    "comm_kind",
    type=click.Choice(["auto", "mpi", "local"]),
    default="auto",
    show_default=True,
    help="auto: MPI when started by mpirun/srun, else one process.",
)
device_option = click.option(
    "--device",
    type=click.Choice(["cpu", "cuda"]),
    default="cpu",
    show_default=True,
    help="Where shards live.",
)
scan_backend_option = click.option(
    "--scan-backend",
    type=click.Choice(["kernels", "matmul", "faiss"]),
    default="kernels",
    show_default=True,
    help="Local scan: hpcrag's kernels (Numba CPU, WMMA GPU), plain matrix products, or faiss (CPU).",
)
verify_option = click.option(
    "--verify/--no-verify", default=True, show_default=True, help="Check every file's checksum when loading."
)


def _collective(comm_kind: str, device: str, body: Callable[[Communicator], None]) -> None:
    """Run `body` on every rank; print an error once (rank 0) and exit 1 on all ranks."""
    from hpcrag.errors import HpcragError
    from hpcrag.search.comm import make_comm

    comm = make_comm(comm_kind, device)
    try:
        body(comm)
    except HpcragError as exc:
        if comm.rank == 0:
            click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except Exception:
        if comm.size > 1:
            import traceback

            traceback.print_exc()
            comm.abort(1)  # an unexpected failure on one rank must not leave the others waiting
        raise


def _progress(message: str) -> None:
    click.echo(f"[hpcrag index build] {message}", err=True)


@click.group()
def index() -> None:
    """Distributed vector index: build, search, serve, inspect."""


def routing_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Shard selection and local search effort, gathered into one `routing` argument."""
    options = [
        click.option(
            "--max-shards",
            type=int,
            default=None,
            help="Visit at most this many shards per query: those owning its best probed centroids "
            "[every shard owning a probe].",
        ),
        click.option(
            "--shard-margin",
            type=float,
            default=None,
            help="Visit a shard past the first only if its nearest probed centroid is within (1 + this) x "
            "the nearest centroid's squared distance, e.g. 0.5 [no margin].",
        ),
        click.option("--ef", type=int, default=None, help="hnsw/cagra: graph search effort [64]."),
        click.option("--refine", type=int, default=None, help="ivf-pq: re-rank refine x k candidates [10]."),
    ]

    @functools.wraps(command)
    def gathered(*args: Any, max_shards: Any, shard_margin: Any, ef: Any, refine: Any, **kwargs: Any) -> Any:
        routing = {"max_shards": max_shards, "shard_margin": shard_margin, "ef": ef, "refine": refine}
        return command(*args, routing=routing, **kwargs)

    for option in reversed(options):
        gathered = option(gathered)
    return gathered


@index.command()
@click.argument("vectors", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Index directory to create.")
@click.option("--nlist", required=True, type=int, help="Number of inverted lists (coarse centroids).")
@click.option("--shards", required=True, type=int, help="Number of shards (at most one rank each).")
@click.option("--metric", type=click.Choice(["ip", "l2", "cosine"]), default="ip", show_default=True)
@click.option(
    "--ids", "ids_path", type=click.Path(path_type=Path), help=".npy of int64 ids (default: row numbers)."
)
@click.option("--dtype", type=click.Choice(["float16", "float32"]), default="float16", show_default=True)
@click.option("--niter", type=int, default=20, show_default=True, help="k-means iterations.")
@click.option("--seed", type=int, default=1234, show_default=True)
@click.option("--route-nprobe", type=int, default=None, help="nprobe the shard grouping optimises for.")
@click.option("--chunk-rows", type=int, default=65536, show_default=True, help="Rows per exchange round.")
@click.option("--overwrite", is_flag=True, help="Replace an existing index at --out (after the build).")
@click.option(
    "--attributes",
    "attributes_path",
    type=click.Path(path_type=Path),
    help="JSON Lines, one object of attributes per vector, for filtered searches (`search --filter`).",
)
@click.option(
    "--attribute",
    "declared",
    multiple=True,
    metavar="NAME:TYPE",
    help="Declare an attribute's type (int, str, time); undeclared ones are inferred from --attributes.",
)
@click.option(
    "--local",
    "local_kind",
    type=click.Choice(["ivf-flat", "hnsw", "cagra", "ivf-pq"]),  # local_kinds.KINDS (a test checks)
    default="ivf-flat",
    show_default=True,
    help="How each shard searches its vectors: its inverted lists, a faiss HNSW graph (CPU), a cuVS "
    "CAGRA graph (GPU) or faiss IVF-PQ codes re-ranked against the full vectors. All but cagra take "
    "updates and filters.",
)
@click.option("--hnsw-m", type=int, default=None, help="hnsw: links per node [32].")
@click.option("--ef-construction", type=int, default=None, help="hnsw: build effort [40].")
@click.option("--pq-m", type=int, default=None, help="ivf-pq: code bytes per vector [dim/8].")
@click.option("--graph-degree", type=int, default=None, help="cagra: edges per node [64].")
@replicate_option(
    "Also store this share of the vectors, those nearest a list of another shard, in that shard "
    "(memory grows by the share): queries then find their neighbours in fewer shards (--max-shards)."
)
@click.option(
    "--query-sample",
    type=click.Path(path_type=Path),
    default=None,
    help="Sample queries (.npy/.fvecs, say from a query log): group the lists so that each rank "
    "searches about as often, where real queries crowd some shards.",
)
@click.option(
    "--serve-ranks",
    type=int,
    default=None,
    help="With --query-sample: the ranks that will search the index [the build's ranks].",
)
@comm_option
def build(
    vectors: Path,
    out: Path,
    nlist: int,
    shards: int,
    metric: str,
    ids_path: Path | None,
    dtype: str,
    niter: int,
    seed: int,
    route_nprobe: int | None,
    chunk_rows: int,
    overwrite: bool,
    attributes_path: Path | None,
    declared: tuple[str, ...],
    local_kind: str,
    hnsw_m: int | None,
    ef_construction: int | None,
    pq_m: int | None,
    graph_degree: int | None,
    replicate: float,
    query_sample: Path | None,
    serve_ranks: int | None,
    comm_kind: str,
) -> None:
    """Build an index of VECTORS (.npy float32/float16 or .fvecs) into --out."""
    given = {
        "M": ("--hnsw-m", hnsw_m, "hnsw"),
        "ef_construction": ("--ef-construction", ef_construction, "hnsw"),
        "pq_m": ("--pq-m", pq_m, "ivf-pq"),
        "graph_degree": ("--graph-degree", graph_degree, "cagra"),
    }
    for flag, value, kind in given.values():
        if value is not None and kind != local_kind:
            raise click.UsageError(f"{flag} applies to --local {kind}, not --local {local_kind}")
    local_params = {name: value for name, (_, value, kind) in given.items() if kind == local_kind}

    def body(comm: Communicator) -> None:
        from hpcrag.search.attributes import AttributeSchema
        from hpcrag.search.build import BuildOptions, build_index
        from hpcrag.search.comm import agree
        from hpcrag.search.metric import Metric

        options = BuildOptions(
            nlist=nlist,
            nshards=shards,
            metric=Metric.parse(metric),
            dtype=dtype,
            niter=niter,
            seed=seed,
            chunk_rows=chunk_rows,
            overwrite=overwrite,
            route_nprobe=route_nprobe,
            local_kind=local_kind,
            local_params=local_params,
            replicate=replicate,
            query_sample=query_sample,
            serve_ranks=serve_ranks,
        )
        schema = agree(comm, lambda: AttributeSchema.parse(declared))
        manifest = build_index(
            vectors, out, options, ids_path, comm, _progress, attributes_path=attributes_path, schema=schema
        )
        if comm.rank == 0:
            sizes = ", ".join(str(s.ntotal) for s in manifest.shards)
            click.echo(
                f"built {out}: {manifest.ntotal} vectors, dim {manifest.dim}, {manifest.metric}, "
                f"{manifest.nlist} lists, {manifest.nshards} shards ({sizes})"
                f"{'' if local_kind == 'ivf-flat' else f' searched with {local_kind}'} "
                f"in {manifest.build['seconds']:.1f} s on {comm.size} rank(s)"
                + (
                    f"; {manifest.replicas} boundary vectors also stored in a second shard"
                    if manifest.replicas
                    else ""
                )
                + (
                    f"; attributes {', '.join(f'{n}:{t}' for n, t in manifest.attributes.items())}"
                    if manifest.attributes
                    else ""
                )
            )

    _collective(comm_kind, "cpu", body)


@index.command()
@click.argument("index_dir", type=click.Path(path_type=Path))
@click.option("--queries", "queries_path", required=True, type=click.Path(path_type=Path))
@click.option("--k", type=int, default=10, show_default=True)
@click.option(
    "--nprobe",
    type=int,
    default=1,
    show_default=True,
    help="Lists each query probes: 1 is fastest and coarsest; recall grows with it (on the README's man "
    "pages, 1,024 lists: 0.947 at 32, 0.971 at 64). With --local hnsw, the lists that route it to shards.",
)
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Result .npz (ids, distances).")
@click.option(
    "--filter",
    "filters",
    multiple=True,
    metavar="COND",
    help="Only vectors whose attributes match: name=v, name!=v, name>=v, name<v, 'name in a,b', or a JSON "
    "filter; repeated conditions are AND-ed.",
)
@click.option(
    "--strategy",
    type=click.Choice(["auto", "ivf", "exact"]),
    default="auto",
    show_default=True,
    help="ivf: scan the probed lists; exact: every matching vector; auto: exact when a filter is selective.",
)
@routing_options
@device_option
@verify_option
@scan_backend_option
@comm_option
def search(
    index_dir: Path,
    queries_path: Path,
    k: int,
    nprobe: int,
    out: Path,
    filters: tuple[str, ...],
    strategy: str,
    routing: dict[str, Any],
    device: str,
    verify: bool,
    scan_backend: str,
    comm_kind: str,
) -> None:
    """Search the queries in --queries (.npy/.fvecs) and write ids and distances to --out."""

    def body(comm: Communicator) -> None:
        from hpcrag.errors import HpcragError
        from hpcrag.search.comm import agree
        from hpcrag.search.index import DistributedIndex
        from hpcrag.search.inputs import load_queries

        def check_out() -> None:
            if out.suffix != ".npz":
                raise HpcragError(f"--out {out}: the result file must end in .npz")
            if not out.parent.is_dir():
                raise HpcragError(f"--out {out}: directory {out.parent} does not exist")

        agree(comm, check_out if comm.rank == 0 else lambda: None)
        opened = DistributedIndex.open(
            index_dir, comm, device=device, verify=verify, scan_backend=scan_backend
        )

        def inputs() -> tuple:
            from hpcrag.search.filters import parse_filter_args

            return load_queries(queries_path, opened.dim), parse_filter_args(filters, opened.schema)

        queries, flt = agree(comm, lambda: inputs() if comm.rank == 0 else (None, None))
        result = opened.search(queries, k, nprobe, flt, strategy, **routing)
        if result is not None:
            _save_result(out, result)
            qps = len(result.ids) / result.seconds if result.seconds else float("inf")
            filtered = f"; filter {flt.describe()}, {result.strategy} scan" if flt is not None else ""
            click.echo(
                f"{len(result.ids)} queries, k={k}, nprobe={nprobe}: {result.seconds:.3f} s "
                f"({qps:,.0f} queries/s) on {comm.size} rank(s); mean shards touched "
                f"{result.mean_shards_touched:.2f} of {opened.manifest.nshards}{filtered}; wrote {out}"
            )

    _collective(comm_kind, device, body)


@index.command()
@click.argument("index_dir", type=click.Path(path_type=Path))
@click.option(
    "--port", type=click.IntRange(0, 65535), default=8470, show_default=True, help="0 picks a free port."
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on; 0.0.0.0 opens the service to the network (use TLS there).",
)
@click.option(
    "--max-batch",
    type=click.IntRange(min=1),
    default=256,
    show_default=True,
    help="Queries per collective search.",
)
@click.option(
    "--max-wait-ms",
    type=click.FloatRange(0, 1000),
    default=2.0,
    show_default=True,
    help="Longest batch wait.",
)
@click.option("--max-k", type=click.IntRange(min=1), default=1024, show_default=True)
@click.option(
    "--max-queries", type=click.IntRange(min=1), default=4096, show_default=True, help="Queries per request."
)
@click.option(
    "--max-body-mb",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="Request body size limit.",
)
@click.option(
    "--max-inflight-mb",
    type=click.IntRange(min=1),
    default=512,
    show_default=True,
    help="Request bodies held at once over all requests (503 beyond).",
)
@click.option(
    "--endpoint-file",
    type=click.Path(path_type=Path),
    help="Write the URL and the token here (mode 0600) once serving.",
)
@click.option(
    "--token-file",
    type=click.Path(path_type=Path),
    help="Read the bearer token from this file (default: $HPCRAG_SEARCH_TOKEN, else a new one).",
)
@tls_options
@click.option("--public-metrics", is_flag=True, help="Serve /metrics without the token.")
@click.option(
    "--group",
    help="Register as a replica of this group in the endpoint registry (see `hpcrag index replicas`).",
)
@click.option(
    "--site",
    default=lambda: os.environ.get("SLURM_CLUSTER_NAME", "local"),
    show_default="$SLURM_CLUSTER_NAME, else local",
    help="The site this replica runs at (with --group).",
)
@routing_options
@device_option
@verify_option
@scan_backend_option
@comm_option
@click.pass_context
def serve(
    ctx: click.Context,
    index_dir: Path,
    port: int,
    host: str,
    max_batch: int,
    max_wait_ms: float,
    max_k: int,
    max_queries: int,
    max_body_mb: int,
    max_inflight_mb: int,
    endpoint_file: Path | None,
    token_file: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_client_ca: Path | None,
    public_metrics: bool,
    group: str | None,
    site: str,
    routing: dict[str, Any],
    device: str,
    verify: bool,
    scan_backend: str,
    comm_kind: str,
) -> None:
    """Serve the index over HTTP(S) from rank 0 (JSON and .npy), with dynamic batching; updates
    (/add, /upsert, /delete) and filtered searches too.

    /search needs the service's bearer token: given (--token-file, $HPCRAG_SEARCH_TOKEN) or made at
    start and written with the URL to --endpoint-file, readable by you only. With --group the service
    registers as a replica (URL and token in the endpoint registry) once it has replayed the index's
    update log, and leaves the registry when it stops.
    """

    def options() -> ServiceOptions:
        from hpcrag.errors import HpcragError
        from hpcrag.search.service import MIB, ServiceOptions, service_token

        token = service_token(token_file)
        if token is None and endpoint_file is None:
            raise HpcragError(
                "nobody could read the generated token: give --endpoint-file F (the URL and token are "
                "written there, mode 0600), or a token with --token-file or $HPCRAG_SEARCH_TOKEN"
            )
        tls = None
        if (files := tls_files(tls_cert, tls_key, tls_client_ca)) is not None:
            from hpcrag.util.tls import server_context

            tls = server_context(*files)
        return ServiceOptions(
            host=host,
            port=port,
            max_batch=max_batch,
            max_wait_s=max_wait_ms / 1000.0,
            max_k=max_k,
            max_queries=max_queries,
            max_body_bytes=max_body_mb * MIB,
            max_inflight_body_bytes=max_inflight_mb * MIB,
            endpoint_file=endpoint_file,
            token=token,
            tls=tls,
            public_metrics=public_metrics,
            routing=routing,
        )

    def body(comm: Communicator) -> None:
        from hpcrag.search.comm import agree
        from hpcrag.search.index import DistributedIndex
        from hpcrag.search.service import SearchService
        from hpcrag.util import redact

        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
        redact.install()  # aiohttp quotes raw headers, tokens included, when it refuses a request

        checked, registry = agree(
            comm, lambda: (options(), _replica_registry(ctx, group)) if comm.rank == 0 else (None, None)
        )
        opened = DistributedIndex.open(
            index_dir, comm, device=device, verify=verify, scan_backend=scan_backend
        )
        service = agree(comm, lambda: SearchService(opened, checked) if comm.rank == 0 else None)
        if comm.rank != 0:
            opened.follow()
            return
        registered = []

        def ready(url: str) -> None:
            click.echo(f"serving {index_dir} on {url} with {comm.size} rank(s) (update #{opened.seq})")
            if registry is not None:
                from hpcrag.search.replicas import ReplicaRegistration

                registered.append(
                    ReplicaRegistration(registry, group, site, index_dir, url, service.token, comm.size)
                )
                click.echo(f"registered as a replica of {group!r} at site {site}")

        try:
            service.run(on_ready=ready)
        finally:
            for registration in registered:
                registration.close()

    _collective(comm_kind, device, body)


@index.command()
@click.argument("index_dir", type=click.Path(path_type=Path))
@verify_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def info(index_dir: Path, verify: bool, as_json: bool) -> None:
    """Describe an index and check its files (sizes always, checksums unless --no-verify)."""
    from hpcrag.search import layout
    from hpcrag.search.local_kinds import FILES, memory_per_shard, memory_per_vector
    from hpcrag.search.metric import Metric
    from hpcrag.search.wal import UpdateLog

    manifest = layout.read_manifest(index_dir)
    layout.check_file(index_dir / layout.CENTROIDS, manifest.centroids, verify)
    for shard in manifest.shards:
        for name, entry in shard.files.items():
            layout.check_file(layout.shard_dir(index_dir, shard.shard) / name, entry, verify)
    log = UpdateLog(index_dir, manifest.base_seq)
    pending = log.read_new()
    rows = max(1, sum(s.ntotal for s in manifest.shards))
    per_vector = {
        "memory": memory_per_vector(manifest.local, manifest.dim, 2 if manifest.dtype == "float16" else 4),
        "disk": sum(e.bytes for s in manifest.shards for e in s.files.values()) / rows,
    }
    if manifest.local.get("kind") == "hnsw":
        # A graph is loaded whole, so its files measure it: that also tells the float32 rows of a graph
        # built before graphs kept float16 ones, which the model (by the index's dtype) would understate.
        graphs = sum(s.files[FILES["hnsw"]].bytes for s in manifest.shards if FILES["hnsw"] in s.files)
        per_vector["memory"] = graphs / rows + 8  # and an id per row
    per_shard = memory_per_shard(manifest.local, manifest.nlist, manifest.dim, Metric(manifest.metric))
    attributes = dict(manifest.attributes)
    for update in pending:
        attributes.update(update.columns or {})
    summary = {
        "path": str(index_dir),
        "format_version": manifest.format_version,
        "vectors": manifest.ntotal,
        "dim": manifest.dim,
        "metric": manifest.metric,
        "dtype": manifest.dtype,
        "nlist": manifest.nlist,
        "shards": [{"shard": s.shard, "vectors": s.ntotal} for s in manifest.shards],
        "replicas": manifest.replicas,
        "checked": "sizes and checksums" if verify else "sizes",
        "build": manifest.build,
        "attributes": attributes,
        "local": {**manifest.local, "bytes_per_vector": per_vector, "bytes_per_shard": per_shard},
        "updates": {"folded_up_to": manifest.base_seq, "pending": len(pending), "last": log.last_seq},
    }
    if as_json:
        echo_json(summary)
        return
    logged = f" in the shards (and {len(pending)} updates logged since, below)" if pending else ""
    click.echo(
        f"{index_dir}: {manifest.ntotal} vectors{logged}, dim {manifest.dim}, {manifest.metric}, "
        f"{manifest.dtype}, {manifest.nlist} lists, {manifest.nshards} shards; "
        f"files OK ({summary['checked']})"
    )
    local = summary["local"]
    sizes = ("kind", "bytes_per_vector", "bytes_per_shard")
    params = ", ".join(f"{n} {v}" for n, v in local.items() if n not in sizes)
    memory = local["bytes_per_vector"]
    fixed = f", plus {per_shard / 2**20:,.1f} MiB per shard" if per_shard else ""
    # With second copies a vector is stored 1 + share times: the figures are per stored row, then per vector.
    copies = rows / max(manifest.ntotal, 1)
    each = "stored row" if manifest.replicas else "vector"
    with_copies = (
        f" ({memory['memory'] * copies:,.0f} and {memory['disk'] * copies:,.0f} per vector, "
        "its second copies included)"
        if manifest.replicas
        else ""
    )
    click.echo(
        f"  shards search with {local['kind']}{f' ({params})' if params else ''}: "
        f"{memory['memory']:,.0f} bytes per {each} in memory{fixed}, "
        f"{memory['disk']:,.0f} on disk{with_copies}"
    )
    if manifest.replicas:
        click.echo(
            f"  {manifest.replicas} boundary vectors ({manifest.replicas / max(manifest.ntotal, 1):.1%}) are "
            "also stored in a second shard (--replicate); the shard counts below include them"
        )
    balanced = manifest.build.get("query_balance")
    if balanced:
        busiest = balanced["busiest_rank_searches"]
        click.echo(
            f"  grouped for {balanced['serve_ranks']} serving ranks from {balanced['queries']:,} sample "
            f"queries (--query-sample): per query, the busiest rank searches {busiest[1]:.2f} shards "
            f"(was {busiest[0]:.2f}); search it with {balanced['serve_ranks']} ranks"
        )
    for shard in manifest.shards:
        click.echo(f"  shard {shard.shard}: {shard.ntotal} vectors")
    if attributes:
        click.echo("  attributes: " + ", ".join(f"{n}:{t}" for n, t in attributes.items()))
    if pending:
        click.echo(
            f"  {len(pending)} updates logged since the shards were written (#{manifest.base_seq + 1}.."
            f"#{log.last_seq}); searches apply them; `hpcrag index compact` folds them in"
        )


def _replica_registry(ctx: click.Context, group: str | None) -> Registry | None:
    """The endpoint registry of the site configuration, when the service registers as a replica."""
    if group is None:
        return None
    from hpcrag.cli.common import load
    from hpcrag.config.rag_schema import COLLECTION_NAME_PATTERN
    from hpcrag.errors import HpcragError
    from hpcrag.serve.registry import Registry

    if not re.fullmatch(COLLECTION_NAME_PATTERN, group):
        raise HpcragError(
            f"--group {group!r}: a group name is 1-64 lowercase letters, digits, '-', '_' or '.', "
            "starting with a letter or digit"
        )
    serving = load(ctx).serving
    return Registry(serving.registry, serving.registry_journal)


def _save_result(out: Path, result: SearchResult) -> None:
    import numpy as np

    from hpcrag.util.files import atomic_output

    with atomic_output(out) as handle:
        np.savez(handle, ids=result.ids, distances=result.distances, shards_touched=result.shards_touched)
