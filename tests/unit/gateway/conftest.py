"""Endpoint rows and a router over them, without any server: the router works on the registry's rows."""

from __future__ import annotations

import time

import pytest

from hpcrag.config import Config, load_config
from hpcrag.serve.registry import Endpoint


@pytest.fixture(scope="session")
def config() -> Config:
    return load_config()


def endpoint(
    tier: str,
    site: str = "nyc",
    provider: str = "slurm",
    job_id: str = "1",
    gpu_type: str = "l40s",
    usd_per_hour: float = 0.45,
    served_name: str | None = None,
    port: int = 9000,
) -> Endpoint:
    return Endpoint(
        provider=provider,
        site=site,
        job_id=job_id,
        tier=tier,
        model="tiny-llama",
        served_name=served_name or f"model-{tier}",
        state="healthy",
        gpu_type=gpu_type,
        gpus=1,
        url=f"http://127.0.0.1:{port}",
        usd_per_hour=usd_per_hour,
        heartbeat_at=time.time(),
    )
