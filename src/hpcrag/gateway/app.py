"""The gateway's HTTP face: the OpenAI routes, RAG (`model: "rag:..."` and /v1/rag/query), /health,
/metrics, /openapi.json, and its background refreshes.

A request goes: key (401) → rate limit and budget (429) → body checks (400/413, `requests.py`) →
router (404/503) → forwarder (retries before the first byte) → usage, dollars, metrics and the ledger
row, committed before the answer's last byte leaves (503 if it cannot be). Answers carry
`X-Hpcrag-Request-Id`, `X-Hpcrag-Tier` and `X-Hpcrag-Endpoint` so a caller can see where it went.
A RAG request takes the same path, with its question prepared (`rag.py`) between the body checks and
the router, and its answer's citations checked before the ledger row is committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Gauge, generate_latest

from hpcrag.config import Config
from hpcrag.config.schema import RequestLimits
from hpcrag.cost.ledger import Ledger, LedgerWriter, RequestRecord
from hpcrag.errors import HpcragError
from hpcrag.gateway.access import Access, Refusal, utc_day_start
from hpcrag.gateway.complexity import load_scorer
from hpcrag.gateway.endpoints import EndpointTable, LiveEndpoint, known_certifications
from hpcrag.gateway.keys import ApiKey, KeyStore
from hpcrag.gateway.openapi import openapi_document
from hpcrag.gateway.proxy import Exchange, Forwarder, error_body, sse_event
from hpcrag.gateway.rag import (
    FILTERS_FIELD,
    RAG_PREFIX,
    CitedStream,
    Grounded,
    RagModel,
    RagRefused,
    RagService,
    chat_body,
    filters_of,
    local_answer,
    parse_model,
    parse_query,
    question_of,
    retrieved,
    routed_model,
    settle_chat,
    settle_query,
)
from hpcrag.gateway.requests import (
    InvalidRequest,
    OpenAIRequest,
    check_header,
    number_header,
    parse_body,
    quote,
    validate,
)
from hpcrag.gateway.router import AUTO, TIER_PREFIX, Router, RouteRequest, RoutingError
from hpcrag.metrics.gateway import GatewayMetrics
from hpcrag.rag.pipeline import NO_SOURCES
from hpcrag.serve.client import backend_ssl_context
from hpcrag.serve.launcher import registry_of
from hpcrag.serve.load import ServerLoad, parse_metrics
from hpcrag.serve.registry import INDEX_TIER, Registry
from hpcrag.serve.supervisor import PROVIDER as ON_PREM
from hpcrag.util.http_server import add_routes, bearer_token

log = logging.getLogger(__name__)
ROUTES = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
}
RAG_QUERY = "/v1/rag/query"
CHAT_PATH = "/v1/chat/completions"
STATE: web.AppKey[Gateway] = web.AppKey("gateway")
OFFLOAD_BYTES = 256 * 1024
MIN_TOKEN_CHARS = 16
LEDGER_DOWN = (
    "the usage ledger cannot write this request's row, and the gateway answers no request it cannot "
    "account for; see the gateway log (a full or locked disk, a damaged database)"
)


@dataclass
class Gateway:
    """Everything the handlers share; built at start-up, refreshed in the background."""

    config: Config
    registry: Registry
    keys: KeyStore
    ledger: Ledger
    writer: LedgerWriter
    table: EndpointTable
    router: Router
    access: Access
    metrics: GatewayMetrics
    rag: RagService
    metrics_token: str | None = None
    certifications: frozenset[str] = frozenset()  # what a caller may ask for in X-Hpcrag-Compliance
    body_bytes_held: int = 0
    session: aiohttp.ClientSession | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    forwarder: Forwarder | None = None

    @classmethod
    def create(cls, config: Config) -> Gateway:
        database = config.resolve_path(config.gateway.database)
        ledger = Ledger(database)
        writer = LedgerWriter(ledger, synchronous=config.gateway.ledger_synchronous)
        table = EndpointTable(config)
        metrics = GatewayMetrics()
        metrics.ledger_writer_up.set_function(lambda: float(writer.alive))
        metrics.ledger_rows_dropped.set_function(lambda: float(writer.rows_dropped))
        metrics.ledger_stalled.set_function(lambda: writer.stalled_s)
        return cls(
            config=config,
            registry=registry_of(config),
            keys=KeyStore(database),
            ledger=ledger,
            writer=writer,
            table=table,
            router=Router(config, table, load_scorer(config.gateway)),
            access=Access(),
            metrics=metrics,
            rag=RagService(config.rag, metrics, config.resolve_path(config.serving.registry)),
            metrics_token=_metrics_token(config),
            certifications=known_certifications(config),
        )

    def read_sources(self) -> None:
        """Registry rows, keys and today's spend: blocking SQLite reads, run off the event loop."""
        day = utc_day_start()
        rows = [row for row in self.registry.healthy() if row.tier != INDEX_TIER]  # search replicas
        keys = self.keys.active_by_hash()
        spend = self.ledger.spend_by_key(day)
        self.table.sync(rows)
        self.access.load(keys, spend, day)

    def endpoint_failed(self, endpoint: LiveEndpoint, reason: str) -> None:
        if endpoint.circuit.failure():
            log.warning(
                "circuit of %s opened after %d failures (last: %s)",
                endpoint.name,
                endpoint.circuit.consecutive_failures,
                reason,
            )
            self.circuit_gauge(endpoint).set(1)

    def check_after_timeout(self, endpoint: LiveEndpoint) -> None:
        """A request outlasted upstream_timeout_s: the endpoint's fault only if it is unhealthy too."""
        task = asyncio.get_running_loop().create_task(self._health_after_timeout(endpoint))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _health_after_timeout(self, endpoint: LiveEndpoint) -> None:
        if not await endpoint_healthy(self, endpoint):
            self.endpoint_failed(endpoint, "a request timed out and /health does not answer")

    def circuit_gauge(self, endpoint: LiveEndpoint) -> Gauge:
        row = endpoint.row
        return self.metrics.child(self.metrics.circuit_open, row.tier, row.site, row.provider, endpoint.name)


