"""slurm.conf and gres.conf come from the YAML: the PRD's lines for production, per-node daemons for dev."""

from __future__ import annotations

from hpcrag.config import load_config
from hpcrag.slurm.conf import render_gres_conf, render_slurm_conf
from tests.conftest import CONFIG_DIR


def test_production_conf_carries_the_prd_excerpt() -> None:
    text = render_slurm_conf(load_config(CONFIG_DIR, "production"), "nyc").splitlines()
    for line in [
        "ClusterName=nyc",
        "SlurmctldHost=nyc-controller",
        "PartitionName=tier-s Nodes=node[7-8] Default=NO MaxTime=4:00:00 State=UP",
        "PartitionName=tier-m Nodes=node[5-8] Default=YES MaxTime=8:00:00 State=UP",
        "PartitionName=tier-l Nodes=node[1-4] Default=NO MaxTime=24:00:00 State=UP",
        "PartitionName=tier-xl Nodes=node[1-4] Default=NO MaxTime=72:00:00 State=UP",
        "GresTypes=gpu",
        "NodeName=node[1-4] Gres=gpu:h100:8 CPUs=128 RealMemory=2048000 State=UNKNOWN",
        "NodeName=node[7-8] Gres=gpu:l40s:8 CPUs=64 RealMemory=512000 State=UNKNOWN",
        "AccountingStorageType=accounting_storage/slurmdbd",
        "JobAcctGatherType=jobacct_gather/cgroup",
    ]:
        assert line in text
    gres = render_gres_conf(load_config(CONFIG_DIR, "production"), "nyc")
    assert "NodeName=node[5-6] Name=gpu Type=a100 File=/dev/nvidia[0-7]" in gres


def test_dev_conf_runs_one_slurmd_per_node_on_own_ports() -> None:
    config = load_config(CONFIG_DIR, "dev")
    text = render_slurm_conf(config, "sf")
    assert "SlurmctldPort=16917" in text
    assert "FirstJobId=200000" in text
    assert "SlurmdSpoolDir=/var/tmp/hpcrag-dev/sf/spool/%n" in text
    assert "TmpFS=/var/tmp/hpcrag-dev/sf/tmp/%n" in text
    assert "SlurmdParameters=config_overrides" in text
    ports = [line.split("Port=")[1].split()[0] for line in text.splitlines() if line.startswith("NodeName=")]
    assert ports == [str(17100 + i) for i in range(1, 9)]
    gres = render_gres_conf(config, "sf")
    assert "NodeName=node[1-4] Name=gpu Type=h100 File=/var/tmp/hpcrag-dev/dev/nvidia[0-7]" in gres
