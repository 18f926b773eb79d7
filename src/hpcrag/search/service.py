"""The online search service: rank 0 answers HTTP, every rank scans, batches form on the fly.

Rank 0 runs an aiohttp server in a background thread; requests are authenticated, bounded and
validated there (a bad one is a 400/401/413 that names the problem and never reaches the other ranks)
and queued. The main thread, which owns every MPI/NCCL call, forms batches of up to `max_batch`
queries, waiting at most `max_wait` for more to arrive, and runs one collective search per batch. A
large request is cut into chunks that share each batch fairly with the other waiting requests. One
batch serves one (k, nprobe), that of the request at the head of the line, which turns by one after
every batch; so, after the batch under way, a request waits at most one batch per request queued
ahead of it, however many queries those hold (see `FairBatches`). When the waiting requests share its
(k, nprobe) and number at most `max_batch`, a one-query request is in the very next batch. The other
ranks sit in `DistributedIndex.follow()`, asleep while no work comes.

Updates wait in the same queue as searches; the main thread applies those that arrived before each
batch, and between batches also what other writers (the CLI, another replica of the index) appended
to the index's update log. Every batch thus answers from one state, named by its `seq`; a search
with `min_seq` is answered only from a state at least that recent (a 503 to retry, otherwise).

    POST /search        JSON {"queries": [[...], ...], "k": 10, "nprobe": 8, "filter": {...},
                        "strategy": "auto|ivf|exact", "min_seq": 0}
                        -> {"ids": [[...]], "distances": [[...]], "shards_touched": [...],
                            "strategy": "ivf", "seq": 12}
                        or a .npy body (Content-Type: application/x-npy) with ?k=&nprobe=
                        (&filter=JSON&strategy=&min_seq=) -> an .npz with the same arrays
    POST /add, /upsert, /delete
                        updates (`update_inputs.py`), applied between batches in arrival order
                        and durable before the answer {"seq": ..., "added": ..., ...}
    GET  /health        {"status": "ok"}; with the token also the index's shape, fingerprint and seq
    GET  /metrics       Prometheus text format (token required unless `public_metrics`)
    GET  /openapi.json  the OpenAPI 3 description of these routes

/search needs `Authorization: Bearer TOKEN`: a per-service secret, given or generated at start and
written with the URL to the endpoint file (mode 0600), where `SearchClient.from_endpoint_file` and
the CLI read it. With a TLS context the service speaks HTTPS only.
"""

from __future__ import annotations

import asyncio
import hmac
import io
import json
import os
import queue
import secrets
import signal
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hpcrag.errors import HpcragError
from hpcrag.search.filters import Filter
from hpcrag.search.index import DistributedIndex, SearchResult, UpdateResult, check_strategy
from hpcrag.search.inputs import (
    ROUTING_FIELDS,
    RequestTooLarge,
    SearchRequest,
    check_queries,
    check_search_params,
    parse_margin_param,
    parse_query_params,
    parse_search_json,
    parse_search_npy,
    shown,
)
from hpcrag.search.update_inputs import UpdateRequest, parse_update_json, parse_update_npz
from hpcrag.search.wal import LogWriteError
from hpcrag.util.http_server import add_routes, bearer_token, protocol_logger

NPY = "application/x-npy"
NPZ = "application/x-npz"
SHARD_SELECTION = ("max_shards", "shard_margin")  # routing fields an exact scan has no use for
TOKEN_ENV = "HPCRAG_SEARCH_TOKEN"
MIN_TOKEN_CHARS = 16
MIB = 1024 * 1024
HOW_TO_AUTHENTICATE = (
    "send 'Authorization: Bearer TOKEN'; the token is in the service's endpoint file (--endpoint-file, "
    f"readable by its owner only), or is the one the service was given (--token-file or ${TOKEN_ENV})"
)