def _metrics_token(config: Config) -> str | None:
    name = config.gateway.metrics_token_file
    if name is None:
        return _long_enough(os.environ.get("HPCRAG_METRICS_TOKEN") or None, "$HPCRAG_METRICS_TOKEN")
    path = config.resolve_path(name)
    try:
        token = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise HpcragError(
            f"cannot read metrics_token_file {path}: {exc}; write the token there (mode 0600) "
            "or remove metrics_token_file from gateway.yaml"
        ) from None
    return _long_enough(token, f"metrics_token_file {path}")


def _long_enough(token: str | None, where: str) -> str | None:
    if token is not None and len(token) < MIN_TOKEN_CHARS:
        raise HpcragError(
            f"the metrics token in {where} has {len(token)} characters; use at least {MIN_TOKEN_CHARS} "
            "(python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    return token


def create_metrics_app(gateway: Gateway) -> web.Application:
    """/metrics alone, without a key: for the separate listener `metrics_listen`."""
    app = web.Application()
    app[STATE] = gateway
    add_routes(app, [("GET", "/metrics", _metrics_answer)])
    return app


def create_app(config: Config) -> web.Application:
    gateway = Gateway.create(config)
    app = web.Application(client_max_size=config.gateway.limits.max_body_bytes)
    app[STATE] = gateway
    add_routes(
        app,
        [
            *(("POST", path, handle_inference) for path in ROUTES),
            ("POST", RAG_QUERY, handle_rag_query),
            ("GET", "/v1/models", handle_models),
            ("GET", "/v1/models/{model:.+}", handle_model),
            ("GET", "/health", handle_health),
            ("GET", "/openapi.json", handle_openapi),
            ("GET", "/metrics", handle_metrics),
        ],
    )
    app.cleanup_ctx.append(_background)
    return app


async def _background(app: web.Application) -> AsyncIterator[None]:
    gateway = app[STATE]
    settings = gateway.config.gateway
    # https:// backends are verified against serving.backend_ca (else the system's CAs).
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60, ssl=backend_ssl_context(gateway.config))
    timeout = aiohttp.ClientTimeout(
        total=settings.upstream_timeout_s, sock_connect=settings.connect_timeout_s
    )
    gateway.session = aiohttp.ClientSession(connector=connector, timeout=timeout)
    gateway.forwarder = Forwarder(
        gateway.session, settings.attempts, gateway.endpoint_failed, gateway.check_after_timeout
    )
    await refresh(gateway)
    tasks = [
        asyncio.create_task(_every(settings.refresh_s, refresh, gateway)),
        asyncio.create_task(_every(settings.circuit.probe_s, probe_open_circuits, gateway)),
    ]
    yield
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await gateway.session.close()
    await asyncio.to_thread(gateway.writer.close)


