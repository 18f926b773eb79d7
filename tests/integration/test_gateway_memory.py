"""Request bodies held at once are bounded over all requests, not only one by one (issue 12, defect 4):
beyond `limits.max_inflight_body_bytes` a request is a 503 with Retry-After, and the bytes come back
when answers leave."""

from __future__ import annotations

import asyncio

import aiohttp
import yaml

from hpcrag.serve.registry import Registry
from tests.integration.gateway_helpers import HPCRAG, free_port, gateway_env, hpcrag, row, running, stub

MIB = 1024 * 1024


def test_bodies_in_flight_are_bounded(tmp_path) -> None:
    env = gateway_env(tmp_path)
    settings_path = tmp_path / "site configs" / "gateway.yaml"
    settings = yaml.safe_load(settings_path.read_text())
    settings["limits"] = {"max_body_bytes": MIB, "max_inflight_body_bytes": 3 * MIB // 2}
    settings_path.write_text(yaml.safe_dump(settings, sort_keys=False))
    backend, port = free_port(), free_port()
    Registry(env["HPCRAG_REGISTRY"]).add(row("nyc", "1", "s", "small", backend, 0.45))
    key = hpcrag(env, "gateway", "keys", "add", "big").strip()
    url = f"http://127.0.0.1:{port}"
    text = "x " * (350 * 1024)  # a 0.7 MB body: two fit in 1.5 MiB, a third does not
    body = {"model": "tier-s", "messages": [{"role": "user", "content": text}]}

    async def three_at_once() -> list[tuple[int, str | None]]:
        headers = {"Authorization": f"Bearer {key}"}
        async with aiohttp.ClientSession() as session:

            async def one(delay: float) -> tuple[int, str | None]:
                await asyncio.sleep(delay)
                async with session.post(url + "/v1/chat/completions", json=body, headers=headers) as answer:
                    data = await answer.read()
                    assert answer.status in (200, 503), data[:300]
                    return answer.status, answer.headers.get("Retry-After")

            held = await asyncio.gather(one(0), one(0), one(0.5))
            again = await one(0)  # the first two answered: their bytes are free again
            return [*held, again]

    with (
        running(stub(backend, "small", "--delay-ms", "1500"), env, f"http://127.0.0.1:{backend}/health",
                tmp_path / "s.log"),
        running([HPCRAG, "gateway", "serve", "--port", str(port)], env, f"{url}/health", tmp_path / "gw.log"),
    ):  # fmt: skip
        results = asyncio.run(three_at_once())
    assert results == [(200, None), (200, None), (503, "1"), (200, None)]
