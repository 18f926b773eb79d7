"""site_executor refuses what the site cannot run, listing what it can, before Slurm is asked."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcrag.config import load_config
from hpcrag.config.schema import UnknownNameError
from hpcrag.errors import HpcragError
from hpcrag.slurm.executor import SiteExecutor, site_executor
from hpcrag.slurm.target import SlurmTarget
from tests.conftest import CONFIG_DIR

CONFIG = load_config(CONFIG_DIR, "dev")


@pytest.mark.parametrize(
    ("site", "partition", "gpu_type", "gpus", "error", "message"),
    [
        ("tokyo", "tier-s", None, 0, UnknownNameError, "valid sites: nyc, sf"),
        ("nyc", "gpu", None, 0, UnknownNameError, "valid partitions: tier-s, tier-m, tier-l, tier-xl"),
        ("nyc", "tier-s", "h100", 1, UnknownNameError, "on partition nyc/tier-s; valid GPU types: l40s"),
        (
            "sf",
            "tier-m",
            None,
            2,
            HpcragError,
            "name the GPU type for 2 GPUs on sf/tier-m; valid: a100, l40s",
        ),
        ("sf", "tier-l", "h100", 9, HpcragError, "a sf node has at most 8"),
        ("sf", "tier-l", "h100", -1, HpcragError, "gpus must be >= 0"),
    ],
)
def test_refusals(site, partition, gpu_type, gpus, error, message, tmp_path: Path) -> None:
    with pytest.raises(error, match=message):
        site_executor(site, partition, gpu_type, gpus, folder=tmp_path, config=CONFIG)


def test_submission_command_keeps_hostile_paths_whole(tmp_path: Path) -> None:
    folder = tmp_path / "logs with 'quotes' and spaces"
    conf = tmp_path / "conf dir" / "slurm.conf"
    executor = SiteExecutor(folder=folder, target=SlurmTarget("sf", "sf", slurm_conf=str(conf)))
    script = folder / 'it\'s a "script".sh'
    assert executor._make_submission_command(script) == ["env", f"SLURM_CONF={conf}", "sbatch", str(script)]
    federated = SiteExecutor(folder=folder, target=SlurmTarget("sf", "sf", via_clusters_flag=True))
    assert federated._make_submission_command(script) == ["sbatch", "--clusters=sf", str(script)]