async def _every(period_s: float, job: Callable[[Gateway], Awaitable[None]], gateway: Gateway) -> None:
    while True:
        await asyncio.sleep(period_s)
        try:
            await job(gateway)
        except Exception:  # a refresh that fails keeps the last view; the next one tries again
            log.exception("background %s failed", job.__name__)


async def refresh(gateway: Gateway) -> None:
    """Re-read the registry, keys and spend, then every endpoint's vLLM /metrics."""
    await asyncio.to_thread(gateway.read_sources)
    endpoints = gateway.table.live()
    loads = await asyncio.gather(*(_scrape(gateway, e) for e in endpoints))
    counts: dict[str, int] = dict.fromkeys(gateway.config.tiers, 0)
    for endpoint, load in zip(endpoints, loads, strict=True):
        endpoint.settle_throughput()
        counts[endpoint.tier] = counts.get(endpoint.tier, 0) + 1
        row = endpoint.row
        if load is not None:
            endpoint.waiting, endpoint.running = load.waiting, load.running
            gateway.metrics.child(
                gateway.metrics.queue_depth, row.tier, row.site, row.provider, endpoint.name
            ).set(load.waiting)
        gateway.circuit_gauge(endpoint).set(1 if endpoint.circuit.is_open else 0)
    for tier, count in counts.items():
        gateway.metrics.child(gateway.metrics.endpoints, tier).set(count)


async def _scrape(gateway: Gateway, endpoint: LiveEndpoint) -> ServerLoad | None:
    assert gateway.session is not None
    try:
        async with gateway.session.get(
            endpoint.url + "/metrics", timeout=aiohttp.ClientTimeout(total=1.0)
        ) as response:
            if response.status != 200:
                return None
            return parse_metrics(await response.text())
    except (TimeoutError, aiohttp.ClientError):
        return None


async def endpoint_healthy(gateway: Gateway, endpoint: LiveEndpoint) -> bool:
    assert gateway.session is not None
    try:
        async with gateway.session.get(
            endpoint.url + "/health", timeout=aiohttp.ClientTimeout(total=2.0)
        ) as response:
            return response.status == 200
    except (TimeoutError, aiohttp.ClientError):
        return False


async def probe_open_circuits(gateway: Gateway) -> None:
    """Health-check endpoints whose circuit has been open for `open_s`; a healthy one is back in."""
    for endpoint in gateway.table.live():
        if not endpoint.circuit.due_for_probe():
            continue
        if await endpoint_healthy(gateway, endpoint):
            endpoint.circuit.close()
            gateway.circuit_gauge(endpoint).set(0)
            log.warning("circuit of %s closed: /health answers again", endpoint.name)


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(error_body(status, code, message), status=status, headers=headers)


Handler = Callable[
    [Gateway, web.Request, RequestRecord, ApiKey, dict[str, str], float], Awaitable[web.StreamResponse]
]
Settle = Callable[[Exchange, web.StreamResponse], Awaitable[web.StreamResponse]]


async def handle_inference(request: web.Request) -> web.StreamResponse:
    return await _admitted(request, ROUTES[request.path], _answer)


async def handle_rag_query(request: web.Request) -> web.StreamResponse:
    """POST /v1/rag/query: a RAG answer (or only its ranked sources) as JSON, routed and accounted."""
    return await _admitted(request, "rag_query", _rag_query)


