"""`up` twice is harmless, `down` leaves no process behind, and `up` comes back quickly."""

from __future__ import annotations

from pathlib import Path

from hpcrag.devcluster import DevCluster
from hpcrag.devcluster.processes import processes_of
from hpcrag.slurm.target import SlurmTarget
from tests.integration.helpers import sbatch_wrap


def pids(cluster: DevCluster) -> dict[str, int | None]:
    return {f"{row['daemon']}@{row['site']}": row["pid"] for row in cluster.status()}


def test_up_down_up(dev_cluster: DevCluster, nyc: SlurmTarget) -> None:
    before = pids(dev_cluster)
    assert all(before.values()) and len(before) == 3 + 2 * 9
    dev_cluster.up(timeout=60)
    assert pids(dev_cluster) == before  # nothing restarted

    job = sbatch_wrap(nyc, "--partition=tier-s", "--wrap=sleep 300")  # a job step must not survive down
    dev_cluster.down()
    assert processes_of(Path(dev_cluster.root)) == []
    assert not any(pids(dev_cluster).values())

    seconds = dev_cluster.up(timeout=60)
    assert all(pids(dev_cluster).values())
    nyc.scancel(job)  # slurmctld recovers it as running; it would hold node resources for hours
    print(f"dev cluster up from stopped in {seconds:.1f}s")
