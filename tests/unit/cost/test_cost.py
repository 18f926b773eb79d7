"""Ledger, GPU-hours from sacct text, the report's groups, $/1K tokens and hints."""

from __future__ import annotations

import time
from datetime import datetime

import pytest

from hpcrag.cost.gpu_hours import JobUsage, parse_sacct_runs
from hpcrag.cost.ledger import Ledger, LedgerWriter, RequestRecord
from hpcrag.cost.report import group_by, hints, parse_since
from hpcrag.errors import HpcragError


def record(
    key: str, tier: str, provider: str, prompt: int, completion: int, usd: float, **kw
) -> RequestRecord:
    return RequestRecord(
        request_id=f"{key}{tier}{prompt}",
        started_at=kw.pop("started_at", 1000.0),
        route="chat",
        status=200,
        outcome="ok",
        key=key,
        tier=tier,
        site=kw.pop("site", "nyc"),
        provider=provider,
        job_id="1",
        endpoint="http://x",
        prompt_tokens=prompt,
        completion_tokens=completion,
        usd=usd,
        **kw,
    )


def job(provider: str, tier: str, gpu_hours: float, usd: float, site: str = "nyc") -> JobUsage:
    return JobUsage(provider, site, tier, "1", "l40s", 1, 0.0, 3600.0, gpu_hours, usd, "sacct")


def test_ledger_writer_batches_and_flushes(tmp_path) -> None:
    ledger = Ledger(tmp_path / "g.sqlite")
    writer = LedgerWriter(ledger, batch=7)
    for i in range(50):
        writer.record(record("alice", "s", "slurm", i, 1, 0.001, started_at=1000.0 + i))
    writer.flush()
    rows = ledger.since(1000.0)
    assert len(rows) == 50 and sum(r.prompt_tokens for r in rows) == sum(range(50))
    assert ledger.spend_by_key(1010.0) == {"alice": pytest.approx(0.040)}
    assert [r.prompt_tokens for r in ledger.last(2)] == [48, 49]


def test_sacct_runs_parse_gpus_and_running_jobs() -> None:
    text = (
        "100001|2026-11-22T10:00:00|2026-11-22T11:30:00|billing=1,cpu=1,gres/gpu:l40s=2,gres/gpu=2,mem=1G,node=1\n"
        "100001|2026-11-22T12:00:00|Unknown|cpu=1,gres/gpu=2,node=1\n"
        "100002|None|Unknown|cpu=1,gres/gpu=1\n"
    )
    runs = parse_sacct_runs(text)
    assert [(r.job_id, r.gpus, r.end is None) for r in runs] == [("100001", 2, False), ("100001", 2, True)]
    assert runs[0].end - runs[0].start == 5400
    assert runs[0].start == datetime(2026, 11, 22, 10).timestamp()


def test_groups_per_1k_tokens_and_utilisation() -> None:
    records = [
        record("alice", "s", "slurm", 1000, 1000, 0.02),
        record("bob", "s", "slurm", 500, 1500, 0.02),
        record("bob", "m", "aws", 1000, 0, 0.05),
        RequestRecord(
            request_id="refused",
            started_at=1.0,
            route="chat",
            status=429,
            outcome="budget_exceeded",
            key="bob",
        ),
    ]
    jobs = [job("slurm", "s", 2.0, 0.90), job("aws", "m", 1.0, 2.50, site="us-east-1")]
    by_provider = {g.name: g for g in group_by("provider", records, jobs)}
    assert by_provider["slurm"].tokens == 4000 and by_provider["slurm"].requests == 2
    assert by_provider["slurm"].usd_per_1k_tokens == pytest.approx(0.90 / 4)
    assert by_provider["slurm"].utilisation == pytest.approx(0.04 / 0.90)
    by_key = {g.name: g for g in group_by("key", records, jobs)}
    assert by_key["bob"].gpu_usd is None and by_key["bob"].requests == 2
    assert by_key["bob"].usd_per_1k_tokens == pytest.approx(0.07 / 3)


def test_prd_hints() -> None:
    records = [record("a", "s", "slurm", 1000, 1000, 0.5), record("a", "m", "aws", 1000, 1000, 0.9)]
    jobs = [job("slurm", "s", 1.0, 0.45), job("aws", "m", 1.0, 1.50, site="us-east-1")]
    found = hints(records, jobs)
    assert "consider shifting workloads from aws to slurm (potential 3.3x savings per token)" in found
    assert "tier S cost ($0.2250/1K tokens) is high: consider smaller GPUs or spot instances" in found
    idle = hints([record("a", "s", "slurm", 10, 10, 0.001)], [job("slurm", "s", 1.0, 0.45)])
    assert any(h.startswith("tier s: requests paid for 0.22% of its $0.4500 of GPU time") for h in idle)


def test_since_spans_and_times() -> None:
    assert parse_since("24h", now=100000.0) == 100000.0 - 86400
    assert parse_since("30m", now=5000.0) == 3200.0
    assert parse_since("2026-11-22T08:00") == datetime(2026, 11, 22, 8).timestamp()
    with pytest.raises(HpcragError, match="cannot read --since 'yesterday'"):
        parse_since("yesterday")
    assert parse_since("1d") <= time.time() - 86399