async def _admitted(request: web.Request, route: str, answer: Handler) -> web.StreamResponse:
    """Key, rate limit, budget and the bytes of bodies held; then `answer` does the rest."""
    gateway = request.app[STATE]
    started = time.perf_counter()
    record = RequestRecord(
        request_id=uuid.uuid4().hex, started_at=time.time(), route=route, status=0, outcome=""
    )
    ids = {"X-Hpcrag-Request-Id": record.request_id}
    key = gateway.access.authenticate(request.headers.get("Authorization"))
    if isinstance(key, Refusal):
        return await _refuse(gateway, record, key, ids)
    record.key, record.user_tier = key.name, key.user_tier
    refusal = gateway.access.admit(key)
    if refusal is not None:
        return await _refuse(gateway, record, refusal, ids)
    limits = gateway.config.gateway.limits
    # A body's bytes count from before it is read until its answer is out: memory stays bounded
    # however many large requests arrive at once.
    size = min(request.content_length or limits.max_body_bytes, limits.max_body_bytes)
    if gateway.body_bytes_held + size > limits.max_inflight_body_bytes:
        message = (
            f"the gateway holds {limits.max_inflight_body_bytes} bytes of request bodies already; "
            "retry in a moment, or send a smaller request"
        )
        return await _finish_refusal(gateway, record, 503, "busy", message, {**ids, "Retry-After": "1"})
    gateway.body_bytes_held += size
    try:
        return await answer(gateway, request, record, key, ids, started)
    finally:
        gateway.body_bytes_held -= size


async def _answer(
    gateway: Gateway,
    request: web.Request,
    record: RequestRecord,
    key: ApiKey,
    ids: dict[str, str],
    started: float,
) -> web.StreamResponse:
    route = record.route
    try:
        raw = await _raw_body(request, gateway.config.gateway.limits)
        if len(raw) > OFFLOAD_BYTES:  # parsing megabytes would stall every other request on the loop
            body, typed, route_request = await asyncio.to_thread(
                _understand, gateway, request, raw, route, key
            )
        else:
            body, typed, route_request = _understand(gateway, request, raw, route, key)
        record.model = route_request.model
        wanted = parse_model(typed.model) if route == "chat" else None
    except InvalidRequest as exc:
        return await _finish_refusal(gateway, record, exc.status, exc.code, exc.message, ids)
    if wanted is not None:
        record.route = "rag"
        try:
            return await _rag_chat(gateway, request, record, key, ids, started, body, typed, wanted)
        finally:
            gateway.rag.count(wanted.collection, record.status)
    return await _routed(gateway, request, record, key, ids, started, body, typed, route_request)


async def _routed(
    gateway: Gateway,
    request: web.Request,
    record: RequestRecord,
    key: ApiKey,
    ids: dict[str, str],
    started: float,
    body: dict[str, Any],
    typed: OpenAIRequest,
    route_request: RouteRequest,
    path: str | None = None,
    edit: Callable[[bytes], bytes] | None = None,
    settle: Settle | None = None,
) -> web.StreamResponse:
    """Route, forward (to `path`, else the request's own), account and commit; `edit` rewrites each
    streamed event and `settle` the answer, before its row is committed."""
    try:
        decision = gateway.router.route(route_request)
    except RoutingError as exc:
        record.decision.update(exc.decision)
        return await _finish_refusal(gateway, record, exc.status, exc.code, str(exc), ids)
    record.decision.update(decision.record())
    first = decision.candidates[0].endpoint
    gateway.metrics.child(gateway.metrics.decisions, decision.wanted_tier, first.tier).inc()
    if decision.fallback:
        gateway.metrics.child(gateway.metrics.fallbacks, "tier", first.tier).inc()
    assert gateway.forwarder is not None
    exchange = Exchange()
    candidates = [c.endpoint for c in decision.candidates]
    try:
        response = await gateway.forwarder.forward(
            request, path or request.path, body, typed, candidates, ids, started, exchange, edit
        )
        if settle is not None:
            response = await settle(exchange, response)
    except asyncio.CancelledError:
        exchange.status, exchange.outcome = 499, "client_closed"
        exchange.settle_delivered()
        gateway.writer.record(_account(gateway, record, exchange, key))
        raise
    except Exception:  # a bug of ours: the caller gets a 500, the ledger its row, the log the traceback
        log.exception("request %s failed in the gateway", record.request_id)
        exchange.status, exchange.outcome = 500, "gateway_error"
        exchange.settle_delivered()
        gateway.writer.record(_account(gateway, record, exchange, key))
        raise
    committed = await _commit(gateway, _account(gateway, record, exchange, key))
    if not response.prepared:
        return response if committed else _error(503, "ledger_down", LEDGER_DOWN, ids)
    # A stream: its last event goes out only now that its row is in.
    tail = exchange.tail if committed else sse_event(error_body(503, "ledger_down", LEDGER_DOWN))
    with contextlib.suppress(ConnectionError):
        if tail:
            await response.write(tail)
        await response.write_eof()
    return response