@dataclass(frozen=True)
class ServiceOptions:
    host: str = "127.0.0.1"
    port: int = 8470
    max_batch: int = 256
    max_wait_s: float = 0.002
    max_k: int = 1024
    max_queries: int = 4096  # per request; more is a 413
    max_body_bytes: int = 64 * MIB  # per request body, checked before and while reading; more is a 413
    max_inflight_body_bytes: int = 512 * MIB  # over all requests at once; more is a 503 (Retry-After)
    max_update_rows: int = 65536  # vectors (or ids) per update request; more is a 413
    endpoint_file: Path | None = None
    token: str | None = None  # None: generate one (written to the endpoint file)
    tls: ssl.SSLContext | None = None
    public_metrics: bool = False  # /metrics without the token (a Prometheus on a trusted network)
    routing: dict[str, Any] | None = None  # max_shards, shard_margin, ef, refine for every search

    def __post_init__(self) -> None:
        limits = ("max_batch", "max_k", "max_queries", "max_body_bytes", "max_inflight_body_bytes")
        for name in (*limits, "max_update_rows"):
            if getattr(self, name) < 1:
                raise HpcragError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.port <= 65535:
            raise HpcragError(f"port {self.port} is not a TCP port; choose 1-65535, or 0 for a free one")
        if self.token is not None:
            check_token(self.token, "the token")


