"""The online search service: rank 0 answers HTTP, every rank scans, batches form on the fly.

Rank 0 runs an aiohttp server in a background thread; requests are validated there (a bad one is a
400 that names the problem and never reaches the other ranks) and queued. The main thread, which
owns every MPI/NCCL call, drains the queue into batches of up to `max_batch` queries, waiting at most
`max_wait` for more to arrive, and runs one collective search per batch. The other ranks sit in
`DistributedIndex.follow()`.

    POST /search   JSON {"queries": [[...], ...], "k": 10, "nprobe": 8}
                   -> {"ids": [[...]], "distances": [[...]], "shards_touched": [...]}
                   or a .npy body (Content-Type: application/x-npy) with ?k=&nprobe=
                   -> an .npz with ids, distances, shards_touched (for NumPy clients)
    GET  /health   status and the index's shape
    GET  /metrics  Prometheus text format
"""

from __future__ import annotations

import asyncio
import io
import json
import queue
import signal
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hpcrag.errors import HpcragError
from hpcrag.search.index import DistributedIndex, SearchResult
from hpcrag.search.inputs import check_queries, check_search_params

NPY = "application/x-npy"
NPZ = "application/x-npz"
MAX_BODY_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class ServiceOptions:
    host: str = "0.0.0.0"
    port: int = 8470
    max_batch: int = 256
    max_wait_s: float = 0.002
    max_k: int = 1024
    endpoint_file: Path | None = None


@dataclass
class _Pending:
    queries: np.ndarray
    k: int
    nprobe: int
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.perf_counter)


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
        Gauge("hpcrag_index_vectors", "Vectors in the index", registry=registry).set(index.ntotal)
        Gauge("hpcrag_index_shards", "Shards of the index", registry=registry).set(index.manifest.nshards)
        Gauge("hpcrag_search_ranks", "Ranks serving the index", registry=registry).set(index.comm.size)