async def _rag_chat(
    gateway: Gateway,
    request: web.Request,
    record: RequestRecord,
    key: ApiKey,
    ids: dict[str, str],
    started: float,
    body: dict[str, Any],
    typed: OpenAIRequest,
    wanted: RagModel,
) -> web.StreamResponse:
    """A chat request of a `rag:` model: the last user message answered from the collection."""
    limits = gateway.config.gateway.limits
    try:
        question = question_of(typed)
        filters = filters_of(body.get(FILTERS_FIELD), FILTERS_FIELD)
        header_tier = check_header("X-Hpcrag-Tier", request.headers.get("X-Hpcrag-Tier"), limits)
        tier = wanted.tier or (header_tier or "").lower() or None
        grounded = await _ground(gateway, record, wanted.collection, question, tier, filters)
        if not grounded.prepared.sources:
            answer, kind = await local_answer(
                gateway.rag, grounded, record.request_id, typed.model, typed.stream
            )
            record.decision["rag"] = grounded.record()
            return await _answer_here(gateway, record, ids, answer, kind)
        model = routed_model(wanted, grounded.prepared)
        body = chat_body(body, grounded, model, typed.max_output_tokens())
        typed = validate("chat", body, limits)
        route_request = _route_request(gateway, request, typed, "chat", key)
    except (InvalidRequest, RagRefused) as exc:
        return await _finish_refusal(gateway, record, exc.status, exc.code, exc.message, ids)
    stream = CitedStream(grounded) if typed.stream else None

    async def settle(exchange: Exchange, response: web.StreamResponse) -> web.StreamResponse:
        response = await settle_chat(gateway.rag, grounded, stream, exchange, response)
        record.decision["rag"] = grounded.record()
        return response

    return await _routed(
        gateway, request, record, key, ids, started, body, typed, route_request, edit=stream, settle=settle
    )


async def _rag_query(
    gateway: Gateway,
    request: web.Request,
    record: RequestRecord,
    key: ApiKey,
    ids: dict[str, str],
    started: float,
) -> web.StreamResponse:
    try:
        return await _answer_query(gateway, request, record, key, ids, started)
    finally:
        gateway.rag.count(record.model.removeprefix(RAG_PREFIX), record.status)


async def _answer_query(
    gateway: Gateway,
    request: web.Request,
    record: RequestRecord,
    key: ApiKey,
    ids: dict[str, str],
    started: float,
) -> web.StreamResponse:
    limits = gateway.config.gateway.limits
    try:
        raw = await _raw_body(request, limits)
        if len(raw) > OFFLOAD_BYTES:
            query = parse_query(await asyncio.to_thread(parse_body, raw, limits))
        else:
            query = parse_query(parse_body(raw, limits))
        record.model = RAG_PREFIX + query.collection
        tier = None if query.tier == AUTO else query.tier
        filters = filters_of(query.filters, "filters")
        grounded = await _ground(gateway, record, query.collection, query.question, tier, filters)
        if query.retrieve_only:
            return await _answer_here(gateway, record, ids, json.dumps(retrieved(grounded)).encode())
        if not grounded.prepared.sources:
            answer = await gateway.rag.finish(grounded, NO_SOURCES)
            record.decision["rag"] = grounded.record()
            return await _answer_here(gateway, record, ids, json.dumps(answer.to_json()).encode())
        model = AUTO if query.tier == AUTO else TIER_PREFIX + grounded.prepared.tier
        body = chat_body({}, grounded, model, None)
        typed = validate("chat", body, limits)
        route_request = _route_request(gateway, request, typed, "chat", key)
    except (InvalidRequest, RagRefused) as exc:
        return await _finish_refusal(gateway, record, exc.status, exc.code, exc.message, ids)

    async def settle(exchange: Exchange, response: web.StreamResponse) -> web.StreamResponse:
        response = await settle_query(gateway.rag, grounded, exchange, response)
        record.decision["rag"] = grounded.record()
        return response

    return await _routed(
        gateway, request, record, key, ids, started, body, typed, route_request, path=CHAT_PATH, settle=settle
    )


