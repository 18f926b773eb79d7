"""Run the gateway until SIGTERM or SIGINT, on uvloop where it is installed.

It reports the address it really listens on (port 0 asks the system for a free one), over HTTPS when
given a certificate (`tls`: then plain HTTP is not spoken at all, and with a client CA every client
must present a certificate it signed), with /metrics also on a listener of its own when
`metrics_listen` is set; no log line it writes holds a credential (`hpcrag.util.redact`).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import ssl
from collections.abc import Callable

from aiohttp import web

from hpcrag.config import Config
from hpcrag.config.schema import ListenerTls
from hpcrag.errors import HpcragError
from hpcrag.gateway.app import STATE, create_app, create_metrics_app
from hpcrag.util import redact
from hpcrag.util.http_server import protocol_logger
from hpcrag.util.tls import server_context


async def _serve(
    config: Config, host: str, port: int, tls: ListenerTls | None, ready: Callable[[str], None]
) -> None:
    ssl_context = None
    if tls is not None:
        ssl_context = server_context(
            config.resolve_path(tls.cert),
            config.resolve_path(tls.key),
            None if tls.client_ca is None else config.resolve_path(tls.client_ca),
        )
    app = create_app(config)
    runners = [web.AppRunner(app, access_log=None, handle_signals=False, logger=protocol_logger())]
    await runners[0].setup()
    try:
        await _listen(runners[0], host, port, "--port", ssl_context)
        if config.gateway.metrics_listen is not None:
            metrics_host, _, metrics_port = config.gateway.metrics_listen.rpartition(":")
            runners.append(
                web.AppRunner(create_metrics_app(app[STATE]), access_log=None, handle_signals=False)
            )
            await runners[1].setup()
            await _listen(runners[1], metrics_host.strip("[]"), int(metrics_port), "metrics_listen", None)
    except HpcragError:
        for runner in runners:
            await runner.cleanup()
        raise
    # Everything loaded so far lives as long as the process: keep it out of the collector's full passes,
    # which otherwise pause requests (the p99) as the heap grows.
    gc.freeze()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    bound = runners[0].addresses[0][1]
    scheme = "https" if ssl_context is not None else "http"
    ready(f"{scheme}://{f'[{host}]' if ':' in host else host}:{bound}")
    await stop.wait()
    for runner in runners:
        await runner.cleanup()


async def _listen(
    runner: web.AppRunner, host: str, port: int, setting: str, ssl_context: ssl.SSLContext | None
) -> None:
    site = web.TCPSite(runner, host, port, backlog=2048, reuse_address=True, ssl_context=ssl_context)
    try:
        await site.start()
    except OSError as exc:
        raise HpcragError(f"cannot listen on {host}:{port}: {exc.strerror}; pick another {setting}") from None


def serve(
    config: Config, host: str, port: int, ready: Callable[[str], None], tls: ListenerTls | None = None
) -> None:
    """Serve until SIGTERM; `tls` (else gateway.yaml's `tls`) turns on HTTPS."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    redact.install()
    tls = tls or config.gateway.tls
    try:
        import uvloop
    except ImportError:
        asyncio.run(_serve(config, host, port, tls, ready))
    else:
        uvloop.run(_serve(config, host, port, tls, ready))
