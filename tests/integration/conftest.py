"""Integration tests run against the real local NYC and SF clusters, started here if needed."""

from __future__ import annotations

import warnings

import pytest

from hpcrag.config import Config, load_config
from hpcrag.devcluster import DevCluster
from hpcrag.slurm.target import SlurmTarget
from tests.conftest import CONFIG_DIR
from tests.integration.helpers import eventually


@pytest.fixture(scope="session")
def config() -> Config:
    return load_config(CONFIG_DIR, "dev")


@pytest.fixture(scope="session")
def dev_cluster(config: Config) -> DevCluster:
    cluster = DevCluster(config, log=lambda line: None)
    cluster.up(timeout=120)
    for name in config.sites:
        _cancel_leftover_jobs(SlurmTarget.for_site(config.site(name)))
    return cluster


def _cancel_leftover_jobs(target: SlurmTarget) -> None:
    """Tests own the local clusters and count their GPUs, so a job left by an interrupted earlier run
    (a killed pytest cannot cancel its jobs) would skew them: cancel it first, and say so."""
    leftover = target.squeue("-h", "-o", "%i").split()
    if not leftover:
        return
    warnings.warn(
        f"{target.site}: cancelled {len(leftover)} job(s) left by an earlier run: {leftover}", stacklevel=2
    )
    target.scancel(*leftover)
    eventually(lambda: not target.squeue("-h", "-o", "%i").split(), 120, f"{target.site} queue empty")


@pytest.fixture(scope="session")
def nyc(config: Config, dev_cluster: DevCluster) -> SlurmTarget:
    return SlurmTarget.for_site(config.site("nyc"))


@pytest.fixture(scope="session")
def sf(config: Config, dev_cluster: DevCluster) -> SlurmTarget:
    return SlurmTarget.for_site(config.site("sf"))