async def _ground(
    gateway: Gateway,
    record: RequestRecord,
    collection: str,
    question: str,
    tier: str | None,
    filters: dict[str, list[str]],
) -> Grounded:
    """The question prepared; its ledger entry in `record`. A failure of ours is a 500 with a row."""
    try:
        grounded = await gateway.rag.ground(collection, question, tier, filters)
    except (InvalidRequest, RagRefused):
        raise
    except Exception:
        log.exception("request %s: preparing the RAG answer failed", record.request_id)
        raise RagRefused(
            500, "gateway_error", "the gateway failed while preparing the RAG answer; see the gateway log"
        ) from None
    record.decision["rag"] = grounded.record()
    return grounded


async def _answer_here(
    gateway: Gateway,
    record: RequestRecord,
    ids: dict[str, str],
    body: bytes,
    content_type: str = "application/json",
) -> web.Response:
    """An answer the gateway makes itself (no backend, no tokens), sent once its row is committed."""
    record.status, record.outcome = 200, "ok"
    gateway.metrics.child(gateway.metrics.requests, "", "", "", record.route, "200").inc()
    if not await _commit(gateway, record):
        return _error(503, "ledger_down", LEDGER_DOWN, ids)
    return web.Response(body=body, headers={**ids, "Content-Type": content_type})


async def _commit(gateway: Gateway, record: RequestRecord) -> bool:
    """Wait until the request's ledger row is committed; False when it is not, or not in time."""
    if not gateway.writer.alive:
        log.error("usage ledger writer has stopped: request %s is answered 503", record.request_id)
        return False
    timeout = gateway.config.gateway.ledger_commit_timeout_s
    try:
        return await asyncio.wait_for(gateway.writer.commit(record), timeout)
    except TimeoutError:  # the row stays queued and is written once the database lets it
        log.error(
            "usage ledger: request %s waited %.0f s for its row; answered 503", record.request_id, timeout
        )
        return False


async def _raw_body(request: web.Request, limits: RequestLimits) -> bytes:
    """The body; one over the limit is refused from its Content-Length, unread."""
    length = request.content_length
    if length is not None and length > limits.max_body_bytes:
        raise InvalidRequest(
            f"the request body has {length} bytes, more than the {limits.max_body_bytes} allowed; "
            "send a smaller request (fewer or shorter messages or inputs)",
            status=413,
            code="body_too_large",
        )
    try:
        raw = await request.read()
    except ConnectionError:  # the caller hung up half way through its body
        raise InvalidRequest(
            "the request body ended before its Content-Length; send the whole body", code="body_incomplete"
        ) from None
    except web.HTTPRequestEntityTooLarge:  # chunked: no Content-Length, stopped at the limit
        raise InvalidRequest(
            f"the request body is larger than the {limits.max_body_bytes} bytes allowed; "
            "send a smaller request",
            status=413,
            code="body_too_large",
        ) from None
    return raw


def _understand(
    gateway: Gateway, request: web.Request, raw: bytes, route: str, key: ApiKey
) -> tuple[dict[str, Any], OpenAIRequest, RouteRequest]:
    """The body as sent (forwarded as it is), as checked, and what the router needs of it."""
    limits = gateway.config.gateway.limits
    body = parse_body(raw, limits)
    typed = validate(route, body, limits)
    return body, typed, _route_request(gateway, request, typed, route, key)


