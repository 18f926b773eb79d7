"""Send one request to its candidate endpoints in turn until one answers; stream the answer through.

Nothing reaches the caller before an endpoint has produced its first byte, so a refused connection,
a reset before the first byte or a 5xx answer moves the request to the next candidate (up to
`attempts`) and counts against that endpoint's circuit. Once the first event of a stream has been
written the request is committed: a later failure ends the stream with an error event. A request that
outlasts `upstream_timeout_s` is a 504, not retried (another endpoint would take as long).

Streams pass through event by event, never buffered. The gateway asks vLLM for usage on every chunk
(`stream_options.include_usage` and `continuous_usage_stats`), so a stream cut short is charged for
the tokens it delivered, and strips what the caller did not ask for. The answer's last bytes (the
`[DONE]` event of a stream, the whole body of a plain answer) are left to the caller of `forward`,
which sends them only after the request's ledger row is committed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from hpcrag.gateway.endpoints import LiveEndpoint
from hpcrag.gateway.requests import OpenAIRequest

log = logging.getLogger(__name__)
JSON_HEADERS = {"Content-Type": "application/json"}
DONE = b"data: [DONE]"  # an OpenAI stream's last event; a stream without it was cut short
TIMEOUT_MESSAGE = (
    "the answer took longer than the gateway's upstream_timeout_s; ask for fewer tokens, or stream it"
)
# What ends an attempt before anything reached the caller: connection trouble and time-outs.
# (HttpProcessingError: a line from the backend longer than aiohttp reads, for one.)
UPSTREAM_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError, HttpProcessingError)


@dataclass
class Exchange:
    """What happened to one request upstream: where it was answered, with what, how fast."""

    endpoint: LiveEndpoint | None = None
    status: int = 502
    outcome: str = "upstream_failed"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_s: float | None = None
    latency_s: float | None = None
    attempts: list[dict[str, str]] = field(default_factory=list)
    tail: bytes = b""  # a stream's last event, written by the caller once the ledger row is in
    usage_seen: bool = False
    content_chunks: int = 0  # streamed chunks that carried text: the token count if usage never came

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def take_usage(self, usage: Any) -> None:
        if isinstance(usage, dict):
            self.usage_seen = True
            self.prompt_tokens = _count(usage.get("prompt_tokens"))
            self.completion_tokens = _count(usage.get("completion_tokens"))

    def settle_delivered(self) -> None:
        """A stream that never reported usage is charged at least one token per text chunk delivered."""
        if not self.usage_seen:
            self.completion_tokens = max(self.completion_tokens, self.content_chunks)


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def sse_event(body: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(body)}\n\n".encode()


def error_body(status: int, code: str, message: str) -> dict[str, Any]:
    kinds = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}
    kind = kinds.get(status, "invalid_request_error" if status < 500 else "server_error")
    return {"error": {"message": message, "type": kind, "code": code}}


class Forwarder:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        attempts: int,
        on_failure: Callable[[LiveEndpoint, str], None],
        on_timeout: Callable[[LiveEndpoint], object] = lambda endpoint: None,
    ) -> None:
        self.session = session
        self.attempts = attempts
        self.on_failure = on_failure
        self.on_timeout = on_timeout  # told of a request that outlasted upstream_timeout_s

    async def forward(
        self,
        request: web.Request,
        path: str,
        body: dict[str, Any],
        typed: OpenAIRequest,
        candidates: list[LiveEndpoint],
        headers: dict[str, str],
        started: float,
        exchange: Exchange,
        edit: Callable[[bytes], bytes] | None = None,
    ) -> web.StreamResponse:
        """The answer of the first endpoint that gives one; `exchange` records what happened. `body` is
        forwarded as sent; `typed` is the same request checked (`requests.validate`).

        A streamed answer comes back prepared but unfinished: its last event is `exchange.tail`. `edit`,
        when given, rewrites each streamed event before it is written (its usage already taken)."""
        stream = typed.stream
        options = body.get("stream_options") or {}  # checked: an object, passed on with ours added
        wants = _UsageWish(typed.wants_usage, typed.wants_continuous_usage)
        payloads: dict[str, bytes] = {}
        last_error: web.Response | None = None
        for endpoint in candidates:
            if len(exchange.attempts) >= self.attempts:
                break
            if not endpoint.circuit.allows():
                continue
            name = endpoint.row.served_name
            if name not in payloads:
                upstream = {**body, "model": name}
                if stream:
                    upstream["stream_options"] = {
                        **options,
                        "include_usage": True,
                        "continuous_usage_stats": True,
                    }
                payloads[name] = json.dumps(upstream).encode()
            exchange.endpoint = endpoint
            answer_headers = {**headers, "X-Hpcrag-Tier": endpoint.tier, "X-Hpcrag-Endpoint": endpoint.name}
            endpoint.begin()
            try:
                if stream:
                    response = await self._stream(
                        request,
                        endpoint,
                        path,
                        payloads[name],
                        answer_headers,
                        wants,
                        exchange,
                        started,
                        edit,
                    )
                else:
                    response = await self._once(
                        endpoint, path, payloads[name], answer_headers, exchange, started
                    )
            except _TimedOut:
                endpoint.end(0)
                self.on_timeout(endpoint)
                exchange.attempts.append({"endpoint": endpoint.name, "error": "upstream_timeout_s reached"})
                exchange.status, exchange.outcome = 504, "upstream_timeout"
                body_504 = error_body(504, "upstream_timeout", TIMEOUT_MESSAGE)
                return web.json_response(body_504, status=504, headers=answer_headers)
            except _Retry as retry:
                endpoint.end(0)
                exchange.attempts.append({"endpoint": endpoint.name, "error": retry.reason})
                self.on_failure(endpoint, retry.reason)
                last_error = retry.response
                continue
            except BaseException:  # the caller went away while we waited upstream, or a bug: count it out
                endpoint.end(0)
                raise
            completion_s = None
            if exchange.ttft_s is not None and exchange.latency_s is not None:
                completion_s = exchange.latency_s - exchange.ttft_s
            endpoint.end(exchange.tokens, exchange.ttft_s, completion_s, exchange.completion_tokens)
            if exchange.outcome == "upstream_failed_mid_stream":
                self.on_failure(endpoint, "connection lost during the stream")
            else:
                endpoint.circuit.success()
            exchange.attempts.append({"endpoint": endpoint.name, "error": ""})
            return response
        tried = "; ".join(f"{a['endpoint']}: {a['error']}" for a in exchange.attempts) or "none open"
        if last_error is not None:
            exchange.status = last_error.status
            return last_error
        exchange.status, exchange.outcome = 502, "upstream_failed"
        message = f"every endpoint tried failed before answering ({tried}); see `hpcrag serve status`"
        return web.json_response(error_body(502, "upstream_failed", message), status=502, headers=headers)

    async def _once(
        self,
        endpoint: LiveEndpoint,
        path: str,
        payload: bytes,
        headers: dict[str, str],
        exchange: Exchange,
        started: float,
    ) -> web.Response:
        try:
            async with self.session.post(
                endpoint.url + path, data=payload, headers=endpoint.upstream_headers
            ) as upstream:
                return await self._whole(endpoint, path, upstream, headers, exchange, started)
        except UPSTREAM_ERRORS as exc:
            raise _failure(exc) from None

    async def _whole(
        self,
        endpoint: LiveEndpoint,
        path: str,
        upstream: aiohttp.ClientResponse,
        headers: dict[str, str],
        exchange: Exchange,
        started: float,
    ) -> web.Response:
        """A complete answer (not streamed, or a refusal): a 5xx or a body cut short is a retry."""
        try:
            data = await upstream.read()
        except UPSTREAM_ERRORS as exc:
            raise _failure(exc) from None
        status = upstream.status
        if status >= 500:
            raise _Retry(f"HTTP {status}", _passthrough(status, data, headers))
        exchange.latency_s = time.perf_counter() - started
        exchange.status = status
        exchange.outcome = "ok" if status == 200 else "upstream_refused"
        if status != 200:
            return _passthrough(status, _openai_error(endpoint, path, status, data), headers)
        try:
            exchange.take_usage(json.loads(data).get("usage"))
        except (ValueError, AttributeError):
            log.warning("endpoint %s answered 200 without a JSON body", endpoint.name)
        return _passthrough(status, data, headers)

    async def _stream(
        self,
        request: web.Request,
        endpoint: LiveEndpoint,
        path: str,
        payload: bytes,
        headers: dict[str, str],
        wants: _UsageWish,
        exchange: Exchange,
        started: float,
        edit: Callable[[bytes], bytes] | None,
    ) -> web.StreamResponse:
        try:
            upstream = await self.session.post(
                endpoint.url + path, data=payload, headers=endpoint.upstream_headers
            )
        except UPSTREAM_ERRORS as exc:
            raise _failure(exc) from None
        try:
            if upstream.status != 200:
                return await self._whole(endpoint, path, upstream, headers, exchange, started)
            try:
                event = await _next_event(upstream.content)
            except UPSTREAM_ERRORS as exc:
                raise _failure(exc) from None
            if event is None:
                raise _Retry("stream ended before its first event")
            response = web.StreamResponse(
                status=200,
                headers={**headers, "Content-Type": "text/event-stream", "Cache-Control": "no-cache"},
            )
            exchange.status, exchange.outcome = 200, "ok"
            try:
                await response.prepare(request)
                exchange.ttft_s = time.perf_counter() - started
                while event is not None and not event.startswith(DONE):
                    event = _relay(event, wants, exchange)
                    if event and edit is not None:
                        event = edit(event)
                    if event:
                        await response.write(event)
                    event = await _next_event(upstream.content)
                if event is None:  # the connection closed cleanly, but the answer is cut short
                    raise aiohttp.ClientPayloadError("the stream ended without data: [DONE]")
                exchange.tail = event
            except UPSTREAM_ERRORS as exc:
                if request.transport is None or request.transport.is_closing():
                    exchange.status, exchange.outcome = 499, "client_closed"
                elif _overall_timeout(exc):
                    self.on_timeout(endpoint)
                    exchange.status, exchange.outcome = 504, "upstream_timeout"
                    exchange.tail = sse_event(error_body(504, "upstream_timeout", TIMEOUT_MESSAGE))
                else:
                    exchange.status, exchange.outcome = 502, "upstream_failed_mid_stream"
                    message = f"endpoint {endpoint.name} failed during the stream: {_describe(exc)}"
                    exchange.tail = (
                        f"data: {json.dumps(error_body(502, 'upstream_failed', message))}\n\n".encode()
                    )
            exchange.settle_delivered()
            exchange.latency_s = time.perf_counter() - started
            return response
        finally:
            upstream.release()


@dataclass(frozen=True)
class _UsageWish:
    """What the caller asked for in `stream_options`; the gateway always asks vLLM for both."""

    final: bool
    continuous: bool


def event_object(event: bytes) -> dict[str, Any] | None:
    """The JSON object of one `data: {...}` stream event; None for any other event."""
    if not event.startswith(b"data: {"):
        return None
    try:
        chunk = json.loads(event[6:])
    except ValueError:
        return None
    return chunk if isinstance(chunk, dict) else None


def compact_event(chunk: dict[str, Any]) -> bytes:
    """A stream event carrying `chunk`, as compact as vLLM writes its own."""
    return f"data: {json.dumps(chunk, separators=(',', ':'))}\n\n".encode()


def _relay(event: bytes, wants: _UsageWish, exchange: Exchange) -> bytes:
    """Take the usage out of one event; return the event as the caller asked for it (b"": drop it)."""
    chunk = event_object(event)
    if chunk is None:
        return event
    if chunk.get("choices"):
        exchange.content_chunks += any(_has_text(c) for c in chunk["choices"] if isinstance(c, dict))
    if "usage" not in chunk:
        return event
    exchange.take_usage(chunk["usage"])
    if not chunk.get("choices"):  # the final usage chunk
        return event if wants.final else b""
    if wants.continuous:
        return event
    if wants.final:
        chunk["usage"] = None
    else:
        del chunk["usage"]
    return compact_event(chunk)


def _has_text(choice: dict[str, Any]) -> bool:
    delta = choice.get("delta")
    return bool(choice.get("text") or (isinstance(delta, dict) and delta.get("content")))


def _openai_error(endpoint: LiveEndpoint, path: str, status: int, data: bytes) -> bytes:
    """A backend's refusal in the OpenAI error shape (vLLM answers an unknown route with {"detail": ...})."""
    try:
        body = json.loads(data)
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return data
    if status == 404:
        message = (
            f"endpoint {endpoint.name} (model {endpoint.row.served_name}) does not serve {path}; "
            "ask for a model that does (GET /v1/models lists them)"
        )
        return json.dumps(error_body(404, "route_not_served", message)).encode()
    detail = body.get("detail") if isinstance(body, dict) else data[:200].decode("utf-8", "replace")
    message = f"endpoint {endpoint.name} refused the request (HTTP {status}): {detail}"
    return json.dumps(error_body(status, "upstream_refused", message)).encode()


