"""The gateway's live view of the serving fleet: healthy registry rows plus what it measures of each.

Every refresh re-reads the registry (servers come, go and move ports when Slurm requeues them) and
each endpoint's vLLM `/metrics` (requests waiting and running). Between refreshes the gateway folds
every answered request into moving averages:
- time to first token and decode rate (completion tokens over the time after the first token), which
  estimate a request's latency;
- throughput: the tokens an endpoint produced per second while the gateway had requests in flight to
  it, which turns the endpoint's $/hour into dollars per token.
Until an endpoint has been measured, its tier's PRD targets (`tiers.yaml`) stand in, marked "prior".
Each on-prem server takes only its own per-job key (the registry row's `secret`), which the gateway sends
with every request; https:// servers are verified with `serve.client.backend_ssl_context`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from hpcrag.catalog.matrix import RATING_WEIGHT
from hpcrag.config import Config
from hpcrag.serve.client import auth_headers
from hpcrag.serve.registry import Endpoint
from hpcrag.serve.supervisor import PROVIDER as ON_PREM
from hpcrag.util.circuit import CircuitBreaker


@dataclass
class Ewma:
    value: float
    alpha: float
    samples: int = 0

    def add(self, sample: float) -> None:
        self.value = sample if self.samples == 0 else self.alpha * sample + (1 - self.alpha) * self.value
        self.samples += 1

    @property
    def basis(self) -> str:
        return "measured" if self.samples else "prior"


@dataclass
class LiveEndpoint:
    row: Endpoint
    certifications: frozenset[str]
    quality: float
    network_ms: float
    circuit: CircuitBreaker
    ttft_s: Ewma
    decode_tps: Ewma
    throughput_tps: Ewma
    waiting: float = 0.0
    running: float = 0.0
    inflight: int = 0
    _busy_since: float | None = None
    _busy_s: float = 0.0
    _tokens: int = 0

    @property
    def name(self) -> str:
        return f"{self.row.provider}/{self.row.site}/{self.row.job_id}"

    @property
    def url(self) -> str:
        return self.row.url or ""

    @property
    def tier(self) -> str:
        return self.row.tier

    @property
    def upstream_headers(self) -> dict[str, str]:
        """Headers of every request the gateway sends this endpoint: its key, when it has one."""
        return {"Content-Type": "application/json", **auth_headers(self.row)}

    @property
    def usd_per_token(self) -> float:
        return self.row.usd_per_hour / 3600.0 / max(self.throughput_tps.value, 1e-9)

    def begin(self, now: float | None = None) -> None:
        if self.inflight == 0:
            self._busy_since = time.monotonic() if now is None else now
        self.inflight += 1

    def end(
        self,
        tokens: int,
        ttft_s: float | None = None,
        decode_s: float | None = None,
        completion_tokens: int = 0,
        now: float | None = None,
    ) -> None:
        now = time.monotonic() if now is None else now
        self.inflight = max(0, self.inflight - 1)
        self._tokens += tokens
        if self.inflight == 0 and self._busy_since is not None:
            self._busy_s += now - self._busy_since
            self._busy_since = None
        if ttft_s is not None:
            self.ttft_s.add(ttft_s)
        if decode_s and decode_s > 0 and completion_tokens > 1:
            self.decode_tps.add((completion_tokens - 1) / decode_s)

    def settle_throughput(self, now: float | None = None, min_busy_s: float = 1.0) -> None:
        """Fold the tokens and busy time since the last call into the throughput average."""
        now = time.monotonic() if now is None else now
        busy = self._busy_s
        if self._busy_since is not None:
            busy += now - self._busy_since
        if busy < min_busy_s or self._tokens == 0:
            return
        self.throughput_tps.add(self._tokens / busy)
        self._tokens = 0
        self._busy_s = 0.0
        if self._busy_since is not None:
            self._busy_since = now


def certifications(config: Config, row: Endpoint) -> frozenset[str]:
    """What an endpoint is certified for: its site's list on-prem, its cloud tier's full ratings."""
    if row.provider == ON_PREM:
        site = config.sites.get(row.site)
        return frozenset(site.compliance) if site else frozenset()
    provider = config.clouds.providers.get(row.provider)
    if provider is None:
        return frozenset()
    tier = config.clouds.tiers[provider.tier]
    return frozenset(name for name, level in tier.compliance.items() if level == "full")


def known_certifications(config: Config) -> frozenset[str]:
    """Every certification a site or a cloud tier names: what a caller may ask for."""
    names = {name.lower() for site in config.sites.values() for name in site.compliance}
    names.update(name.lower() for tier in config.clouds.tiers.values() for name in tier.compliance)
    return frozenset(names)


def infrastructure_level(config: Config, row: Endpoint) -> str | None:
    if row.provider == ON_PREM:
        return "on-prem"
    provider = config.clouds.providers.get(row.provider)
    return provider.tier if provider else None


def quality(config: Config, row: Endpoint) -> float:
    """The PRD §4 matrix rating of (level, tier, GPU) as a weight; 0.5 where the matrix is silent."""
    level = infrastructure_level(config, row)
    if level not in config.matrix.levels or row.gpu_type not in config.matrix.columns:
        return 0.5
    rating = config.matrix.levels[level][row.tier][config.matrix.columns.index(row.gpu_type)]
    return RATING_WEIGHT[rating]


class EndpointTable:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.settings = config.gateway
        self.by_key: dict[tuple[str, str, str], LiveEndpoint] = {}

    def live(self) -> list[LiveEndpoint]:
        return list(self.by_key.values())

    def sync(self, rows: list[Endpoint], now: float | None = None) -> None:
        """Take the registry's healthy rows (minus silent ones); a server on a new URL starts afresh."""
        now = time.time() if now is None else now
        current: dict[tuple[str, str, str], LiveEndpoint] = {}
        for row in rows:
            if not row.url:
                continue
            if (
                row.provider == ON_PREM
                and row.heartbeat_at is not None
                and now - row.heartbeat_at > self.config.serving.stale_after_s
            ):
                continue
            key = (row.provider, row.site, row.job_id)
            known = self.by_key.get(key)
            if known is not None and known.url == row.url:
                known.row = row
                current[key] = known
            else:
                current[key] = self._new(row)
        self.by_key = current

    def _new(self, row: Endpoint) -> LiveEndpoint:
        tier = self.config.tier(row.tier)
        alpha = self.settings.ewma_alpha
        circuit = self.settings.circuit
        return LiveEndpoint(
            row=row,
            certifications=certifications(self.config, row),
            quality=quality(self.config, row),
            network_ms=self.settings.network_latency_ms.get(row.provider, 0.0),
            circuit=CircuitBreaker(circuit.failures, circuit.open_s),
            ttft_s=Ewma(tier.ttft_p99_ms / 1000.0, alpha),
            decode_tps=Ewma(float(tier.tokens_per_s[0]), alpha),
            throughput_tps=Ewma(float(tier.tokens_per_s[0]), alpha),
        )