def _route_request(
    gateway: Gateway, request: web.Request, typed: OpenAIRequest, route: str, key: ApiKey
) -> RouteRequest:
    config = gateway.config
    limits = config.gateway.limits
    headers = request.headers

    def header(name: str) -> str | None:
        return check_header(name, headers.get(name), limits)

    extra = {c.strip().lower() for c in (header("X-Hpcrag-Compliance") or "").split(",") if c.strip()}
    known = gateway.certifications
    if unknown := sorted(extra - known):
        raise InvalidRequest(
            f"unknown certification {quote(unknown[0])} in X-Hpcrag-Compliance; "
            f"known: {', '.join(sorted(known))}",
            field="X-Hpcrag-Compliance",
        )
    site, provider = header("X-Hpcrag-Site"), header("X-Hpcrag-Provider")
    if site is not None and site not in config.sites:
        raise InvalidRequest(
            f"unknown site {quote(site)} in X-Hpcrag-Site; sites: {', '.join(sorted(config.sites))}",
            field="X-Hpcrag-Site",
        )
    providers = [ON_PREM, *config.clouds.providers]
    if provider is not None and provider not in providers:
        raise InvalidRequest(
            f"unknown provider {quote(provider)} in X-Hpcrag-Provider; providers: {', '.join(providers)}",
            field="X-Hpcrag-Provider",
        )
    max_tokens = typed.max_output_tokens()
    return RouteRequest(
        model=typed.model,
        text=typed.text(),
        output_tokens=0 if route == "embeddings" else (max_tokens or config.gateway.default_output_tokens),
        user_tier=key.user_tier,
        compliance=frozenset(key.compliance) | extra,
        quality=header("X-Hpcrag-Quality") or "medium",
        max_ttft_ms=number_header("X-Hpcrag-Max-Ttft-Ms", headers.get("X-Hpcrag-Max-Ttft-Ms"), limits),
        max_cost_usd=number_header("X-Hpcrag-Max-Cost-Usd", headers.get("X-Hpcrag-Max-Cost-Usd"), limits),
        tier=(header("X-Hpcrag-Tier") or "").lower() or None,
        site=site,
        provider=provider,
    )


async def _refuse(
    gateway: Gateway, record: RequestRecord, refusal: Refusal, ids: dict[str, str]
) -> web.Response:
    if refusal.code == "budget_exceeded":
        gateway.metrics.child(gateway.metrics.budget_rejections, record.key).inc()
    else:
        gateway.metrics.child(gateway.metrics.access_rejections, refusal.code).inc()
    headers = dict(ids)
    if refusal.retry_after_s is not None:
        headers["Retry-After"] = str(max(1, round(refusal.retry_after_s)))
    return await _finish_refusal(gateway, record, refusal.status, refusal.code, refusal.message, headers)


async def _finish_refusal(
    gateway: Gateway, record: RequestRecord, status: int, code: str, message: str, headers: dict[str, str]
) -> web.Response:
    record.status, record.outcome = status, code
    gateway.metrics.child(gateway.metrics.requests, "", "", "", record.route, str(status)).inc()
    if not await _commit(gateway, record):
        return _error(503, "ledger_down", LEDGER_DOWN, headers)
    return _error(status, code, message, headers)


def _account(gateway: Gateway, record: RequestRecord, exchange: Exchange, key: ApiKey) -> RequestRecord:
    """Dollars and metrics for a request that reached an endpoint; returns its ledger row."""
    record.status, record.outcome = exchange.status, exchange.outcome
    record.attempts = len(exchange.attempts)
    record.decision["attempts"] = exchange.attempts
    record.ttft_s, record.latency_s = exchange.ttft_s, exchange.latency_s
    metrics = gateway.metrics
    if len(exchange.attempts) > 1:
        metrics.child(metrics.fallbacks, "retry", exchange.endpoint.tier if exchange.endpoint else "").inc(
            len(exchange.attempts) - 1
        )
    endpoint = exchange.endpoint
    if endpoint is None:
        metrics.child(metrics.requests, "", "", "", record.route, str(exchange.status)).inc()
        return record
    row = endpoint.row
    labels = (row.tier, row.site, row.provider)
    record.tier, record.site, record.provider = labels
    record.job_id, record.endpoint = row.job_id, endpoint.url
    record.prompt_tokens, record.completion_tokens = exchange.prompt_tokens, exchange.completion_tokens
    record.usd_per_token = endpoint.usd_per_token
    record.usd = record.tokens * record.usd_per_token
    metrics.child(metrics.requests, *labels, record.route, str(exchange.status)).inc()
    if exchange.ttft_s is not None:
        metrics.child(metrics.ttft, *labels).observe(exchange.ttft_s)
    if exchange.latency_s is not None:
        metrics.child(metrics.latency, *labels).observe(exchange.latency_s)
    if record.tokens:
        metrics.child(metrics.tokens, *labels, "prompt").inc(record.prompt_tokens)
        metrics.child(metrics.tokens, *labels, "completion").inc(record.completion_tokens)
        metrics.child(metrics.cost, *labels, key.name).inc(record.usd)
        gateway.access.charge(key.name, record.usd)
    return record