class _TimedOut(Exception):
    """The whole request outlasted `upstream_timeout_s`. Most likely the request's own doing (a long
    generation, a huge prompt): it is not retried elsewhere, and it counts against the endpoint's
    circuit only if the endpoint also fails a health check (`on_timeout`)."""


def _overall_timeout(exc: BaseException) -> bool:
    # aiohttp's connect and socket-read time-outs are ClientErrors (the endpoint's fault); the session's
    # total time-out is a bare TimeoutError.
    return isinstance(exc, TimeoutError) and not isinstance(exc, aiohttp.ClientError)


def _failure(exc: BaseException) -> Exception:
    return _TimedOut() if _overall_timeout(exc) else _Retry(_describe(exc))


class _Retry(Exception):
    def __init__(self, reason: str, response: web.Response | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.response = response


async def _next_event(content: aiohttp.StreamReader) -> bytes | None:
    """One server-sent event (its lines and the blank line after them), or None at the end."""
    lines: list[bytes] = []
    while True:
        line = await content.readline()
        if not line:
            return b"".join(lines) if lines else None
        if line in (b"\n", b"\r\n"):
            if lines:
                lines.append(line)
                return b"".join(lines)
            continue
        lines.append(line)


def _passthrough(status: int, data: bytes, headers: dict[str, str]) -> web.Response:
    return web.Response(body=data, status=status, headers={**headers, **JSON_HEADERS})


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
