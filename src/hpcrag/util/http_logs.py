"""aiohttp's per-connection log, made for services on an open network.

A client that sends a malformed request (a header line over 8 KiB, a bad Content-Length, a control
byte) or hangs up half way through its body is the client's problem: aiohttp logs each at ERROR with a
full traceback, which buries real errors. Here each is one WARNING line that says what was wrong; any
other exception keeps its traceback. Pass `protocol_logger()` as `logger=` to `web.AppRunner`.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from aiohttp.http_exceptions import HttpProcessingError

CLIENT_FAULTS = (HttpProcessingError, ConnectionError)


class _ProtocolLog(logging.LoggerAdapter):
    def exception(self, msg: object, *args: object, exc_info: Any = True, **kwargs: Any) -> None:
        error = exc_info if isinstance(exc_info, BaseException) else sys.exc_info()[1]
        if isinstance(error, CLIENT_FAULTS):
            client = args[0] if args else "a client"  # aiohttp passes the peer's address
            what = " ".join(str(error).split())
            self.logger.warning("refused a request from %s: %s: %s", client, type(error).__name__, what)
            return
        self.logger.exception(msg, *args, exc_info=exc_info, **kwargs)


def protocol_logger() -> logging.LoggerAdapter:
    return _ProtocolLog(logging.getLogger("aiohttp.server"), {})