class SearchService:
    """Rank 0's side of `hpcrag index serve`; `run()` blocks until SIGTERM/SIGINT or `stop()`."""

    def __init__(self, index: DistributedIndex, options: ServiceOptions) -> None:
        self.index = index
        self.options = options
        self.metrics = _Metrics(index)
        self._queue: queue.Queue[_Pending] = queue.Queue()
        self._stopping = threading.Event()
        self._ready = threading.Event()
        self._socket = _listen(options.host, options.port)
        self.port = self._socket.getsockname()[1]

    @property
    def url(self) -> str:
        host = self.options.host if self.options.host not in ("0.0.0.0", "::") else socket.gethostname()
        return f"http://{host}:{self.port}"

    def stop(self) -> None:
        self._stopping.set()

    def run(self, on_ready: Callable[[str], None] | None = None) -> None:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, lambda *_: self.stop())
        http = threading.Thread(target=self._serve_http, name="hpcrag-http", daemon=True)
        http.start()
        if not self._ready.wait(timeout=30):
            raise HpcragError("the HTTP server did not start within 30 s")
        if self.options.endpoint_file:
            from hpcrag.util.files import write_atomic

            write_atomic(self.options.endpoint_file, json.dumps({"url": self.url}) + "\n")
        if on_ready:
            on_ready(self.url)
        try:
            self._batch_loop()
        finally:
            self.index.close()

    # -- the main thread: batches and collective searches ------------------------------------------

    def _batch_loop(self) -> None:
        deferred: list[_Pending] = []
        while not self._stopping.is_set():
            first = deferred.pop(0) if deferred else self._next(timeout=0.2)
            if first is None:
                continue
            batch, rows = [first], len(first.queries)
            deadline = time.perf_counter() + self.options.max_wait_s
            while rows < self.options.max_batch:
                item = self._next(timeout=max(0.0, deadline - time.perf_counter()))
                if item is None:
                    break
                if (item.k, item.nprobe) == (first.k, first.nprobe):
                    batch.append(item)
                    rows += len(item.queries)
                else:
                    deferred.append(item)
            self.metrics.queue_depth.set(self._queue.qsize() + len(deferred))
            self._run_batch(batch)

    def _next(self, timeout: float) -> _Pending | None:
        try:
            return self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
        except queue.Empty:
            return None

    def _run_batch(self, batch: list[_Pending]) -> None:
        queries = np.concatenate([p.queries for p in batch])
        try:
            result = self.index.search(queries, batch[0].k, batch[0].nprobe)
        except HpcragError as exc:
            for pending in batch:
                pending.future.set_exception(exc)
            return
        self.metrics.batch_size.observe(len(queries))
        self.metrics.batch_seconds.observe(result.seconds)
        self.metrics.queries.inc(len(queries))
        self.metrics.shard_visits.inc(int(result.shards_touched.sum()))
        start = 0
        for pending in batch:
            stop = start + len(pending.queries)
            pending.future.set_result(
                SearchResult(
                    ids=result.ids[start:stop],
                    distances=result.distances[start:stop],
                    shards_touched=result.shards_touched[start:stop],
                    seconds=result.seconds,
                )
            )
            start = stop

    # -- the HTTP thread -----------------------------------------------------------------------------

    def _serve_http(self) -> None:
        asyncio.run(self._http_main())

    async def _http_main(self) -> None:
        from aiohttp import web

        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_post("/search", self._handle_search)
        app.router.add_get("/health", self._handle_health)
        app.router.add_get("/metrics", self._handle_metrics)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.SockSite(runner, self._socket).start()
        self._ready.set()
        while not self._stopping.is_set():
            await asyncio.sleep(0.1)
        await runner.cleanup()

    async def _handle_health(self, request: Any) -> Any:
        from aiohttp import web

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
            }
        )

    async def _handle_metrics(self, request: Any) -> Any:
        from aiohttp import web
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return web.Response(
            body=generate_latest(self.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def _handle_search(self, request: Any) -> Any:
        from aiohttp import web

        started = time.perf_counter()
        binary = request.content_type == NPY
        fmt = "npy" if binary else "json"
        try:
            queries, k, nprobe = await (_parse_npy(request) if binary else _parse_json(request))
            if k > self.options.max_k:
                raise HpcragError(f"k {k} exceeds this service's limit of {self.options.max_k}")
            check_search_params(k, nprobe, self.index.manifest.nlist)
            queries = check_queries(queries, self.index.dim)
        except HpcragError as exc:
            self.metrics.requests.labels(fmt, "400").inc()
            return web.json_response({"error": str(exc)}, status=400)
        pending = _Pending(queries, k, nprobe)
        self._queue.put(pending)
        try:
            result: SearchResult = await asyncio.wrap_future(pending.future)
        except HpcragError as exc:
            self.metrics.requests.labels(fmt, "500").inc()
            return web.json_response({"error": str(exc)}, status=500)
        self.metrics.requests.labels(fmt, "200").inc()
        self.metrics.latency.observe(time.perf_counter() - started)
        if binary:
            return web.Response(body=_npz(result), content_type=NPZ)
        missing = result.ids < 0
        distances = np.where(missing, np.nan, result.distances)
        return web.json_response(
            {
                "ids": result.ids.tolist(),
                "distances": [[None if np.isnan(d) else float(d) for d in row] for row in distances],
                "shards_touched": result.shards_touched.tolist(),
            }
        )


async def _parse_json(request: Any) -> tuple[Any, int, int]:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HpcragError(f"the request body is not valid JSON ({exc})") from None
    if not isinstance(body, dict) or "queries" not in body:
        raise HpcragError('expected a JSON object {"queries": [[...]], "k": 10, "nprobe": 8}')
    try:
        queries = np.asarray(body["queries"], dtype=np.float32)
    except (TypeError, ValueError):
        raise HpcragError('"queries" must be a list of equally long lists of numbers') from None
    return queries, _int(body.get("k", 10), "k"), _int(body.get("nprobe", 1), "nprobe")


async def _parse_npy(request: Any) -> tuple[Any, int, int]:
    raw = await request.read()
    try:
        queries = np.load(io.BytesIO(raw), allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise HpcragError(f"the request body is not a .npy array ({exc})") from None
    return queries, _int(request.query.get("k", 10), "k"), _int(request.query.get("nprobe", 1), "nprobe")


def _int(value: Any, name: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise HpcragError(f"{name} must be an integer, got {value!r}") from None


def _npz(result: SearchResult) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, ids=result.ids, distances=result.distances, shards_touched=result.shards_touched)
    return buffer.getvalue()


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise HpcragError(f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port") from None
    sock.listen(1024)
    return sock
