"""A real gateway process (the `hpcrag gateway serve` CLI) and stub backends, for the gateway tests."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import yaml

from hpcrag.serve.registry import Endpoint, Registry
from tests.conftest import CONFIG_DIR
from tests.integration.helpers import REPO, eventually

HPCRAG = str(REPO / ".venv" / "bin" / "hpcrag")
METRICS_TOKEN = "metrics-token-for-tests"


def row(site: str, job_id: str, tier: str, served: str, port: int, usd: float) -> Endpoint:
    return Endpoint(
        provider="slurm", site=site, job_id=job_id, tier=tier, model="tiny-llama", served_name=served,
        state="healthy", gpu_type="l40s", gpus=1, url=f"http://127.0.0.1:{port}", usd_per_hour=usd,
        heartbeat_at=time.time() + 3600,
    )  # fmt: skip


def gateway_env(tmp: Path, metrics_token: str = METRICS_TOKEN) -> dict[str, str]:
    """The environment of a gateway of its own under `tmp`: a copy of site-configs with quick
    refreshes, its own registry, database and RAG collections folder, and a metrics token."""
    config_dir = tmp / "site configs"
    shutil.copytree(CONFIG_DIR, config_dir)
    quick_gateway_settings(config_dir)
    return {
        "HPCRAG_CONFIG_DIR": str(config_dir),
        "HPCRAG_REGISTRY": str(tmp / "registry.sqlite"),
        "HPCRAG_GATEWAY_DB": str(tmp / "gateway.sqlite"),
        "HPCRAG_METRICS_TOKEN": metrics_token,
        "HPCRAG_RAG_DIR": str(tmp / "rag"),  # no collection but the test's own shows as a rag: model
    }


@contextmanager
def stub_world(tmp: Path) -> Iterator[dict]:
    """A gateway process in front of two stub backends (tiers S and M) and a dead tier-S endpoint,
    with keys alice (plain), poor (a tiny budget) and bot (a tight rate limit)."""
    env = gateway_env(tmp)
    ports = {"s": free_port(), "m": free_port(), "dead": free_port(), "gateway": free_port()}
    registry = Registry(env["HPCRAG_REGISTRY"])
    registry.add(row("nyc", "101", "s", "small", ports["s"], 0.45))
    registry.add(row("sf", "201", "m", "medium", ports["m"], 0.65))
    # Cheapest of tier S, so the router tries it first; nothing listens on its port yet.
    registry.add(row("sf", "202", "s", "small", ports["dead"], 0.10))
    keys = {
        "alice": hpcrag(env, "gateway", "keys", "add", "alice").strip(),
        "poor": hpcrag(env, "gateway", "keys", "add", "poor", "--budget-usd", "0.0000001").strip(),
        "bot": hpcrag(env, "gateway", "keys", "add", "bot", "--rate", "0.2", "--burst", "1").strip(),
    }
    url = f"http://127.0.0.1:{ports['gateway']}"
    with (
        running(stub(ports["s"], "small"), env, f"http://127.0.0.1:{ports['s']}/health", tmp / "s.log"),
        running(stub(ports["m"], "medium"), env, f"http://127.0.0.1:{ports['m']}/health", tmp / "m.log"),
        running(
            [HPCRAG, "gateway", "serve", "--port", str(ports["gateway"])],
            env,
            f"{url}/health",
            tmp / "gw.log",
        ),
    ):
        yield {"env": env, "url": url, "keys": keys, "ports": ports, "tmp": tmp}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def quick_gateway_settings(config_dir: Path, **extra: object) -> None:
    """Refresh every half second and give an open circuit one second, so tests wait little."""
    path = config_dir / "gateway.yaml"
    settings = yaml.safe_load(path.read_text())
    settings.update(refresh_s=0.5, circuit={"failures": 3, "open_s": 1.0, "probe_s": 0.3}, **extra)
    path.write_text(yaml.safe_dump(settings, sort_keys=False))


def hpcrag(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [HPCRAG, *args], env={**os.environ, **env}, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@contextmanager
def running(args: list[str], env: dict[str, str], health_url: str, log: Path) -> Iterator[subprocess.Popen]:
    with open(log, "wb") as out:
        process = subprocess.Popen(
            args, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        eventually(lambda: _answers(health_url) or process.poll() is not None, 60, f"{health_url} up")
        assert process.poll() is None, log.read_text()
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def stub(port: int, model: str, *options: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "hpcrag.devcluster.openai_stub",
        "--port",
        str(port),
        "--model",
        model,
        *options,
    ]


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of a metric's samples whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        match = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? (\S+)$", line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match.group(3))
    return total
