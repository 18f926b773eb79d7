"""What a site's Slurm says right now: partitions, nodes and their states, GPUs by type, queued jobs.

Everything is read from the real `scontrol`/`squeue` of the site; nothing comes from the YAML, so a
difference between the two is something an admin should see.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from hpcrag.slurm.target import SlurmTarget

_FIELD = re.compile(r"(?:^|\s)(\w+)=(\S*)")
_GPU_TRES = re.compile(r"gres/gpu:([\w.-]+)=(\d+)")
# squeue fields; '|' never appears in them.
JOB_FORMAT = "%i|%P|%j|%u|%T|%M|%l|%D|%R|%b"
JOB_FIELDS = (
    "job_id",
    "partition",
    "name",
    "user",
    "state",
    "time",
    "time_limit",
    "nodes",
    "reason_or_nodes",
    "gres",
)


@dataclass
class GpuCount:
    total: int = 0
    allocated: int = 0

    @property
    def free(self) -> int:
        return self.total - self.allocated


@dataclass
class NodeStatus:
    name: str
    state: str
    partitions: list[str]
    gpus: dict[str, GpuCount]


@dataclass
class PartitionStatus:
    name: str
    default: bool
    state: str
    max_time: str
    nodes: str
    total_nodes: int


@dataclass
class SiteStatus:
    site: str
    cluster: str
    partitions: list[PartitionStatus] = field(default_factory=list)
    nodes: list[NodeStatus] = field(default_factory=list)
    jobs: list[dict[str, str]] = field(default_factory=list)

    @property
    def gpus(self) -> dict[str, GpuCount]:
        totals: dict[str, GpuCount] = {}
        for node in self.nodes:
            for gpu_type, count in node.gpus.items():
                total = totals.setdefault(gpu_type, GpuCount())
                total.total += count.total
                total.allocated += count.allocated
        return totals

    @property
    def pending(self) -> list[dict[str, str]]:
        return [j for j in self.jobs if j["state"] == "PENDING"]

    def to_dict(self) -> dict[str, object]:
        return {
            "site": self.site,
            "cluster": self.cluster,
            "reachable": True,
            "partitions": [asdict(p) for p in self.partitions],
            "nodes": [
                {**asdict(n), "gpus": {t: _gpu_dict(c) for t, c in n.gpus.items()}} for n in self.nodes
            ],
            "gpus": {t: _gpu_dict(c) for t, c in self.gpus.items()},
            "running_jobs": sum(1 for j in self.jobs if j["state"] == "RUNNING"),
            "pending_jobs": [
                {
                    "job_id": j["job_id"],
                    "partition": j["partition"],
                    "name": j["name"],
                    "user": j["user"],
                    "reason": j["reason_or_nodes"].strip("()"),
                    "gres": j["gres"],
                }
                for j in self.pending
            ],
        }


def _gpu_dict(count: GpuCount) -> dict[str, int]:
    return {"total": count.total, "allocated": count.allocated, "free": count.free}


def site_status(target: SlurmTarget) -> SiteStatus:
    status = SiteStatus(site=target.site, cluster=target.cluster)
    status.partitions = parse_partitions(target.scontrol("show", "partition", "-o"))
    status.nodes = parse_nodes(target.scontrol("show", "node", "-o"))
    status.jobs = list_jobs(target)
    return status


def list_jobs(target: SlurmTarget, user: str | None = None) -> list[dict[str, str]]:
    args = ["-h", "-o", JOB_FORMAT]
    if user:
        args.append(f"--user={user}")
    return parse_jobs(target.squeue(*args))


def parse_jobs(text: str) -> list[dict[str, str]]:
    jobs = []
    for line in text.splitlines():
        if line.startswith("CLUSTER:") or "|" not in line:
            continue  # squeue --clusters prints a "CLUSTER: name" header per cluster
        jobs.append(dict(zip(JOB_FIELDS, line.split("|"), strict=False)))
    return jobs


def _records(text: str, key: str) -> list[dict[str, str]]:
    """The `scontrol show ... -o` records (one per line) that carry `key`, as field dicts."""
    records = (dict(_FIELD.findall(line)) for line in text.splitlines())
    return [fields for fields in records if key in fields]


def parse_nodes(text: str) -> list[NodeStatus]:
    nodes = []
    for fields in _records(text, "NodeName"):
        configured = {t: int(n) for t, n in _GPU_TRES.findall(fields.get("CfgTRES", ""))}
        allocated = {t: int(n) for t, n in _GPU_TRES.findall(fields.get("AllocTRES", ""))}
        nodes.append(
            NodeStatus(
                name=fields["NodeName"],
                state=fields.get("State", "UNKNOWN").lower(),
                partitions=[p for p in fields.get("Partitions", "").split(",") if p],
                gpus={t: GpuCount(total=n, allocated=allocated.get(t, 0)) for t, n in configured.items()},
            )
        )
    return nodes


def parse_partitions(text: str) -> list[PartitionStatus]:
    partitions = []
    for fields in _records(text, "PartitionName"):
        partitions.append(
            PartitionStatus(
                name=fields["PartitionName"],
                default=fields.get("Default") == "YES",
                state=fields.get("State", "UNKNOWN"),
                max_time=fields.get("MaxTime", ""),
                nodes=fields.get("Nodes", ""),
                total_nodes=int(fields.get("TotalNodes", "0") or 0),
            )
        )
    return partitions
