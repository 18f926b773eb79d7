"""The gateway over real HTTP with stub OpenAI backends (no vLLM, no Slurm): the official openai client,
routing, streaming, refusals, retries and the circuit breaker, the ledger and the cost report."""

from __future__ import annotations

import json
import sys

import httpx
import openai
import pytest

from hpcrag.serve.registry import Registry
from tests.integration.gateway_helpers import (
    METRICS_TOKEN,
    free_port,
    hpcrag,
    metric,
    row,
    running,
    stub,
    stub_world,
)
from tests.integration.helpers import REPO, eventually, job_state
from tests.unit.gateway.test_complexity import ANALYTICAL


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    with stub_world(tmp_path_factory.mktemp("gateway")) as found:
        yield found


def client(world, key: str = "alice") -> openai.OpenAI:
    return openai.OpenAI(base_url=world["url"] + "/v1", api_key=world["keys"].get(key, key), max_retries=0)


def metrics(world) -> str:
    answer = httpx.get(world["url"] + "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert answer.status_code == 200, answer.text
    return answer.text


def test_a_dead_endpoint_is_retried_then_circuited_then_probed_back(world) -> None:
    c = client(world)
    for _ in range(4):
        answer = c.chat.completions.with_raw_response.create(
            model="tier-s", messages=[{"role": "user", "content": "hi"}]
        )
        assert answer.status_code == 200
        assert answer.headers["x-hpcrag-endpoint"] == "slurm/nyc/101"  # the live one, after a retry
    text = metrics(world)
    assert metric(text, "hpcrag_endpoint_circuit_open", endpoint="slurm/sf/202") == 1
    assert metric(text, "hpcrag_routing_fallbacks_total", kind="retry") == 3  # the 4th skipped it
    records = json.loads(hpcrag(world["env"], "gateway", "log", "--last", "4", "--json"))
    assert [r["attempts"] for r in records] == [2, 2, 2, 1]
    assert "ClientConnectorError" in records[0]["decision"]["attempts"][0]["error"]
    # The endpoint comes back on its port: /health probes close the circuit and it takes requests.
    port = world["ports"]["dead"]
    with running(
        stub(port, "small"), world["env"], f"http://127.0.0.1:{port}/health", world["tmp"] / "d.log"
    ):
        eventually(
            lambda: metric(metrics(world), "hpcrag_endpoint_circuit_open", endpoint="slurm/sf/202") == 0,
            15,
            "circuit closed",
        )
        answer = c.chat.completions.with_raw_response.create(
            model="tier-s", messages=[{"role": "user", "content": "hi"}]
        )
        assert answer.headers["x-hpcrag-endpoint"] == "slurm/sf/202"


def test_auto_routes_by_complexity(world) -> None:
    c = client(world)
    short = c.chat.completions.with_raw_response.create(
        model="auto",
        messages=[{"role": "user", "content": "What is 2+2?"}],
        extra_headers={"X-Hpcrag-Site": "nyc"},
    )
    assert short.headers["x-hpcrag-tier"] == "s"
    long = c.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": ANALYTICAL}]
    )
    assert long.headers["x-hpcrag-tier"] == "m"
    assert long.parse().model == "medium"
    decision = json.loads(hpcrag(world["env"], "gateway", "log", "--last", "1", "--json"))[0]["decision"]
    assert decision["wanted_tier"] == "xl" and decision["fallback"] is True
    assert decision["candidates"][0]["endpoint"] == "slurm/sf/201"


def test_streams_completions_embeddings_and_models(world) -> None:
    c = client(world)
    chunks = list(
        c.chat.completions.create(model="tier-m", messages=[{"role": "user", "content": "hi"}], stream=True)
    )
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks).split() == [
        "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"
    ]  # fmt: skip
    assert all(ch.choices for ch in chunks)  # the usage chunk the gateway asked for is not passed on
    with_usage = list(
        c.chat.completions.create(
            model="tier-m", messages=[{"role": "user", "content": "hi"}], stream=True,
            stream_options={"include_usage": True},
        )
    )  # fmt: skip
    assert with_usage[-1].usage.completion_tokens == 8 and not with_usage[-1].choices
    assert (
        c.completions.create(model="medium", prompt="hello", max_tokens=3).choices[0].text
        == "alpha bravo charlie"
    )
    assert len(c.embeddings.create(model="tier-s", input=["a", "b"]).data) == 2
    assert {m.id for m in c.models.list()} == {"small", "medium", "tier-s", "tier-m", "auto"}


