"""The gateway in front of real vLLM servers (CPU build, tiny local model) launched on the local clusters.

Three servers at once: tier S at NYC and tier M at SF through `serve up` (Slurm jobs), and a third tier
S server started by hand on a fixed port and registered as a CoreWeave endpoint (no cloud is reachable
here; its fixed port lets it come back where the gateway's circuit breaker looks for it). The official
openai client talks to `hpcrag gateway serve` only. The kill test stops the hand-made server during a
run of concurrent requests; the cost test compares `hpcrag cost report` with the ledger and sacct.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from hpcrag.config import load_config
from hpcrag.serve import launcher
from hpcrag.serve.registry import Endpoint
from hpcrag.slurm.target import SlurmTarget
from tests.conftest import CONFIG_DIR, REPO
from tests.integration.gateway_helpers import (
    HPCRAG,
    free_port,
    hpcrag,
    metric,
    quick_gateway_settings,
    running,
)
from tests.integration.helpers import eventually
from tests.unit.gateway.test_complexity import ANALYTICAL

pytestmark = pytest.mark.integration
START_TIMEOUT = 480.0
CLOUD = "coreweave/lga1/by-hand"


def start_vllm(port: int, log: Path) -> subprocess.Popen:
    args = [
        str(REPO / ".venv-vllm/bin/python"), "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(REPO / ".run/tiny-llama"), "--served-model-name", "tiny-llama",
        "--dtype", "float32", "--max-model-len", "256", "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": "1"}
    with open(log, "ab") as out:
        return subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def world(tmp_path_factory, dev_cluster):
    if not (REPO / ".venv-vllm/bin/python").exists() or not (REPO / ".run/tiny-llama/config.json").exists():
        pytest.fail(
            "the vLLM environment is missing: run scripts/setup (it makes .venv-vllm and .run/tiny-llama)"
        )
    tmp = tmp_path_factory.mktemp("gateway-vllm")
    config_dir = tmp / "site configs"
    shutil.copytree(CONFIG_DIR, config_dir)
    quick_gateway_settings(config_dir)
    # The copy lives elsewhere: the dev profile's repository-relative vLLM paths become absolute.
    profile = config_dir / "profiles" / "dev.yaml"
    profile.write_text(
        profile.read_text()
        .replace(".venv-vllm/bin/python", str(REPO / ".venv-vllm/bin/python"))
        .replace(".run/tiny-llama", str(REPO / ".run/tiny-llama"))
    )
    env = {
        "HPCRAG_CONFIG_DIR": str(config_dir),
        "HPCRAG_PROFILE": "dev",
        "HPCRAG_REGISTRY": str(tmp / "serving.sqlite"),
        "HPCRAG_GATEWAY_DB": str(tmp / "gateway.sqlite"),
        "HPCRAG_METRICS_TOKEN": METRICS_TOKEN,
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    config = load_config(config_dir, "dev")
    registry = launcher.registry_of(config)
    cloud_port, gateway_port = free_port(), free_port()
    cloud_url = f"http://127.0.0.1:{cloud_port}"
    processes: dict[str, subprocess.Popen] = {}
    try:
        (small,) = launcher.up(config, "nyc", "s", priority="development")
        (medium,) = launcher.up(config, "sf", "m")
        processes["cloud"] = start_vllm(cloud_port, tmp / "cloud-vllm.log")
        small, medium = launcher.wait_healthy(config, [small, medium], START_TIMEOUT)
        eventually(lambda: healthy(cloud_url), START_TIMEOUT, "the hand-started vLLM healthy")
        # Far cheaper per hour than the on-prem server: the router (key of user tier "free", which weighs
        # cost most) sends tier S here first, whatever throughput it has measured for each.
        registry.add(
            Endpoint(
                provider="coreweave", site="lga1", job_id="by-hand", tier="s", model="tiny-llama",
                served_name="tiny-llama", state="healthy", gpu_type="l40s", gpus=1, url=cloud_url,
                usd_per_hour=0.01, started_at=time.time(), healthy_at=time.time(),
            )
        )  # fmt: skip
        keys = {
            "alice": hpcrag(env, "gateway", "keys", "add", "alice", "--user-tier", "free").strip(),
            "poor": hpcrag(env, "gateway", "keys", "add", "poor", "--budget-usd", "0").strip(),
        }
        url = f"http://127.0.0.1:{gateway_port}"
        with running(
            [HPCRAG, "gateway", "serve", "--port", str(gateway_port)], env, f"{url}/health", tmp / "gw.log"
        ):
            eventually(lambda: httpx.get(f"{url}/health").json()["endpoints"] == 3, 30, "3 endpoints")
            yield {
                "config": config, "env": env, "url": url, "keys": keys, "small": small, "medium": medium,
                "cloud_port": cloud_port, "cloud_url": cloud_url, "processes": processes, "tmp": tmp,
            }  # fmt: skip
    finally:
        for process in processes.values():
            kill_group(process)
        for endpoint in registry.find(provider="slurm"):
            SlurmTarget.for_site(config.site(endpoint.site)).scancel(endpoint.job_id)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


METRICS_TOKEN = "metrics-token-for-tests"


def client(world, key: str = "alice") -> openai.OpenAI:
    return openai.OpenAI(
        base_url=world["url"] + "/v1", api_key=world["keys"].get(key, key), max_retries=0, timeout=120
    )


def metrics(world) -> str:
    return httpx.get(world["url"] + "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}).text


def test_openai_client_through_the_gateway(world) -> None:
    c = client(world)
    short = c.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "What is 2+2?"}], max_tokens=8
    )
    assert short.status_code == 200 and short.headers["x-hpcrag-tier"] == "s"
    reply = short.parse()
    assert reply.usage.completion_tokens == 8 and reply.choices[0].message.content
    analytical = c.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": ANALYTICAL}], max_tokens=8
    )
    assert analytical.headers["x-hpcrag-tier"] == "m"
    assert analytical.headers["x-hpcrag-endpoint"] == f"slurm/sf/{world['medium'].job_id}"
    chunks = list(
        c.chat.completions.create(
            model="tier-m", messages=[{"role": "user", "content": "hello"}], max_tokens=6, stream=True
        )
    )
    assert len(chunks) >= 6 and all(ch.choices for ch in chunks)
    completion = c.completions.with_raw_response.create(
        model="tiny-llama", prompt="a slurm job is", max_tokens=5
    )
    usage = completion.parse().usage
    assert usage.completion_tokens == 5
    records = json.loads(hpcrag(world["env"], "gateway", "log", "--last", "10", "--json"))
    (row,) = [r for r in records if r["request_id"] == completion.headers["x-hpcrag-request-id"]]
    assert (row["prompt_tokens"], row["completion_tokens"]) == (usage.prompt_tokens, usage.completion_tokens)
    assert row["usd"] == pytest.approx(usage.total_tokens * row["usd_per_token"]) and row["usd"] > 0
    assert {"tiny-llama", "tier-s", "tier-m", "auto"} <= {m.id for m in c.models.list()}
    # vLLM refuses embeddings for a generative model: its 4xx passes through, not retried elsewhere.
    with pytest.raises(openai.APIStatusError) as refused:
        c.embeddings.create(model="tier-s", input="a")
    assert 400 <= refused.value.status_code < 500
    with pytest.raises(openai.AuthenticationError, match="unknown or revoked API key"):
        client(world, "hpc-wrong").chat.completions.create(
            model="auto", messages=[{"role": "user", "content": "x"}]
        )
    with pytest.raises(openai.RateLimitError, match="daily budget of key 'poor'"):
        client(world, "poor").chat.completions.create(
            model="auto", messages=[{"role": "user", "content": "x"}]
        )


def test_the_servers_behind_the_gateway_answer_no_one_else(world) -> None:
    """The gateway reached the on-prem servers above with their keys; without the key nothing answers."""
    registry = launcher.registry_of(world["config"])
    for server in (registry.get(world["small"].id), registry.get(world["medium"].id)):
        assert server.secret and server.url.startswith("http://")
        body = {"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        for path in ("/v1/chat/completions", "/invocations"):
            assert httpx.post(server.url + path, json=body, timeout=30).status_code == 401, path
        keyed = httpx.get(server.url + "/v1/models", headers={"Authorization": f"Bearer {server.secret}"})
        assert keyed.status_code == 200 and keyed.json()["data"][0]["id"] == "tiny-llama"


def test_killing_a_backend_fails_no_request_that_had_not_started(world) -> None:
    c = client(world)
    results: list[dict[str, object]] = []
    lock = threading.Lock()
    stop_at = [time.monotonic() + 600]
    streamed = threading.Event()

    def worker(index: int) -> None:
        stream = index % 2 == 0
        messages = [{"role": "user", "content": f"tell me about slurm number {index}"}]
        options = {
            "model": "tier-s",
            "messages": messages,
            "max_tokens": 24,
            "extra_body": {"ignore_eos": True},
        }
        while time.monotonic() < stop_at[0]:
            outcome: dict[str, object] = {"stream": stream, "chunks": 0, "error": None, "endpoint": None}
            try:
                if stream:
                    response = c.chat.completions.with_raw_response.create(stream=True, **options)
                    outcome["endpoint"] = response.headers["x-hpcrag-endpoint"]
                    for _ in response.parse():
                        outcome["chunks"] = int(outcome["chunks"]) + 1
                        streamed.set()
                else:
                    response = c.chat.completions.with_raw_response.create(**options)
                    outcome["endpoint"] = response.headers["x-hpcrag-endpoint"]
                    outcome["tokens"] = response.parse().usage.completion_tokens
            except Exception as exc:  # every failure is a result to judge, not a dead thread
                outcome["error"] = f"{type(exc).__name__}: {exc}"
            with lock:
                results.append(outcome)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    assert streamed.wait(120), "no stream started"
    kill_group(world["processes"]["cloud"])
    stop_at[0] = time.monotonic() + 8
    for thread in threads:
        thread.join(timeout=300)
    failed = [r for r in results if r["error"]]
    served = {e: sum(r["endpoint"] == e for r in results) for e in {r["endpoint"] for r in results}}
    print(f"{len(results)} requests, {len(failed)} failed after their first chunk, by endpoint: {served}")
    assert all(r["stream"] and r["chunks"] > 0 for r in failed), failed
    answered = [r for r in results if not r["error"]]
    assert len(answered) >= 8
    assert all(r["tokens"] == 24 for r in answered if not r["stream"])
    assert all(r["chunks"] > 0 for r in answered if r["stream"])  # vLLM may put several tokens in one chunk
    # The ledger shows the moves: requests that the cheaper cloud endpoint had not started answering
    # when it died were retried on the on-prem one and answered there.
    records = json.loads(hpcrag(world["env"], "gateway", "log", "--last", str(len(results)), "--json"))
    moved = [r for r in records if r["attempts"] >= 2 and r["decision"]["attempts"][0]["endpoint"] == CLOUD]
    assert moved and all(r["status"] == 200 and r["site"] == "nyc" for r in moved)
    assert {r["completion_tokens"] for r in records if r["status"] == 200} == {24}  # streams too, from usage
    assert all(r["decision"]["attempts"][0]["error"] for r in moved)
    text = metrics(world)
    assert metric(text, "hpcrag_endpoint_circuit_open", endpoint=CLOUD) == 1
    assert metric(text, "hpcrag_routing_fallbacks_total", kind="retry") >= 1
    # It comes back on the same port: /health probes close the circuit and it takes requests again.
    world["processes"]["cloud"] = start_vllm(world["cloud_port"], world["tmp"] / "cloud-vllm.log")
    eventually(lambda: healthy(world["cloud_url"]), START_TIMEOUT, "the hand-started vLLM back")
    eventually(
        lambda: metric(metrics(world), "hpcrag_endpoint_circuit_open", endpoint=CLOUD) == 0,
        30,
        "circuit closed",
    )
    again = c.chat.completions.with_raw_response.create(
        model="tier-s", messages=[{"role": "user", "content": "back?"}], max_tokens=4,
        extra_headers={"X-Hpcrag-Provider": "coreweave"},
    )  # fmt: skip
    assert again.status_code == 200 and again.headers["x-hpcrag-endpoint"] == CLOUD


def sacct_gpu_hours(config, site: str, job_id: str) -> float:
    text = SlurmTarget.for_site(config.site(site)).sacct(
        "-X", "-D", "-n", "-P", "-o", "ElapsedRaw,AllocTRES", f"--jobs={job_id}"
    )
    total = 0.0
    for line in text.splitlines():
        elapsed, tres = line.split("|")
        gpus = int(next(p.split("=")[1] for p in tres.split(",") if p.startswith("gres/gpu=")))
        total += int(elapsed) * gpus / 3600
    return total


def test_cost_report_matches_ledger_and_sacct(world) -> None:
    config = world["config"]
    launcher.down(config, [world["small"], world["medium"]])
    for endpoint in (world["small"], world["medium"]):
        target = SlurmTarget.for_site(config.site(endpoint.site))
        eventually(
            lambda t=target, e=endpoint: (
                "Unknown" not in t.sacct("-X", "-D", "-n", "-P", "-o", "End", f"--jobs={e.job_id}")
            ),
            60,
            f"job {endpoint.job_id} ended in sacct",
        )
    report = json.loads(hpcrag(world["env"], "cost", "report", "--since", "2h", "--by", "tier", "--json"))
    records = [
        r
        for r in json.loads(hpcrag(world["env"], "gateway", "log", "--last", "10000", "--json"))
        if r["endpoint"]
    ]
    groups = {g["name"]: g for g in report["groups"]}
    for tier in ("s", "m"):
        mine = [r for r in records if r["tier"] == tier]
        assert groups[tier]["requests"] == len(mine)
        assert groups[tier]["tokens"] == sum(r["prompt_tokens"] + r["completion_tokens"] for r in mine) > 0
        assert groups[tier]["charged_usd"] == pytest.approx(sum(r["usd"] for r in mine))
    jobs = {j["job_id"]: j for j in report["jobs"]}
    for endpoint in (world["small"], world["medium"]):
        job = jobs[endpoint.job_id]
        expected = sacct_gpu_hours(config, endpoint.site, endpoint.job_id)
        assert job["gpu_hours"] == pytest.approx(expected, abs=1e-9) and expected > 0
        price = config.site(endpoint.site).gpu_price_usd_per_hour[endpoint.gpu_type]
        assert job["usd"] == pytest.approx(expected * price)
    cloud = jobs["by-hand"]
    assert cloud["source"] == "registry" and cloud["usd"] == pytest.approx(cloud["gpu_hours"] * 0.01)
    s_jobs = [j for j in report["jobs"] if j["tier"] == "s"]
    assert groups["s"]["gpu_hours"] == pytest.approx(sum(j["gpu_hours"] for j in s_jobs))
    assert groups["s"]["gpu_usd"] == pytest.approx(sum(j["usd"] for j in s_jobs))
    assert groups["s"]["usd_per_1k_tokens"] == pytest.approx(
        groups["s"]["gpu_usd"] / groups["s"]["tokens"] * 1000
    )