async def handle_models(request: web.Request) -> web.Response:
    gateway = request.app[STATE]
    key = gateway.access.authenticate(request.headers.get("Authorization"))
    if isinstance(key, Refusal):
        return _error(key.status, key.code, key.message)
    return web.json_response({"object": "list", "data": await _model_objects(gateway)})


async def handle_model(request: web.Request) -> web.Response:
    """GET /v1/models/{model}: one model object (the openai client's `models.retrieve`)."""
    gateway = request.app[STATE]
    key = gateway.access.authenticate(request.headers.get("Authorization"))
    if isinstance(key, Refusal):
        return _error(key.status, key.code, key.message)
    wanted = request.match_info["model"]
    models = await _model_objects(gateway)
    for model in models:
        if model["id"] == wanted:
            return web.json_response(model)
    return _error(
        404,
        "model_not_found",
        f"no model {quote(wanted)} is served now; served: {', '.join(m['id'] for m in models)}",
    )


async def _model_objects(gateway: Gateway) -> list[dict[str, Any]]:
    created = int(time.time())
    live = gateway.table.live()
    names = sorted({e.row.served_name for e in live})
    tiers = [t for t in gateway.config.tiers if any(e.tier == t for e in live)]
    collections = await asyncio.to_thread(gateway.rag.names)
    ids = [*names, *(TIER_PREFIX + t for t in tiers), AUTO, *(RAG_PREFIX + c for c in collections)]
    return [{"id": i, "object": "model", "created": created, "owned_by": "hpcrag"} for i in ids]


async def handle_openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document(request.app[STATE].config.gateway.limits))


async def handle_health(request: web.Request) -> web.Response:
    gateway = request.app[STATE]
    live = gateway.table.live()
    usable = [e for e in live if e.circuit.allows()]
    answer: dict[str, Any] = {"status": "ok", "endpoints": len(live), "usable": len(usable)}
    stalled = gateway.writer.stalled_s > gateway.config.gateway.ledger_commit_timeout_s
    if not gateway.writer.alive or stalled:
        answer.update(status="ledger_down", message=LEDGER_DOWN)
        return web.json_response(answer, status=503)
    return web.json_response(answer)


async def handle_metrics(request: web.Request) -> web.Response:
    """Key names and spend are in these series: on the API port they need the metrics token."""
    gateway = request.app[STATE]
    if gateway.metrics_token is None:
        return _error(
            404,
            "metrics_elsewhere",
            "/metrics is not served on the API port: scrape the gateway's metrics_listen address, or set "
            "metrics_token_file in gateway.yaml (or $HPCRAG_METRICS_TOKEN) and send that token",
        )
    token = bearer_token(request.headers.get("Authorization"))
    if token is None or not hmac.compare_digest(
        token.encode("utf-8", "surrogateescape"), gateway.metrics_token.encode()
    ):
        return _error(
            401,
            "invalid_metrics_token",
            "/metrics needs 'Authorization: Bearer <metrics token>' (gateway.yaml metrics_token_file "
            "or $HPCRAG_METRICS_TOKEN); API keys do not open it",
        )
    return await _metrics_answer(request)


async def _metrics_answer(request: web.Request) -> web.Response:
    gateway = request.app[STATE]
    body = generate_latest(gateway.metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
