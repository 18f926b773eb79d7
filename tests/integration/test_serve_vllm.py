"""Real vLLM (the CPU build, tiny local model) served as Slurm jobs at both sites, end to end.

One flow, because every vLLM start costs about a minute on two cores: two tiers through
`serve up` (NYC tier S, SF tier M) and one server submitted by hand with slurm/vllm-tier.sbatch, all
at once; the official openai client against the registered URLs; `serve down`; scancel of the hand-made
job; the time-limit signal that makes submitit requeue the SF server, which comes back; and a killed
vLLM, reported with its Slurm state and log path. A second flow serves over HTTPS and kills the
supervisor: the server answers only its per-start key, and dies with its supervisor.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import httpx
import pytest
from openai import OpenAI

from hpcrag.config import load_config
from hpcrag.gateway.endpoints import EndpointTable
from hpcrag.serve import launcher
from hpcrag.serve.client import backend_ssl_context
from hpcrag.serve.load import scrape
from hpcrag.serve.registry import Endpoint
from hpcrag.slurm.target import SlurmTarget
from tests.conftest import CONFIG_DIR, REPO
from tests.integration.helpers import eventually

pytestmark = pytest.mark.integration
START_TIMEOUT = 420.0


@pytest.fixture
def serving(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dev_cluster):
    if not (REPO / ".venv-vllm/bin/python").exists() or not (REPO / ".run/tiny-llama/config.json").exists():
        pytest.fail(
            "the vLLM environment is missing: run scripts/setup (it makes .venv-vllm and .run/tiny-llama)"
        )
    monkeypatch.setenv("HPCRAG_REGISTRY", str(tmp_path / "serving.sqlite"))
    config = load_config(CONFIG_DIR, "dev")
    yield config
    # Every job the test made, live or not: a leftover would hold GPUs that later tests count.
    for endpoint in launcher.registry_of(config).find():
        SlurmTarget.for_site(config.site(endpoint.site)).scancel(endpoint.job_id)


def _sacct_state(target: SlurmTarget, job_id: str) -> str:
    out = target.sacct("-X", "-n", "-P", "-o", "State", f"--jobs={job_id}").strip()
    return out.split()[0] if out else ""


def _row(config, endpoint_id: int):
    return next(r for r in launcher.status(config, everything=True) if r.endpoint.id == endpoint_id)


def _chat(endpoint: Endpoint, model: str, stream: bool = False, http_client=None) -> str:
    client = OpenAI(
        base_url=f"{endpoint.url}/v1", api_key=endpoint.secret, timeout=60, http_client=http_client
    )
    messages = [{"role": "user", "content": "hello world, what is a slurm job"}]
    if stream:
        chunks = client.chat.completions.create(model=model, messages=messages, max_tokens=6, stream=True)
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    reply = client.chat.completions.create(model=model, messages=messages, max_tokens=6)
    assert reply.usage is not None and reply.usage.completion_tokens == 6
    return reply.choices[0].message.content or ""


def test_tiers_at_both_sites_end_to_end(serving, nyc: SlurmTarget, sf: SlurmTarget) -> None:
    config = serving
    (small,) = launcher.up(config, "nyc", "s", priority="development")
    (medium,) = launcher.up(config, "sf", "m")
    assert (small.state, small.gpu_type, small.usd_per_hour) == ("submitted", "l40s", 0.45)
    assert small.details["priority"] == "development" and medium.details["partition"] == "tier-m"
    job = nyc.scontrol("show", "job", small.job_id)
    for field in (
        "JobName=hpcrag-vllm-s",
        "Partition=tier-s",
        "TimeLimit=04:00:00",
        "Nice=10000",
        "TresPerNode=gres:gpu:l40s:1",
    ):
        assert field in job
    assert "Nice=100 " in sf.scontrol("show", "job", medium.job_id)  # production-standard
    hand = (
        subprocess.run(
            [
                "sbatch",
                "--parsable",
                "--partition=tier-m",
                "--gres=gpu:a100:1",
                "--time=30",
                f"--output={Path(os.environ['HPCRAG_REGISTRY']).parent / 'hand-%j.out'}",
                f"--export=ALL,SITE=nyc,TIER=m,HPCRAG_PYTHON={sys.executable}",
                str(REPO / "slurm/vllm-tier.sbatch"),
            ],
            env={**os.environ, **nyc.env},
            capture_output=True,
            text=True,
            check=True,
        )
        .stdout.strip()
        .split(";")[0]
    )

    small, medium = launcher.wait_healthy(config, [small, medium], START_TIMEOUT)
    registry = launcher.registry_of(config)
    by_hand = eventually(
        lambda: next((e for e in registry.find(site="nyc", tier="m") if e.state == "healthy"), None),
        START_TIMEOUT,
        "the hand-submitted server healthy",
    )
    assert by_hand.job_id == hand and by_hand.log_path and by_hand.log_path.endswith(f"hand-{hand}.out")

    assert _chat(small, "tiny-llama")
    assert _chat(medium, "tiny-llama", stream=True)
    # The burst policy's load signal: vLLM's own queue-time histogram counted that request.
    load = scrape(small.url)
    assert load is not None and load.queue_time_count >= 1 and load.waiting == 0
    listed = OpenAI(base_url=f"{by_hand.url}/v1", api_key=by_hand.secret).models.list()
    assert [m.id for m in listed] == ["tiny-llama"]
    rows = {r.endpoint.id: r for r in launcher.status(config)}
    assert rows[small.id].slurm_state == "RUNNING" and rows[small.id].endpoint.state == "healthy"
    assert rows[small.id].endpoint.heartbeat_at is not None

    # serve down: the job is cancelled on its own cluster and the row deregistered.
    (stopped,) = launcher.down(config, [small])
    assert stopped.state == "stopped" and stopped.url is None
    eventually(lambda: _sacct_state(nyc, small.job_id) == "CANCELLED", 60, "nyc job cancelled")

    # scancel of the hand-made job: the supervisor stops vLLM and deregisters itself.
    nyc.scancel(hand)
    eventually(lambda: registry.get(by_hand.id).state == "stopped", 60, "hand-made server deregistered")
    assert "SIGTERM" in registry.get(by_hand.id).message

    # Time-limit signal: submitit checkpoints the supervisor and requeues the job; it comes back.
    first_url = medium.url
    sf.scancel("--signal=USR2", medium.job_id)
    eventually(lambda: registry.get(medium.id).restarts == 1, 90, "sf server requeued")
    eventually(
        lambda: "PENDING" in sf.squeue("-h", "-o", "%T", f"--jobs={medium.job_id}"), 60, "requeued job"
    )
    eventually(
        lambda: not sf.squeue("-h", "-s", f"--jobs={medium.job_id}").strip(), 60, "old run's steps gone"
    )
    # Slurm's requeue ends the old run with TERM too; the row must still say requeued, not stopped.
    assert registry.get(medium.id).state == "requeued"
    # Slurm holds a requeued job back for the credential lifetime (120 s): a node refuses to start
    # it again sooner ("Job credential revoked"), so the test waits rather than forcing StartTime.
    (medium,) = launcher.wait_healthy(config, [registry.get(medium.id)], START_TIMEOUT + 180)
    assert medium.url and medium.restarts == 1
    assert _chat(medium, "tiny-llama")
    del first_url

    # A killed vLLM: the job fails, and status says so with the Slurm state and the log path.
    port = medium.url.rsplit(":", 1)[1]
    pids = subprocess.run(
        ["pgrep", "-f", f"vllm.entrypoints.openai.api_server.*--port {port}"], capture_output=True, text=True
    ).stdout.split()
    assert pids
    for pid in pids:
        os.kill(int(pid), signal.SIGKILL)
    row = eventually(
        lambda: (r := _row(config, medium.id)).slurm_state == "FAILED" and r, 120, "sf job FAILED"
    )
    assert row.endpoint.state == "failed" and "vLLM exited with code -9" in row.endpoint.message
    assert row.problem == f"job {medium.job_id} on site sf ended FAILED; log: {medium.log_path}"
    assert "vLLM exited with code -9" in Path(medium.log_path).read_text()
    # The killed server's engine and worker processes (its process group) do not outlive it.
    eventually(lambda: not _group_alive(int(pids[0])), 30, "vLLM's engine and worker processes gone")


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def _session_of(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[3])
    except (OSError, IndexError, ValueError):
        return None


def _running() -> dict[int, tuple[str, int | None, str]]:
    """pid -> (state, session, command line) of every process, zombies (which run nothing) left out."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            argv = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if state != "Z":
            found[int(entry.name)] = (state, _session_of(int(entry.name)), argv)
    return found


