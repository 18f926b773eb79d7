"""`hpcrag cost report`: spend, tokens and $/1K tokens by provider, tier, site or key, with hints.

Two sources, shown side by side:
- charged: the dollars the gateway charged to requests (ledger rows: tokens x the endpoint's dollars
  per token at that moment);
- GPU: what the serving fleet cost in the window (GPU-hours from sacct or the registry x prices).
$/1K tokens is GPU dollars over tokens where GPU-hours belong to the grouping (provider, tier, site),
charged dollars over tokens by key. Charged over GPU dollars is the fleet's utilisation.
Hints: the PRD §12 recommendations (shift from a provider 1.5x dearer per token than the cheapest;
tier S above $0.01/1K), and hpcrag's own: a group whose requests paid for under 20% of its GPU-hours.
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from datetime import datetime

from hpcrag.config import Config
from hpcrag.cost.gpu_hours import JobUsage, fleet_usage
from hpcrag.cost.ledger import Ledger, RequestRecord
from hpcrag.errors import HpcragError
from hpcrag.serve.launcher import registry_of

DIMENSIONS = ("provider", "tier", "site", "key")
LOW_UTILISATION = 0.2
TIER_S_LIMIT_PER_1K = 0.01
PROVIDER_SPREAD = 1.5
_SPAN = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, now: float | None = None) -> float:
    """'24h', '30m', '7d', '90s' back from now, or an ISO date and time."""
    now = time.time() if now is None else now
    match = _SPAN.match(text.strip())
    if match:
        return now - float(match.group(1)) * _UNIT_S[match.group(2)]
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise HpcragError(
            f"cannot read --since {text!r}: give a span such as 24h, 30m, 7d or an ISO time 2026-11-22T08:00"
        ) from None


@dataclass
class Group:
    name: str
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    charged_usd: float = 0.0
    gpu_hours: float | None = None
    gpu_usd: float | None = None

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def usd_per_1k_tokens(self) -> float | None:
        spend = self.gpu_usd if self.gpu_usd is not None else self.charged_usd
        return spend / self.tokens * 1000 if self.tokens else None

    @property
    def utilisation(self) -> float | None:
        return self.charged_usd / self.gpu_usd if self.gpu_usd else None

    def as_dict(self) -> dict[str, object]:
        return {
            **asdict(self),
            "tokens": self.tokens,
            "usd_per_1k_tokens": self.usd_per_1k_tokens,
            "utilisation": self.utilisation,
        }


@dataclass
class Report:
    by: str
    since: float
    until: float
    groups: list[Group]
    hints: list[str]
    notices: list[str]
    jobs: list[JobUsage]

    def as_dict(self) -> dict[str, object]:
        return {
            "by": self.by,
            "since": self.since,
            "until": self.until,
            "groups": [g.as_dict() for g in self.groups],
            "hints": self.hints,
            "notices": self.notices,
            "jobs": [j.as_dict() for j in self.jobs],
        }


def group_by(by: str, records: list[RequestRecord], jobs: list[JobUsage]) -> list[Group]:
    groups: dict[str, Group] = {}
    for record in records:
        if not record.endpoint:
            continue  # refused before it reached an endpoint: no tokens, no dollars
        group = groups.setdefault(getattr(record, by), Group(getattr(record, by)))
        group.requests += 1
        group.prompt_tokens += record.prompt_tokens
        group.completion_tokens += record.completion_tokens
        group.charged_usd += record.usd
    if by != "key":
        hours: dict[str, float] = defaultdict(float)
        dollars: dict[str, float] = defaultdict(float)
        for job in jobs:
            hours[getattr(job, by)] += job.gpu_hours
            dollars[getattr(job, by)] += job.usd
        for name in hours:
            group = groups.setdefault(name, Group(name))
            group.gpu_hours, group.gpu_usd = hours[name], dollars[name]
    return sorted(groups.values(), key=lambda g: -(g.gpu_usd or g.charged_usd))


def hints(records: list[RequestRecord], jobs: list[JobUsage]) -> list[str]:
    found = []
    by_tier = group_by("tier", records, jobs)
    providers = {g.name: g.usd_per_1k_tokens for g in group_by("provider", records, jobs)}
    priced = {name: cost for name, cost in providers.items() if cost}
    if len(priced) > 1:
        cheapest = min(priced, key=priced.__getitem__)
        dearest = max(priced, key=priced.__getitem__)
        if priced[dearest] > priced[cheapest] * PROVIDER_SPREAD:
            found.append(
                f"consider shifting workloads from {dearest} to {cheapest} "
                f"(potential {priced[dearest] / priced[cheapest]:.1f}x savings per token)"
            )
    for group in by_tier:
        cost = group.usd_per_1k_tokens
        if group.name == "s" and cost is not None and cost > TIER_S_LIMIT_PER_1K:
            found.append(
                f"tier S cost (${cost:.4f}/1K tokens) is high: consider smaller GPUs or spot instances"
            )
    for by, groups in (("tier", by_tier), ("site", group_by("site", records, jobs))):
        for group in groups:
            if group.utilisation is not None and group.utilisation < LOW_UTILISATION:
                found.append(
                    f"{by} {group.name}: requests paid for {group.utilisation:.2%} of its "
                    f"${group.gpu_usd:.4f} of GPU time; fewer replicas (`hpcrag serve down`) would cost less"
                )
    return found


def build_report(config: Config, by: str, since: float, until: float | None = None) -> Report:
    if by not in DIMENSIONS:
        raise HpcragError(f"cannot group by {by!r}; one of: {', '.join(DIMENSIONS)}")
    until = time.time() if until is None else until
    records = Ledger(config.resolve_path(config.gateway.database)).since(since, until)
    registry = registry_of(config)
    rows = [
        row
        for row in registry.find()
        if (row.submitted_at or 0) <= until and (row.stopped_at is None or row.stopped_at >= since)
    ]
    jobs, notices = fleet_usage(config, rows, since, until)
    return Report(by, since, until, group_by(by, records, jobs), hints(records, jobs), notices, jobs)
