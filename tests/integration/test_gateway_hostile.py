"""Issue 12's defects against a real gateway process: each one reproduced as it was reported."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import httpx
import openai
import pytest

from tests.integration.gateway_helpers import hpcrag, metric, stub_world
from tests.integration.helpers import eventually
from tests.integration.test_gateway_http import client, ledger_rows, metrics


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    with stub_world(tmp_path_factory.mktemp("hostile")) as found:
        yield found


CHAT = "/v1/chat/completions"


def post(world, body: object, key: str = "alice", **headers: str) -> httpx.Response:
    auth = {"Authorization": f"Bearer {world['keys'].get(key, key)}", **headers}
    # ASCII JSON: a lone surrogate travels as the escape \ud800, as any JSON client may send it.
    content = json.dumps(body).encode()
    return httpx.post(world["url"] + CHAT, content=content, headers=auth, timeout=30)


def test_a_lone_surrogate_neither_stops_the_ledger_nor_key_refreshes(world) -> None:
    before = len(ledger_rows(world))
    answer = post(world, {"model": "\ud800", "messages": [{"role": "user", "content": "hi"}]})
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "invalid_unicode"
    assert post(world, {"model": "tier-s", "messages": [{"role": "user", "content": "x"}]}).status_code == 200
    assert len(ledger_rows(world)) == before + 2
    # Key refreshes still run: a new key works, a revoked one stops working.
    fresh = hpcrag(world["env"], "gateway", "keys", "add", "fresh").strip()
    eventually(lambda: post(world, {"model": "tier-s", "messages": [{"role": "user", "content": "y"}]}, fresh)
               .status_code == 200, 10, "the new key accepted")  # fmt: skip
    hpcrag(world["env"], "gateway", "keys", "revoke", "fresh")
    eventually(lambda: post(world, {"model": "tier-s", "messages": [{"role": "user", "content": "y"}]}, fresh)
               .status_code == 401, 10, "the revoked key refused")  # fmt: skip
    text = metrics(world)
    assert metric(text, "hpcrag_ledger_writer_up") == 1 and metric(text, "hpcrag_ledger_rows_dropped") == 0


def test_a_five_megabyte_model_name_is_refused_short_and_stored_short(world) -> None:
    answer = post(world, {"model": "m" * 5_000_000, "messages": [{"role": "user", "content": "hi"}]})
    assert answer.status_code == 400 and len(answer.content) < 1000
    assert "m" * 41 not in answer.text
    (row,) = [r for r in ledger_rows(world) if r["request_id"] == answer.headers["X-Hpcrag-Request-Id"]]
    assert len(row["model"]) < 600


def test_huge_bodies_are_refused_unread_and_do_not_open_circuits(world) -> None:
    key = world["keys"]["alice"]

    async def send_many() -> list[tuple[int, float]]:
        payload = (
            b'{"model": "tier-s", "messages": [{"role": "user", "content": "' + b"x" * (60 << 20) + b'"}]}'
        )
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:

            async def one() -> tuple[int, float]:
                started = time.monotonic()
                try:
                    async with session.post(world["url"] + CHAT, data=payload, headers=headers) as answer:
                        await answer.read()
                        return answer.status, time.monotonic() - started
                except aiohttp.ClientError:  # the gateway may close the socket before taking 60 MB
                    return 413, time.monotonic() - started

            return await asyncio.gather(*(one() for _ in range(8)))

    results = asyncio.run(send_many())
    assert {status for status, _ in results} == {413}
    text = metrics(world)
    for live in ("slurm/nyc/101", "slurm/sf/201"):  # slurm/sf/202 is dead on purpose
        assert metric(text, "hpcrag_endpoint_circuit_open", endpoint=live) == 0
    assert (
        post(world, {"model": "tier-s", "messages": [{"role": "user", "content": "hi"}]}).status_code == 200
    )


@pytest.mark.parametrize(
    "body, field",
    [
        ({"model": "tier-s", "messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]},
         "messages[0].content[0].text"),
        ({"model": "tier-s", "messages": [{"role": "user", "content": "hi"}], "stream_options": "x"},
         "stream_options"),
        ({"model": "tier-s", "messages": [{"role": "user", "content": "hi"}], "max_tokens": True},
         "max_tokens"),
    ],
)  # fmt: skip
def test_wrong_shapes_are_400_with_the_field(world, body, field) -> None:
    answer = post(world, body)
    assert answer.status_code == 400, answer.text
    assert f"'{field}'" in answer.json()["error"]["message"]


def test_deep_nesting_and_nan_headers_are_400(world) -> None:
    deep = b'{"model": "tier-s", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    headers = {"Authorization": f"Bearer {world['keys']['alice']}", "Content-Type": "application/json"}
    answer = httpx.post(world["url"] + CHAT, content=deep, headers=headers)
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "too_deep"
    nan = post(world, {"model": "tier-s", "messages": [{"role": "user", "content": "hi"}]},
               **{"X-Hpcrag-Max-Ttft-Ms": "nan"})  # fmt: skip
    assert nan.status_code == 400 and "X-Hpcrag-Max-Ttft-Ms" in nan.json()["error"]["message"]


def test_lower_case_bearer_and_models_retrieve(world) -> None:
    key = world["keys"]["alice"]
    answer = httpx.get(world["url"] + "/v1/models", headers={"Authorization": f"bearer {key}"})
    assert answer.status_code == 200
    assert client(world).models.retrieve("tier-s").id == "tier-s"
    with pytest.raises(openai.NotFoundError, match="no model 'gpt-5' is served now"):
        client(world).models.retrieve("gpt-5")


def test_metrics_need_their_own_token(world) -> None:
    assert httpx.get(world["url"] + "/metrics").status_code == 401
    key = world["keys"]["alice"]
    assert httpx.get(world["url"] + "/metrics", headers={"Authorization": f"Bearer {key}"}).status_code == 401


def test_an_unknown_certification_is_a_400_that_lists_the_known_ones(world) -> None:
    answer = post(world, {"model": "tier-s", "messages": [{"role": "user", "content": "hi"}]},
                  **{"X-Hpcrag-Compliance": "hipaa, x" * 100})  # fmt: skip
    assert answer.status_code == 400 and len(answer.content) < 1000
    assert "unknown certification 'x" in answer.json()["error"]["message"]
    assert "known: air-gapped, fedramp, gdpr, hipaa, pci-dss, soc2" in answer.json()["error"]["message"]


def test_an_answer_from_no_endpoint_still_carries_its_request_id(world) -> None:
    # Pinned to SF, tier S has only the dead endpoint: every attempt fails (502), or its circuit is
    # already open and the router finds no endpoint (503). Either way the answer can be traced.
    answer = post(world, {"model": "tier-s", "messages": [{"role": "user", "content": "hi"}]},
                  **{"X-Hpcrag-Site": "sf"})  # fmt: skip
    assert answer.status_code in (502, 503), answer.text
    request_id = answer.headers["X-Hpcrag-Request-Id"]
    assert any(r["request_id"] == request_id for r in ledger_rows(world))