def check_token(token: str, origin: str) -> str:
    if len(token) < MIN_TOKEN_CHARS or not token.isascii() or not token.isprintable() or " " in token:
        raise HpcragError(
            f"{origin} must be at least {MIN_TOKEN_CHARS} printable ASCII characters without spaces; "
            "make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    return token


def service_token(token_file: Path | None = None) -> str | None:
    """The token a service was given (--token-file, else $HPCRAG_SEARCH_TOKEN), or None to generate one."""
    if token_file is not None:
        try:
            text = Path(token_file).read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or "not text"
            raise HpcragError(f"--token-file {token_file} cannot be read ({reason})") from None
        return check_token(text, f"--token-file {token_file}")
    if os.environ.get(TOKEN_ENV):
        return check_token(os.environ[TOKEN_ENV].strip(), f"${TOKEN_ENV}")
    return None


class Behind(HpcragError):
    """This replica has not yet applied an update the request asks to see (503, retry)."""


@dataclass(eq=False)  # compared by identity: fields hold arrays
class _Pending:
    queries: np.ndarray
    k: int
    nprobe: int
    filter: Filter | None = None
    strategy: str = "auto"
    min_seq: int = 0
    routing: tuple[tuple[str, Any], ...] = ()  # the service's routing, with the request's fields over it
    future: Future = field(default_factory=Future)
    assigned: int = 0  # rows handed to batches so far
    parts: list[SearchResult] = field(default_factory=list)
    abandoned: bool = False  # the caller went away: its remaining rows are not searched

    @property
    def unassigned(self) -> int:
        return len(self.queries) - self.assigned

    @property
    def kind(self) -> tuple[Any, ...]:
        """Requests of one kind can share a batch: one (k, nprobe, filter, strategy, routing) per search."""
        key = None if self.filter is None else self.filter.key
        return self.k, self.nprobe, key, self.strategy, self.routing


@dataclass
class _Update:
    request: UpdateRequest
    future: Future = field(default_factory=Future)


class FairBatches:
    """Requests waiting for the ranks, cut into batches that share their room fairly.

    Each batch serves the kind (k, nprobe, filter) of the request at the head of the line; its room
    of `max_batch` rows is shared by water-filling among the waiting requests of that kind (each gets
    an equal share, what a small one leaves goes to the others), and the line turns by one after every
    batch. A request of 50,000 queries thus runs in chunks between other requests, not before them.

    The bound: after each batch the head has either finished or gone to the back, and newcomers join
    at the back, so a request moves up at least one place per batch and is served, at the latest,
    in the batch that finds it at the head: within n + 1 batches of n requests ahead of it, whatever
    their sizes and kinds. Requests of the head's kind are served with it (all of them while they
    number at most `max_rows`), so among requests of one kind a newcomer is in the next batch.
    """

    def __init__(self) -> None:
        self._line: deque[_Pending] = deque()

    def __len__(self) -> int:
        return len(self._line)

    def add(self, pending: _Pending) -> None:
        self._line.append(pending)

    def rows(self) -> int:
        return sum(p.unassigned for p in self._line)

    def take(self, max_rows: int) -> list[tuple[_Pending, int, int]]:
        """The next batch as (request, first row, end row) chunks, one per request; [] when idle."""
        self._line = deque(p for p in self._line if not p.abandoned and _started(p.future))
        if not self._line:
            return []
        head = self._line[0]
        members = [p for p in self._line if p.kind == head.kind]
        share = dict.fromkeys(map(id, members), 0)
        room = max_rows
        while room:
            hungry = [p for p in members if p.unassigned > share[id(p)]]
            if not hungry:
                break
            each = max(1, room // len(hungry))
            for pending in hungry:
                extra = min(each, pending.unassigned - share[id(pending)], room)
                share[id(pending)] += extra
                room -= extra
                if not room:
                    break
        chunks = []
        for pending in members:
            if share[id(pending)]:
                chunks.append((pending, pending.assigned, pending.assigned + share[id(pending)]))
                pending.assigned += share[id(pending)]
        self._line = deque(p for p in self._line if p.unassigned)
        if self._line and self._line[0] is head:
            self._line.rotate(-1)
        return chunks

    def drop(self, pendings: list[_Pending]) -> None:
        gone = set(map(id, pendings))
        self._line = deque(p for p in self._line if id(p) not in gone)


class _Metrics:
    def __init__(self, index: DistributedIndex) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = registry = CollectorRegistry()
        self.requests = Counter(
            "hpcrag_search_requests",
            "Search requests by body format and HTTP status",
            ["format", "status"],
            registry=registry,
        )
        self.queries = Counter("hpcrag_search_queries", "Queries answered", registry=registry)
        self.shard_visits = Counter(
            "hpcrag_search_shard_visits",
            "Shards scanned, summed over queries (divided by queries: the mean fan-out)",
            registry=registry,
        )
        self.shard_queries = Counter(
            "hpcrag_search_shard_queries",
            "Queries each shard searched (one shard's large share: a hot shard its rank is slowed by)",
            ["shard"],
            registry=registry,
        )
        self.latency = Histogram(
            "hpcrag_search_request_seconds",
            "Request latency including batching",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5),
            registry=registry,
        )
        self.batch_size = Histogram(
            "hpcrag_search_batch_queries",
            "Queries per collective search",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096),
            registry=registry,
        )
        self.batch_seconds = Histogram(
            "hpcrag_search_batch_seconds",
            "Time of one collective search",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2),
            registry=registry,
        )
        self.queue_depth = Gauge(
            "hpcrag_search_queue_depth", "Requests waiting for a batch", registry=registry
        )
        info = Gauge("hpcrag_index_info", "The served index", ["metric", "dim", "nlist"], registry=registry)
        info.labels(index.metric.value, str(index.dim), str(index.manifest.nlist)).set(1)
        self.vectors = Gauge("hpcrag_index_vectors", "Live vectors in the index", registry=registry)
        self.vectors.set(index.ntotal)
        self.seq = Gauge("hpcrag_index_update_seq", "The last update applied", registry=registry)
        self.seq.set(index.seq)
        self.updates = Counter(
            "hpcrag_index_updates",
            "Update requests by kind and HTTP status",
            ["kind", "status"],
            registry=registry,
        )
        self.update_rows = Counter(
            "hpcrag_index_update_rows", "Vectors added, replaced or deleted", ["change"], registry=registry
        )
        self.strategies = Counter(
            "hpcrag_search_strategy_queries",
            "Queries by scan strategy (ivf, exact)",
            ["strategy"],
            registry=registry,
        )
        Gauge("hpcrag_index_shards", "Shards of the index", registry=registry).set(index.manifest.nshards)
        Gauge("hpcrag_search_ranks", "Ranks serving the index", registry=registry).set(index.comm.size)