@pytest.fixture
def tls_serving(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dev_cluster):
    """The dev configuration with vLLM over HTTPS: a local CA, a certificate for this node's names."""
    import trustme

    if not (REPO / ".venv-vllm/bin/python").exists() or not (REPO / ".run/tiny-llama/config.json").exists():
        pytest.fail("the vLLM environment is missing: run scripts/setup")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    cert = ca.issue_cert(socket.gethostname(), "localhost", "127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "vllm.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "vllm.key"))
    config_dir = tmp_path / "site configs"
    shutil.copytree(CONFIG_DIR, config_dir)
    profile = config_dir / "profiles" / "dev.yaml"
    tls = f"  tls: {{certfile: {tmp_path / 'vllm.pem'}, keyfile: {tmp_path / 'vllm.key'}}}\n"
    profile.write_text(
        profile.read_text()
        .replace(".venv-vllm/bin/python", str(REPO / ".venv-vllm/bin/python"))
        .replace(".run/tiny-llama", str(REPO / ".run/tiny-llama"))
        .replace("  env: {VLLM_CPU", tls + "  env: {VLLM_CPU")
    )
    serving = config_dir / "serving.yaml"
    serving.write_text(serving.read_text() + f"backend_ca: {tmp_path / 'ca.pem'}\n")
    monkeypatch.setenv("HPCRAG_REGISTRY", str(tmp_path / "serving.sqlite"))
    config = load_config(config_dir, "dev")
    yield config, tmp_path / "ca.pem"
    for endpoint in launcher.registry_of(config).find():
        SlurmTarget.for_site(config.site(endpoint.site)).scancel(endpoint.job_id)


