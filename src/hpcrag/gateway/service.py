"""Run the gateway until SIGTERM or SIGINT, on uvloop where it is installed.

It reports the address it really listens on (port 0 asks the system for a free one), and no log line
it writes holds a credential (`hpcrag.util.redact`).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Callable

from aiohttp import web

from hpcrag.config import Config
from hpcrag.gateway.app import create_app
from hpcrag.util import redact


async def _serve(config: Config, host: str, port: int, ready: Callable[[str], None]) -> None:
    app = create_app(config)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, backlog=2048, reuse_address=True).start()
    except OSError as exc:
        await runner.cleanup()
        from hpcrag.errors import HpcragError

        raise HpcragError(f"cannot listen on {host}:{port}: {exc.strerror}; pick another --port") from None
    # Everything loaded so far lives as long as the process: keep it out of the collector's full passes,
    # which otherwise pause requests (the p99) as the heap grows.
    gc.freeze()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    bound = runner.addresses[0][1]
    ready(f"http://{f'[{host}]' if ':' in host else host}:{bound}")
    await stop.wait()
    await runner.cleanup()


def serve(config: Config, host: str, port: int, ready: Callable[[str], None]) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    redact.install()
    try:
        import uvloop
    except ImportError:
        asyncio.run(_serve(config, host, port, ready))
    else:
        uvloop.run(_serve(config, host, port, ready))
