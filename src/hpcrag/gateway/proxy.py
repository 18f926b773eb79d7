"""Send one request to its candidate endpoints in turn until one answers; stream the answer through.

Nothing reaches the caller before an endpoint has produced its first byte, so a refused connection,
a reset before the first byte or a 5xx answer moves the request to the next candidate (up to
`attempts`) and counts against that endpoint's circuit. Once the first event of a stream has been
written the request is committed: a later failure ends the stream with an error event.

Streams pass through event by event, never buffered. The gateway asks vLLM for the usage chunk
(`stream_options.include_usage`) to count tokens, and drops that chunk again when the caller did not
ask for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from hpcrag.gateway.endpoints import LiveEndpoint

log = logging.getLogger(__name__)
JSON_HEADERS = {"Content-Type": "application/json"}
DONE = b"data: [DONE]"  # an OpenAI stream's last event; a stream without it was cut short
# What ends an attempt before anything reached the caller: connection trouble and time-outs.
UPSTREAM_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError)


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

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def take_usage(self, usage: Any) -> None:
        if isinstance(usage, dict):
            self.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            self.completion_tokens = int(usage.get("completion_tokens") or 0)


def error_body(status: int, code: str, message: str) -> dict[str, Any]:
    kinds = {400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error"}
    kind = kinds.get(status, "rate_limit_error" if status == 429 else "server_error")
    return {"error": {"message": message, "type": kind, "code": code}}


class Forwarder:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        attempts: int,
        on_failure: Callable[[LiveEndpoint, str], None],
    ) -> None:
        self.session = session
        self.attempts = attempts
        self.on_failure = on_failure

    async def forward(
        self,
        request: web.Request,
        path: str,
        body: dict[str, Any],
        candidates: list[LiveEndpoint],
        headers: dict[str, str],
        started: float,
    ) -> tuple[web.StreamResponse, Exchange]:
        exchange = Exchange()
        stream = bool(body.get("stream"))
        wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))
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
                if stream and not wants_usage:
                    upstream["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
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
                        wants_usage,
                        exchange,
                        started,
                    )
                else:
                    response = await self._once(
                        endpoint, path, payloads[name], answer_headers, exchange, started
                    )
            except asyncio.CancelledError:  # the caller went away while we waited upstream
                endpoint.end(0)
                raise
            except _Retry as retry:
                endpoint.end(0)
                exchange.attempts.append({"endpoint": endpoint.name, "error": retry.reason})
                self.on_failure(endpoint, retry.reason)
                last_error = retry.response
                continue
            completion_s = None
            if exchange.ttft_s is not None and exchange.latency_s is not None:
                completion_s = exchange.latency_s - exchange.ttft_s
            endpoint.end(exchange.tokens, exchange.ttft_s, completion_s, exchange.completion_tokens)
            if exchange.outcome == "upstream_failed_mid_stream":
                self.on_failure(endpoint, "connection lost during the stream")
            else:
                endpoint.circuit.success()
            exchange.attempts.append({"endpoint": endpoint.name, "error": ""})
            return response, exchange
        tried = "; ".join(f"{a['endpoint']}: {a['error']}" for a in exchange.attempts) or "none open"
        if last_error is not None:
            exchange.status = last_error.status
            return last_error, exchange
        exchange.status, exchange.outcome = 502, "upstream_failed"
        message = f"every endpoint tried failed before answering ({tried}); see `hpcrag serve status`"
        return web.json_response(error_body(502, "upstream_failed", message), status=502), exchange

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
            async with self.session.post(endpoint.url + path, data=payload, headers=JSON_HEADERS) as upstream:
                return await self._whole(endpoint, upstream, headers, exchange, started)
        except UPSTREAM_ERRORS as exc:
            raise _Retry(_describe(exc)) from None

    async def _whole(
        self,
        endpoint: LiveEndpoint,
        upstream: aiohttp.ClientResponse,
        headers: dict[str, str],
        exchange: Exchange,
        started: float,
    ) -> web.Response:
        """A complete answer (not streamed, or a refusal): a 5xx or a body cut short is a retry."""
        try:
            data = await upstream.read()
        except UPSTREAM_ERRORS as exc:
            raise _Retry(_describe(exc)) from None
        status = upstream.status
        if status >= 500:
            raise _Retry(f"HTTP {status}", _passthrough(status, data, headers))
        exchange.latency_s = time.perf_counter() - started
        exchange.status = status
        exchange.outcome = "ok" if status == 200 else "upstream_refused"
        if status == 200:
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
        wants_usage: bool,
        exchange: Exchange,
        started: float,
    ) -> web.StreamResponse:
        try:
            upstream = await self.session.post(endpoint.url + path, data=payload, headers=JSON_HEADERS)
        except UPSTREAM_ERRORS as exc:
            raise _Retry(_describe(exc)) from None
        try:
            if upstream.status != 200:
                return await self._whole(endpoint, upstream, headers, exchange, started)
            try:
                event = await _next_event(upstream.content)
            except UPSTREAM_ERRORS as exc:
                raise _Retry(_describe(exc)) from None
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
                done = False
                while event is not None:
                    done = event.startswith(DONE)
                    if b'"usage":{' in event or b'"usage": {' in event:
                        chunk = json.loads(event[5:])
                        exchange.take_usage(chunk.get("usage"))
                        if not wants_usage and not chunk.get("choices"):
                            event = await _next_event(upstream.content)
                            continue
                    await response.write(event)
                    event = await _next_event(upstream.content)
                if not done:  # the connection closed cleanly, but the answer is cut short
                    raise aiohttp.ClientPayloadError("the stream ended without data: [DONE]")
            except UPSTREAM_ERRORS as exc:
                if request.transport is None or request.transport.is_closing():
                    exchange.status, exchange.outcome = 499, "client_closed"
                else:
                    exchange.status, exchange.outcome = 502, "upstream_failed_mid_stream"
                    message = f"endpoint {endpoint.name} failed during the stream: {_describe(exc)}"
                    error = json.dumps(error_body(502, "upstream_failed", message))
                    with contextlib.suppress(ConnectionError):
                        await response.write(f"data: {error}\n\n".encode())
            exchange.latency_s = time.perf_counter() - started
            if response.prepared:
                with contextlib.suppress(ConnectionError):
                    await response.write_eof()
            return response
        finally:
            upstream.release()


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
