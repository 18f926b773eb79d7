"""Real vLLM (the CPU build, tiny local model) served as Slurm jobs at both sites, end to end.

One flow, because every vLLM start costs about a minute on two cores: two tiers through
`serve up` (NYC tier S, SF tier M) and one server submitted by hand with slurm/vllm-tier.sbatch, all
at once; the official openai client against the registered URLs; `serve down`; scancel of the hand-made
job; the time-limit signal that makes submitit requeue the SF server, which comes back; and a killed
vLLM, reported with its Slurm state and log path.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from openai import OpenAI

from hpcrag.config import load_config
from hpcrag.serve import launcher
from hpcrag.serve.load import scrape
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


def _chat(url: str, model: str, stream: bool = False) -> str:
    client = OpenAI(base_url=f"{url}/v1", api_key="unused", timeout=60)
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

    assert _chat(small.url, "tiny-llama")
    assert _chat(medium.url, "tiny-llama", stream=True)
    # The burst policy's load signal: vLLM's own queue-time histogram counted that request.
    load = scrape(small.url)
    assert load is not None and load.queue_time_count >= 1 and load.waiting == 0
    assert [m.id for m in OpenAI(base_url=f"{by_hand.url}/v1", api_key="x").models.list()] == ["tiny-llama"]
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
    assert _chat(medium.url, "tiny-llama")
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
