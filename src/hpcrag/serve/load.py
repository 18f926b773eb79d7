"""How long a tier's requests wait, read from its vLLM servers' own Prometheus metrics.

vLLM counts every request's time in its queue (`vllm:request_queue_time_seconds`, a histogram) and
how many wait now (`vllm:num_requests_waiting`). Between two samples of all healthy servers of a tier,
the recent wait is the mean queue time of the requests scheduled in between; if requests are waiting
and none was scheduled, they have waited at least the whole interval.
"""

from __future__ import annotations

import ssl
import time
from dataclasses import dataclass

import httpx

from hpcrag.serve.registry import Registry

QUEUE_SUM = "vllm:request_queue_time_seconds_sum"
QUEUE_COUNT = "vllm:request_queue_time_seconds_count"
WAITING = "vllm:num_requests_waiting"
RUNNING = "vllm:num_requests_running"


@dataclass(frozen=True)
class ServerLoad:
    queue_time_sum: float
    queue_time_count: float
    waiting: float
    running: float = 0.0

    @property
    def busy(self) -> bool:
        return self.waiting > 0 or self.running > 0


@dataclass(frozen=True)
class TierSample:
    taken_at: float
    servers: dict[str, ServerLoad]


def parse_metrics(text: str) -> ServerLoad:
    """Sum each metric over its label sets (one per model and engine) in Prometheus text format."""
    totals = {QUEUE_SUM: 0.0, QUEUE_COUNT: 0.0, WAITING: 0.0, RUNNING: 0.0}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in totals:
            try:
                totals[name] += float(line.rsplit(" ", 1)[1])
            except (IndexError, ValueError):
                continue
    return ServerLoad(totals[QUEUE_SUM], totals[QUEUE_COUNT], totals[WAITING], totals[RUNNING])


def scrape(base_url: str, timeout: float = 2.0, verify: ssl.SSLContext | bool = True) -> ServerLoad | None:
    """One server's load; `verify`: the context for https servers (`client.backend_ssl_context`)."""
    try:
        response = httpx.get(f"{base_url}/metrics", timeout=timeout, verify=verify)
    except httpx.HTTPError:
        return None
    return parse_metrics(response.text) if response.status_code == 200 else None


def sample(registry: Registry, tier: str, verify: ssl.SSLContext | bool = True) -> TierSample:
    servers = {}
    for endpoint in registry.healthy(tier):
        if endpoint.url and (load := scrape(endpoint.url, verify=verify)) is not None:
            servers[endpoint.url] = load
    return TierSample(time.time(), servers)


def recent_wait_s(before: TierSample, after: TierSample) -> float:
    """Mean queue time of the requests scheduled between two samples (servers in both)."""
    common = before.servers.keys() & after.servers.keys()
    scheduled = sum(after.servers[u].queue_time_count - before.servers[u].queue_time_count for u in common)
    queued = sum(after.servers[u].queue_time_sum - before.servers[u].queue_time_sum for u in common)
    waiting = sum(after.servers[u].waiting for u in after.servers)
    if scheduled > 0:
        return queued / scheduled
    return after.taken_at - before.taken_at if waiting > 0 else 0.0
