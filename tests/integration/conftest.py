"""Integration tests run against the real local NYC and SF clusters, started here if needed."""

from __future__ import annotations

import pytest

from hpcrag.config import Config, load_config
from hpcrag.devcluster import DevCluster
from hpcrag.slurm.target import SlurmTarget
from tests.conftest import CONFIG_DIR


@pytest.fixture(scope="session")
def config() -> Config:
    return load_config(CONFIG_DIR, "dev")


@pytest.fixture(scope="session")
def dev_cluster(config: Config) -> DevCluster:
    cluster = DevCluster(config, log=lambda line: None)
    cluster.up(timeout=120)
    return cluster


@pytest.fixture(scope="session")
def nyc(config: Config, dev_cluster: DevCluster) -> SlurmTarget:
    return SlurmTarget.for_site(config.site("nyc"))


@pytest.fixture(scope="session")
def sf(config: Config, dev_cluster: DevCluster) -> SlurmTarget:
    return SlurmTarget.for_site(config.site("sf"))
