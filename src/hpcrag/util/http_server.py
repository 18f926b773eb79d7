"""aiohttp servers made for an open network: what a careless or hostile client sends is its problem.

- `protocol_logger()`: a client that sends a malformed request (a header line over 8 KiB, a bad
  Content-Length, a control byte) or hangs up half way through its body makes aiohttp log an ERROR with
  a full traceback, which buries real errors. Here each is one WARNING line that says what was wrong;
  any other exception keeps its traceback. Pass it as `logger=` to `web.AppRunner`.
- `add_routes(app, routes)`: every route with `expect_handler`, which answers `Expect: 100-continue`
  as aiohttp does and ignores any other expectation, as RFC 9110 allows (aiohttp's own 417 quotes the
  raw value, which need not be UTF-8, and fails with a 500).
- `bearer_token(header)`: the token of an `Authorization: Bearer` header, the scheme case-insensitive.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiohttp import HttpVersion11, web
from aiohttp.http_exceptions import HttpProcessingError

CLIENT_FAULTS = (HttpProcessingError, ConnectionError)


class _ProtocolLog(logging.LoggerAdapter):
    def exception(self, msg: object, *args: object, exc_info: Any = True, **kwargs: Any) -> None:
        error = exc_info if isinstance(exc_info, BaseException) else sys.exc_info()[1]
        if isinstance(error, CLIENT_FAULTS):
            what = " ".join(str(error).split())
            self.logger.warning("refused a request: %s: %s", type(error).__name__, what)
            return
        self.logger.exception(msg, *args, exc_info=exc_info, **kwargs)


def protocol_logger() -> logging.LoggerAdapter:
    return _ProtocolLog(logging.getLogger("aiohttp.server"), {})


async def expect_handler(request: web.Request) -> None:
    if request.version == HttpVersion11 and request.headers.get("Expect", "").lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the answer proper has not started


def bearer_token(authorization: str | None) -> str | None:
    """The token of `Authorization: Bearer TOKEN` (RFC 9110: the scheme is case-insensitive), or None."""
    scheme, _, token = (authorization or "").strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def add_routes(
    app: web.Application, routes: Iterable[tuple[str, str, Callable[[web.Request], Awaitable[Any]]]]
) -> None:
    """Add each (method, path, handler), GET ones with HEAD as aiohttp's add_get does."""
    for method, path, handler in routes:
        adder = app.router.add_get if method == "GET" else app.router.add_post
        adder(path, handler, expect_handler=expect_handler)
