"""SIGKILL of the gateway under 200 concurrent clients: every request that received its last byte has
its ledger row (issue 12, defect 2), the database passes its integrity check, and a restarted gateway
serves again on the same database."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sqlite3
import time

import aiohttp

from hpcrag.serve.registry import Registry
from tests.integration.gateway_helpers import HPCRAG, free_port, hpcrag, row, running, stub

CLIENTS = 200
LOAD_S = 4.0


async def _client(url: str, key: str, stop_at: float, answered: list[str], index: int) -> None:
    """Send requests until `stop_at` or until the gateway dies; keep the ids of answers whose last
    byte arrived (the whole JSON body, or a stream's `data: [DONE]`)."""
    stream = index % 2 == 1
    body = {"model": "tier-s", "messages": [{"role": "user", "content": f"hi {index}"}], "stream": stream}
    headers = {"Authorization": f"Bearer {key}"}
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while time.monotonic() < stop_at:
            try:
                async with session.post(url + "/v1/chat/completions", json=body, headers=headers) as answer:
                    data = await answer.read()
                    complete = answer.status == 200 and (
                        data.rstrip().endswith(b"data: [DONE]") if stream else data.endswith(b"}")
                    )
                    if complete:
                        answered.append(answer.headers["X-Hpcrag-Request-Id"])
            except (TimeoutError, aiohttp.ClientError, ConnectionError):
                return


def _load_then_kill(url: str, key: str, gateway_pid: int) -> list[str]:
    answered: list[str] = []

    async def main() -> None:
        stop_at = time.monotonic() + 60
        clients = [asyncio.create_task(_client(url, key, stop_at, answered, i)) for i in range(CLIENTS)]
        await asyncio.sleep(LOAD_S)
        os.kill(gateway_pid, signal.SIGKILL)
        await asyncio.gather(*clients)

    asyncio.run(main())
    return answered


def test_sigkill_under_load_loses_no_answered_request(tmp_path) -> None:
    from tests.conftest import CONFIG_DIR

    config_dir = tmp_path / "site configs"
    shutil.copytree(CONFIG_DIR, config_dir)
    database = tmp_path / "gateway.sqlite"
    env = {
        "HPCRAG_CONFIG_DIR": str(config_dir),
        "HPCRAG_REGISTRY": str(tmp_path / "registry.sqlite"),
        "HPCRAG_GATEWAY_DB": str(database),
    }
    backend, gateway_port = free_port(), free_port()
    Registry(env["HPCRAG_REGISTRY"]).add(row("nyc", "101", "s", "small", backend, 0.45))
    key = hpcrag(env, "gateway", "keys", "add", "load").strip()
    url = f"http://127.0.0.1:{gateway_port}"
    gateway = [HPCRAG, "gateway", "serve", "--port", str(gateway_port)]
    with running(stub(backend, "small"), env, f"http://127.0.0.1:{backend}/health", tmp_path / "s.log"):
        with running(gateway, env, f"{url}/health", tmp_path / "gw.log") as process:
            answered = _load_then_kill(url, key, process.pid)
            process.wait(timeout=10)
        assert len(answered) > 200, "the load did not get going before the kill"
        with sqlite3.connect(database) as db:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            stored = {r for (r,) in db.execute("SELECT request_id FROM requests")}
        missing = [r for r in answered if r not in stored]
        print(
            f"SIGKILL under {CLIENTS} clients: {len(answered)} answered, "
            f"{len(stored)} rows, {len(missing)} missing"
        )
        assert missing == [], f"{len(missing)} of {len(answered)} answered requests have no ledger row"
        with running(gateway, env, f"{url}/health", tmp_path / "gw-again.log"):
            rows = len(stored)
            reply = asyncio.run(_one(url, key))
            assert reply == 200
            with sqlite3.connect(database) as db:
                assert db.execute("SELECT COUNT(*) FROM requests").fetchone()[0] == rows + 1


async def _one(url: str, key: str) -> int:
    body = {"model": "tier-s", "messages": [{"role": "user", "content": "again"}]}
    async with aiohttp.ClientSession() as session:
        headers = {"Authorization": f"Bearer {key}"}
        async with session.post(url + "/v1/chat/completions", json=body, headers=headers) as answer:
            await answer.read()
            return answer.status