def _started(future: Future) -> bool:
    """Mark a request's future as running (it can no longer be cancelled); False if it was cancelled."""
    return future.running() or future.set_running_or_notify_cancel()


class SearchService:
    """Rank 0's side of `hpcrag index serve`; `run()` blocks until SIGTERM/SIGINT or `stop()`."""

    def __init__(self, index: DistributedIndex, options: ServiceOptions) -> None:
        self.index = index
        self.options = options
        index.check_routing(**(options.routing or {}))
        self.token = options.token or secrets.token_urlsafe(32)
        self.metrics = _Metrics(index)
        self._queue: queue.Queue[_Pending | _Update] = queue.Queue()
        self._batches = FairBatches()
        self._updates: deque[_Update] = deque()
        self._stopping = threading.Event()
        self._ready = threading.Event()
        # JSON parsing and encoding hold the GIL for long: off the event loop, two at a time at most.
        self._workers = ThreadPoolExecutor(2, thread_name_prefix="hpcrag-parse")
        self._body_bytes_held = 0  # touched on the event loop only
        self._socket = _listen(options.host, options.port)
        self.port = self._socket.getsockname()[1]

    @property
    def url(self) -> str:
        host = self.options.host if self.options.host not in ("0.0.0.0", "::") else socket.gethostname()
        if ":" in host:
            host = f"[{host}]"
        return f"{'https' if self.options.tls else 'http'}://{host}:{self.port}"

    def stop(self) -> None:
        self._stopping.set()

    def run(self, on_ready: Callable[[str], None] | None = None) -> None:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, lambda *_: self.stop())
        http = threading.Thread(target=self._serve_http, name="hpcrag-http", daemon=True)
        http.start()
        try:  # whatever happens from here on, the other ranks are released (index.close)
            if not self._ready.wait(timeout=30):
                raise HpcragError("the HTTP server did not start within 30 s")
            if self.options.endpoint_file:
                from hpcrag.util.files import write_atomic

                endpoint = {"url": self.url, "token": self.token}
                write_atomic(self.options.endpoint_file, json.dumps(endpoint) + "\n", mode=0o600)
            if on_ready:
                on_ready(self.url)
            self._batch_loop()
        finally:
            self.stop()
            self.index.close()
            self._workers.shutdown(wait=False, cancel_futures=True)

    # -- the main thread: batches and collective searches ------------------------------------------

    def _batch_loop(self) -> None:
        while not self._stopping.is_set():
            self._collect(timeout=0.0 if len(self._batches) or self._updates else 0.2)
            self._apply_updates()
            if not len(self._batches):
                continue
            deadline = time.perf_counter() + self.options.max_wait_s
            while self._batches.rows() < self.options.max_batch:
                left = deadline - time.perf_counter()
                if left <= 0 or not self._collect(timeout=left):
                    break
            self._apply_updates()
            chunks = self._batches.take(self.options.max_batch)
            self.metrics.queue_depth.set(len(self._batches) + self._queue.qsize())
            if chunks:
                self._run_batch(chunks)

    def _collect(self, timeout: float) -> bool:
        """Move arrived requests into the line, waiting up to `timeout` for the first; True if any came."""
        try:
            first = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
        except queue.Empty:
            return False
        self._enqueue(first)
        while True:
            try:
                self._enqueue(self._queue.get_nowait())
            except queue.Empty:
                return True

    def _enqueue(self, item: _Pending | _Update) -> None:
        if isinstance(item, _Update):
            self._updates.append(item)
        else:
            self._batches.add(item)

    def _apply_updates(self) -> None:
        """Apply the updates that arrived, in order, then what other writers logged meanwhile."""
        while self._updates:
            update = self._updates.popleft()
            if not _started(update.future):
                continue
            request = update.request
            try:
                if request.kind == "delete":
                    result = self.index.delete(request.ids, strict=request.strict)
                else:
                    write = self.index.add if request.kind == "add" else self.index.upsert
                    result = write(request.vectors, request.ids, request.attributes, request.declare)
            except HpcragError as exc:
                update.future.set_exception(exc)
                continue
            update.future.set_result(result)
        self.index.refresh()
        self.metrics.vectors.set(self.index.ntotal)
        self.metrics.seq.set(self.index.seq)

    def _run_batch(self, chunks: list[tuple[_Pending, int, int]]) -> None:
        first = chunks[0][0]
        behind = [c for c in chunks if c[0].min_seq > self.index.seq]
        if behind:
            for pending, _, _ in behind:
                pending.future.set_exception(
                    Behind(
                        f"this replica has applied updates up to #{self.index.seq}; the request asks for "
                        f"#{pending.min_seq} (min_seq): retry in a moment, or on another replica"
                    )
                )
            self._batches.drop([p for p, _, _ in behind])
            chunks = [c for c in chunks if c[0].min_seq <= self.index.seq]
            if not chunks:
                return
        queries = np.concatenate([p.queries[start:end] for p, start, end in chunks])
        try:
            result = self.index.search(
                queries, first.k, first.nprobe, first.filter, first.strategy, **dict(first.routing)
            )
        except Exception as exc:
            failed = [p for p, _, _ in chunks]
            self._batches.drop(failed)
            for pending in failed:
                pending.future.set_exception(exc)
            if isinstance(exc, HpcragError):
                return
            raise  # a bug: the service ends (and every rank with it) rather than answer wrongly
        self.metrics.batch_size.observe(len(queries))
        self.metrics.batch_seconds.observe(result.seconds)
        self.metrics.queries.inc(len(queries))
        self.metrics.shard_visits.inc(int(result.shards_touched.sum()))
        for shard in np.flatnonzero(result.shard_queries):
            self.metrics.shard_queries.labels(str(shard)).inc(int(result.shard_queries[shard]))
        self.metrics.strategies.labels(result.strategy).inc(len(queries))
        offset = 0
        for pending, start, end in chunks:
            rows = slice(offset, offset + end - start)
            offset += end - start
            pending.parts.append(
                SearchResult(
                    result.ids[rows],
                    result.distances[rows],
                    result.shards_touched[rows],
                    result.seconds,
                    result.strategy,
                    result.seq,
                )
            )
            if end == len(pending.queries):
                pending.future.set_result(_joined(pending.parts))

    # -- the HTTP thread -----------------------------------------------------------------------------

    def _serve_http(self) -> None:
        asyncio.run(self._http_main())

    async def _http_main(self) -> None:
        from aiohttp import web

        # Bodies are read by _read_body under our own limit; this one only backs it up.
        app = web.Application(client_max_size=self.options.max_body_bytes)
        add_routes(
            app,
            [
                ("POST", "/search", self._handle_search),
                ("POST", "/add", self._handle_update),
                ("POST", "/upsert", self._handle_update),
                ("POST", "/delete", self._handle_update),
                ("GET", "/health", self._handle_health),
                ("GET", "/metrics", self._handle_metrics),
                ("GET", "/openapi.json", self._handle_openapi),
            ],
        )
        runner = web.AppRunner(app, access_log=None, logger=protocol_logger())
        await runner.setup()
        await web.SockSite(runner, self._socket, ssl_context=self.options.tls).start()
        self._ready.set()
        while not self._stopping.is_set():
            await asyncio.sleep(0.1)
        await runner.cleanup()

    def _authorized(self, request: Any) -> bool:
        given = bearer_token(request.headers.get("Authorization"))
        if given is None:
            return False
        # Constant time: how much of a guess matched must not show in the answer's timing.
        return hmac.compare_digest(given.encode("utf-8", "backslashreplace"), self.token.encode())

    def _unauthorized(self) -> Any:
        from aiohttp import web

        return web.json_response(
            {"error": f"missing or wrong bearer token: {HOW_TO_AUTHENTICATE}"},
            status=401,
            headers={"WWW-Authenticate": 'Bearer realm="hpcrag-search"'},
        )

    def _stopping_answer(self) -> Any:
        from aiohttp import web

        message = "this search service is stopping; send the request to another replica"
        return web.json_response({"error": message}, status=503, headers={"Retry-After": "1"})

    async def _handle_health(self, request: Any) -> Any:
        from aiohttp import web

        if not self._authorized(request):
            return web.json_response({"status": "ok"})
        manifest = self.index.manifest
        return web.json_response(
            {
                "status": "ok",
                "ranks": self.index.comm.size,
                "shards": manifest.nshards,
                "vectors": manifest.ntotal,
                "dim": manifest.dim,
                "metric": manifest.metric,
                "nlist": manifest.nlist,
                "fingerprint": manifest.fingerprint(),
                "seq": self.index.seq,
                "live_vectors": self.index.ntotal,
                "attributes": self.index.schema.to_json(),
            }
        )

    async def _handle_metrics(self, request: Any) -> Any:
        from aiohttp import web
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        if not (self.options.public_metrics or self._authorized(request)):
            return self._unauthorized()
        return web.Response(
            body=generate_latest(self.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def _handle_openapi(self, request: Any) -> Any:
        from aiohttp import web

        from hpcrag.search.openapi import openapi_document

        return web.json_response(openapi_document(self.options, self.index.manifest.nlist))

    def _hold_body(self, request: Any) -> tuple[int, Any]:
        """Count a request's body as held (the caller releases it), or a 503 when that would pass
        --max-inflight-mb. A body's bytes count from before it is read until its answer is out, so
        memory stays bounded however many large requests arrive at once."""
        from aiohttp import web

        options = self.options
        size = min(request.content_length or options.max_body_bytes, options.max_body_bytes)
        if self._body_bytes_held + size > options.max_inflight_body_bytes:
            message = (
                f"this service holds {options.max_inflight_body_bytes} bytes of request bodies already "
                "(--max-inflight-mb); retry in a moment"
            )
            return 0, web.json_response({"error": message}, status=503, headers={"Retry-After": "1"})
        self._body_bytes_held += size
        return size, None

    async def _handle_search(self, request: Any) -> Any:

        started = time.perf_counter()
        binary = request.content_type == NPY
        fmt = "npy" if binary else "json"
        if not self._authorized(request):
            self.metrics.requests.labels(fmt, "401").inc()
            return self._unauthorized()
        if self._stopping.is_set():
            return self._stopping_answer()
        size, refusal = self._hold_body(request)
        if refusal is not None:
            self.metrics.requests.labels(fmt, "503").inc()
            return refusal
        try:
            return await self._answer_search(request, binary, fmt, started)
        finally:
            self._body_bytes_held -= size

    async def _answer_search(self, request: Any, binary: bool, fmt: str, started: float) -> Any:
        from aiohttp import web

        loop = asyncio.get_running_loop()
        try:
            raw = await self._read_body(request)
            parse = self._parse_npy if binary else self._parse_json
            pending = await loop.run_in_executor(self._workers, parse, raw, list(request.query.items()))
        except RequestTooLarge as exc:
            self.metrics.requests.labels(fmt, "413").inc()
            return web.json_response({"error": str(exc)}, status=413)
        except HpcragError as exc:
            self.metrics.requests.labels(fmt, "400").inc()
            return web.json_response({"error": str(exc)}, status=400)
        self._queue.put(pending)
        try:
            result: SearchResult = await asyncio.wrap_future(pending.future)
        except asyncio.CancelledError:
            pending.abandoned = True
            raise
        except Behind as exc:
            self.metrics.requests.labels(fmt, "503").inc()
            answer = {"error": str(exc), "seq": self.index.seq}
            return web.json_response(answer, status=503, headers={"Retry-After": "1"})
        except HpcragError as exc:
            self.metrics.requests.labels(fmt, "500").inc()
            return web.json_response({"error": str(exc)}, status=500)
        self.metrics.requests.labels(fmt, "200").inc()
        self.metrics.latency.observe(time.perf_counter() - started)
        if binary:
            return web.Response(body=_npz(result), content_type=NPZ)
        body = await loop.run_in_executor(self._workers, _json_answer, result)
        return web.Response(body=body, content_type="application/json")

    async def _read_body(self, request: Any) -> bytes:
        """The body, refused before reading when its declared length is too large, and while reading
        when it grows too large (a chunked body declares none)."""
        limit = self.options.max_body_bytes
        too_large = RequestTooLarge(
            f"the request body exceeds this service's limit of {limit} bytes (--max-body-mb); "
            "send fewer queries per request"
        )
        if request.content_length is not None and request.content_length > limit:
            raise too_large
        chunks, size = [], 0
        async for chunk in request.content.iter_any():
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
        return b"".join(chunks)

    def _parse_json(self, raw: bytes, params: list[tuple[str, str]]) -> _Pending:
        if params:
            raise HpcragError(
                f"query parameter {params[0][0]!r} is for .npy bodies; put k and nprobe in the JSON body"
            )
        return self._checked(parse_search_json(raw, self.options.max_queries))

    def _parse_npy(self, raw: bytes, params: list[tuple[str, str]]) -> _Pending:
        integers = {"k": 10, "nprobe": 1, "min_seq": 0, "max_shards": None, "ef": None, "refine": None}
        texts = ("filter", "strategy", "shard_margin")
        unknown = [name for name, _ in params if name not in (*integers, *texts)]
        if unknown:
            valid = ", ".join((*integers, *texts))
            raise HpcragError(f"unknown query parameter {shown(unknown[0])}; valid: {valid}")
        text = {name: value for name, value in params if name in texts}
        numbers = [(name, value) for name, value in params if name not in text]
        if len(text) + len(numbers) != len(params):
            raise HpcragError(f"query parameters {', '.join(texts)} may be given once each")
        values = parse_query_params(numbers, integers)
        routing: dict[str, Any] = {n: v for n in ROUTING_FIELDS if (v := values.get(n)) is not None}
        if "shard_margin" in text:
            routing["shard_margin"] = parse_margin_param(text["shard_margin"])
        queries = parse_search_npy(raw, self.options.max_queries)
        spec = None
        if "filter" in text:
            try:
                spec = json.loads(text["filter"])
            except (ValueError, RecursionError):
                raise HpcragError(
                    f"query parameter filter must be a JSON object, got {shown(text['filter'])}"
                ) from None
        request = SearchRequest(
            queries,
            values["k"],
            values["nprobe"],
            spec,
            text.get("strategy", "auto"),
            values["min_seq"],
            routing,
        )
        return self._checked(request)

    def _checked(self, request: SearchRequest) -> _Pending:
        k, nprobe = request.k, request.nprobe
        if k > self.options.max_k:
            raise HpcragError(f"k {k} exceeds this service's limit of {self.options.max_k} (--max-k)")
        check_search_params(k, nprobe, self.index.manifest.nlist)
        check_strategy(request.strategy)
        flt = self.index.compile_filter(request.filter)
        defaults = dict(self.options.routing or {})
        if request.strategy == "exact":  # it scans every shard: shard selection does not apply
            chosen = [name for name in SHARD_SELECTION if request.routing.get(name) is not None]
            if chosen:
                raise HpcragError(
                    f'strategy "exact" scans every matching row of every shard: drop {chosen[0]} '
                    'or use strategy "auto" or "ivf"'
                )
            defaults = {name: value for name, value in defaults.items() if name not in SHARD_SELECTION}
        routing = {**defaults, **request.routing}
        # The service's own defaults were checked at start: an error here is the request's field.
        self.index.check_routing(**routing, spell=str)
        queries = check_queries(request.queries, self.index.dim)
        given = tuple(sorted((name, value) for name, value in routing.items() if value is not None))
        return _Pending(queries, k, nprobe, flt, request.strategy, request.min_seq, given)

    async def _handle_update(self, request: Any) -> Any:
        from aiohttp import web

        kind = request.path.strip("/")
        binary = request.content_type == NPZ
        if not self._authorized(request):
            self.metrics.updates.labels(kind, "401").inc()
            return self._unauthorized()
        if self._stopping.is_set():
            return self._stopping_answer()
        size, refusal = self._hold_body(request)
        if refusal is not None:
            self.metrics.updates.labels(kind, "503").inc()
            return refusal
        try:
            status, answer = await self._answer_update(request, kind, binary)
        finally:
            self._body_bytes_held -= size
        self.metrics.updates.labels(kind, str(status)).inc()
        return web.json_response(answer, status=status)

    async def _answer_update(self, request: Any, kind: str, binary: bool) -> tuple[int, dict[str, Any]]:
        loop = asyncio.get_running_loop()
        params = list(request.query.items())
        try:
            raw = await self._read_body(request)
            if binary:
                parsed = await loop.run_in_executor(
                    self._workers, parse_update_npz, raw, kind, params, self.options.max_update_rows
                )
            else:
                if params:
                    raise HpcragError(
                        f"query parameter {params[0][0]!r} is for .npz bodies; use the JSON body"
                    )
                parsed = await loop.run_in_executor(
                    self._workers, parse_update_json, raw, kind, self.options.max_update_rows
                )
        except RequestTooLarge as exc:
            return 413, {"error": str(exc)}
        except HpcragError as exc:
            return 400, {"error": str(exc)}
        update = _Update(parsed)
        self._queue.put(update)
        try:
            result: UpdateResult = await asyncio.wrap_future(update.future)
        except LogWriteError as exc:
            return 503, {"error": str(exc)}
        except HpcragError as exc:
            return 400, {"error": str(exc)}
        for change, count in (
            ("added", result.added),
            ("replaced", result.replaced),
            ("deleted", result.deleted),
        ):
            self.metrics.update_rows.labels(change).inc(count)
        return 200, {
            "seq": result.seq,
            "added": result.added,
            "replaced": result.replaced,
            "deleted": result.deleted,
            "unknown_ids": list(result.unknown_ids),
            "declared": result.declared,
        }


def _joined(parts: list[SearchResult]) -> SearchResult:
    if len(parts) == 1:
        return parts[0]
    return SearchResult(
        ids=np.concatenate([p.ids for p in parts]),
        distances=np.concatenate([p.distances for p in parts]),
        shards_touched=np.concatenate([p.shards_touched for p in parts]),
        seconds=sum(p.seconds for p in parts),
        strategy=parts[0].strategy if len({p.strategy for p in parts}) == 1 else "mixed",
        seq=min(p.seq for p in parts),  # a request cut into batches: each row from one state, >= this
    )


def _json_answer(result: SearchResult) -> bytes:
    """JSON with null where a neighbour is missing (or its distance overflowed float32)."""
    distances = np.where((result.ids < 0) | ~np.isfinite(result.distances), np.nan, result.distances)
    return json.dumps(
        {
            "ids": result.ids.tolist(),
            "distances": [[None if d != d else d for d in row] for row in distances.tolist()],
            "shards_touched": result.shards_touched.tolist(),
            "strategy": result.strategy,
            "seq": result.seq,
        }
    ).encode()


def _npz(result: SearchResult) -> bytes:
    buffer = io.BytesIO()
    np.savez(
        buffer,
        ids=result.ids,
        distances=result.distances,
        shards_touched=result.shards_touched,
        strategy=np.array(result.strategy),
        seq=np.array(result.seq, dtype=np.int64),
    )
    return buffer.getvalue()


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        reason = exc.strerror or str(exc)
        raise HpcragError(
            f"cannot listen on {host}:{port} ({reason}); choose another --host or --port"
        ) from None
    sock.listen(1024)
    return sock
