"""Parsing of scontrol/squeue output into partitions, nodes, GPUs by type and pending reasons."""

from __future__ import annotations

from hpcrag.slurm.status import SiteStatus, parse_jobs, parse_nodes, parse_partitions

NODES = (
    "NodeName=node1 Arch=x86_64 CPUAlloc=1 Gres=gpu:h100:8 OS=Linux 6.1 #1 SMP State=MIXED "
    "Partitions=tier-l,tier-xl CfgTRES=cpu=128,mem=2000G,billing=128,gres/gpu=8,gres/gpu:h100=8 "
    "AllocTRES=cpu=1,gres/gpu=3,gres/gpu:h100=3 CapWatts=n/a\n"
    "NodeName=node7 Arch=x86_64 Gres=gpu:l40s:8 State=DOWN+DRAIN Partitions=tier-s,tier-m "
    "CfgTRES=cpu=64,gres/gpu=8,gres/gpu:l40s=8 AllocTRES= Reason=disk full [root@2026-11-22]\n"
)
PARTITIONS = (
    "PartitionName=tier-s Default=NO MaxTime=04:00:00 Nodes=node[7-8] State=UP TotalNodes=2\n"
    "PartitionName=tier-m Default=YES MaxTime=08:00:00 Nodes=node[5-8] State=UP TotalNodes=4\n"
)
JOBS = (
    "CLUSTER: nyc\n"
    "100002|tier-l|wrap|root|RUNNING|0:02|1-00:00:00|1|node1|gres:gpu:h100:3\n"
    "100005|tier-s|wrap|root|PENDING|0:00|4:00:00|1|(Resources)|gres:gpu:l40s:8\n"
)


def test_nodes_and_gpu_totals() -> None:
    status = SiteStatus(site="nyc", cluster="nyc", nodes=parse_nodes(NODES))
    assert [n.state for n in status.nodes] == ["mixed", "down+drain"]
    assert status.nodes[0].partitions == ["tier-l", "tier-xl"]
    gpus = status.to_dict()["gpus"]
    assert gpus == {
        "h100": {"total": 8, "allocated": 3, "free": 5},
        "l40s": {"total": 8, "allocated": 0, "free": 8},
    }


def test_partitions() -> None:
    parts = parse_partitions(PARTITIONS)
    assert [(p.name, p.default, p.max_time, p.total_nodes) for p in parts] == [
        ("tier-s", False, "04:00:00", 2),
        ("tier-m", True, "08:00:00", 4),
    ]


def test_pending_jobs_carry_their_reason() -> None:
    status = SiteStatus(site="nyc", cluster="nyc", jobs=parse_jobs(JOBS))
    report = status.to_dict()
    assert report["running_jobs"] == 1
    assert report["pending_jobs"] == [
        {
            "job_id": "100005",
            "partition": "tier-s",
            "name": "wrap",
            "user": "root",
            "reason": "Resources",
            "gres": "gres:gpu:l40s:8",
        }
    ]