def test_refusals_say_why(world) -> None:
    with pytest.raises(openai.AuthenticationError, match="unknown or revoked API key"):
        client(world, "hpc-not-a-key").models.list()
    missing = httpx.post(world["url"] + "/v1/chat/completions", json={"model": "auto"})
    assert missing.status_code == 401 and "Authorization: Bearer" in missing.json()["error"]["message"]
    poor = client(world, "poor")
    poor.chat.completions.create(model="tier-s", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.RateLimitError, match=r"daily budget of key 'poor' \(\$0.0000001\) is spent"):
        poor.chat.completions.create(model="tier-s", messages=[{"role": "user", "content": "hi"}])
    bot = client(world, "bot")
    bot.chat.completions.create(model="tier-s", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.RateLimitError, match=r"limited to 0.2 requests/s"):
        bot.chat.completions.create(model="tier-s", messages=[{"role": "user", "content": "hi"}])
    c = client(world)
    with pytest.raises(openai.NotFoundError, match="model 'gpt-5' is not served here; served: medium, small"):
        c.chat.completions.create(model="gpt-5", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.InternalServerError, match="tiers tried: l"):
        c.chat.completions.create(model="tier-l", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="unknown site 'paris'"):
        c.chat.completions.create(
            model="auto",
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"X-Hpcrag-Site": "paris"},
        )
    with pytest.raises(
        openai.BadRequestError, match=r"'max_tokens' should be greater than or equal to 1 \(got 0\)"
    ):
        c.chat.completions.create(model="auto", messages=[{"role": "user", "content": "hi"}], max_tokens=0)
    bad = httpx.post(
        world["url"] + "/v1/chat/completions", content=b"{not json",
        headers={"Authorization": f"Bearer {world['keys']['alice']}"},
    )  # fmt: skip
    assert bad.status_code == 400 and "not valid JSON" in bad.json()["error"]["message"]
    text = metrics(world)
    assert metric(text, "hpcrag_budget_rejections_total", key="poor") == 1
    assert metric(text, "hpcrag_access_rejections_total", reason="rate_limited") == 1


def test_cost_report_adds_up_to_the_ledger(world) -> None:
    c = client(world)
    usage = [
        c.chat.completions.create(model="tier-s", messages=[{"role": "user", "content": "x" * n}]).usage
        for n in (10, 100, 1000)
    ]
    report = json.loads(hpcrag(world["env"], "cost", "report", "--since", "1h", "--by", "key", "--json"))
    records = json.loads(hpcrag(world["env"], "gateway", "log", "--last", "1000", "--json"))
    answered = [r for r in records if r["endpoint"]]
    by_key = {g["name"]: g for g in report["groups"]}
    for key in {r["key"] for r in answered}:
        mine = [r for r in answered if r["key"] == key]
        assert by_key[key]["requests"] == len(mine)
        assert by_key[key]["tokens"] == sum(r["prompt_tokens"] + r["completion_tokens"] for r in mine)
        assert by_key[key]["charged_usd"] == pytest.approx(sum(r["usd"] for r in mine))
    last_three = answered[-3:]
    assert [r["prompt_tokens"] for r in last_three] == [u.prompt_tokens for u in usage]
    for r in last_three:
        assert r["usd"] == pytest.approx((r["prompt_tokens"] + r["completion_tokens"]) * r["usd_per_token"])
    text = metrics(world)
    assert metric(text, "hpcrag_cost_usd_total") == pytest.approx(sum(r["usd"] for r in answered))


def test_gateway_sbatch_template_serves_as_a_slurm_job(world, nyc, tmp_path) -> None:
    port = free_port()
    env = {**world["env"], "GATEWAY_PORT": str(port), "HPCRAG_PYTHON": sys.executable}
    exports = ",".join(["ALL", *(f"{k}={v}" for k, v in env.items())])
    log = tmp_path / "gateway job.out"
    job_id = nyc.sbatch(
        "--parsable", "--partition=tier-m", "--time=10", f"--output={log}", f"--export={exports}",
        str(REPO / "slurm" / "gateway.sbatch"),
    ).strip().split(";")[0]  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        eventually(lambda: _up(url), 60, "the gateway job answering /health")
        c = openai.OpenAI(base_url=url + "/v1", api_key=world["keys"]["alice"], max_retries=0)
        reply = c.chat.completions.with_raw_response.create(
            model="tier-m", messages=[{"role": "user", "content": "hi"}]
        )
        assert reply.status_code == 200
        assert f"hpcrag gateway: job {job_id} serves http://" in log.read_text()
    finally:
        nyc.scancel(job_id)
    eventually(lambda: job_state(nyc, job_id) == "", 60, "the gateway job gone")
    request_id = reply.headers["x-hpcrag-request-id"]
    records = json.loads(hpcrag(world["env"], "gateway", "log", "--last", "50", "--json"))
    assert any(r["request_id"] == request_id for r in records)  # written before the job ended


def ledger_rows(world) -> list[dict]:
    return json.loads(hpcrag(world["env"], "gateway", "log", "--last", "1000", "--json"))


def _up(url: str) -> bool:
    try:
        return httpx.get(url + "/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_a_stream_cut_short_upstream_ends_with_an_error_event(world) -> None:
    port = free_port()
    registry = Registry(world["env"]["HPCRAG_REGISTRY"])
    registry.add(row("sf", "301", "xl", "frontier", port, 6.80))
    try:
        with running(
            stub(port, "frontier", "--cut-after", "3"),
            world["env"],
            f"http://127.0.0.1:{port}/health",
            world["tmp"] / "x.log",
        ):
            eventually(lambda: "tier-xl" in {m.id for m in client(world).models.list()}, 15, "tier xl listed")
            received = []
            with pytest.raises(openai.APIError, match="slurm/sf/301 failed during the stream"):
                for chunk in client(world).chat.completions.create(
                    model="tier-xl", messages=[{"role": "user", "content": "hi"}], stream=True
                ):
                    received.append(chunk.choices[0].delta.content)
            assert received == ["alpha ", "bravo ", "charlie "]
            text = metrics(world)
            assert metric(text, "hpcrag_gateway_requests_total", tier="xl", status="502") == 1
            (cut,) = [r for r in ledger_rows(world) if r["tier"] == "xl"]
            assert cut["completion_tokens"] == 3  # what was delivered, from the per-chunk usage
    finally:
        registry.update("slurm", "sf", "301", state="stopped")
