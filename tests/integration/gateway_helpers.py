"""A real gateway process (the `hpcrag gateway serve` CLI) and stub backends, for the gateway tests."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import yaml

from tests.integration.helpers import REPO, eventually

HPCRAG = str(REPO / ".venv" / "bin" / "hpcrag")


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