def test_https_server_answers_only_its_key_and_dies_with_its_supervisor(tls_serving) -> None:
    config, ca = tls_serving
    (server,) = launcher.wait_healthy(
        config, launcher.up(config, "nyc", "s", priority="development"), START_TIMEOUT
    )
    assert server.url.startswith(f"https://{socket.gethostname()}:") and server.secret
    port = server.url.rsplit(":", 1)[1]
    verified = httpx.Client(verify=ssl.create_default_context(cafile=str(ca)), timeout=60)
    body = {"model": "tiny-llama", "prompt": "a slurm job", "max_tokens": 2}
    # No key, a wrong one, or a path vLLM's own --api-key leaves open: refused.
    for path, headers in [
        ("/v1/completions", {}),
        ("/v1/completions", {"Authorization": "Bearer " + server.secret[:-1]}),
        ("/invocations", {}),
        ("/tokenize", {}),
    ]:
        assert verified.post(server.url + path, json=body, headers=headers).status_code == 401, path
    assert verified.get(server.url + "/health").status_code == 200  # liveness and load stay open
    assert "vllm:num_requests_waiting" in verified.get(server.url + "/metrics").text
    assert _chat(server, "tiny-llama", http_client=verified)
    with pytest.raises(httpx.ConnectError):  # a CA the gateway was not told about
        httpx.get(server.url + "/health", timeout=10)

    # What the gateway does: the registry row's key in its headers, the configured CA for https.
    async def through_gateway_pieces() -> int:
        table = EndpointTable(config)
        table.sync(launcher.registry_of(config).healthy("s"))
        (live,) = table.live()
        connector = aiohttp.TCPConnector(ssl=backend_ssl_context(config))
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.post(live.url + "/v1/completions", json=body, headers=live.upstream_headers) as answer,
        ):
            return answer.status

    assert asyncio.run(through_gateway_pieces()) == 200

    # SIGKILL of the supervisor: the server, its engine core and its workers all die with it.
    (api_server,) = [
        pid for pid, (_, _, argv) in _running().items()
        if "vllm.entrypoints.openai.api_server" in argv and f"--port {port}" in argv
    ]  # fmt: skip
    session = _session_of(api_server)
    group = [pid for pid, (_, sid, _) in _running().items() if sid == session]
    assert len(group) >= 3, group  # the API server, its engine core and the engine's worker at least
    supervisor = int(Path(f"/proc/{api_server}/stat").read_text().rsplit(")", 1)[1].split()[1])
    assert "vllm" not in _running()[supervisor][2]
    os.kill(supervisor, signal.SIGKILL)
    started = time.monotonic()
    eventually(
        lambda: (
            not [p for p, (_, sid, argv) in _running().items() if sid == session or f"--port {port}" in argv]
        ),
        10,
        "no vLLM process of the killed supervisor's server left",
    )
    print(
        f"{len(group)} vLLM processes gone {time.monotonic() - started:.1f} s after SIGKILL of the supervisor"
    )
    with pytest.raises(httpx.ConnectError):  # a new connection: a pooled one would only see a reset
        httpx.get(server.url + "/health", verify=ssl.create_default_context(cafile=str(ca)), timeout=10)
