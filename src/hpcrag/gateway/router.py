"""The tier router (PRD §9 made real): complexity → tier, then endpoints filtered, estimated and scored.

1. The tier: `auto` scores the request's complexity, adds the caller's quality boost and takes the
   first tier whose threshold is above it; `tier-m` (or the X-Hpcrag-Tier header) pins one; a model
   name means the tiers that serve that model.
2. Candidates: every healthy endpoint of the tier whose circuit is closed, that meets the caller's
   pins (site, provider), compliance needs (its site's or cloud tier's certifications) and limits
   (estimated time to first token, estimated dollars), each estimated from live measurements.
3. Score: cost, latency and quality, each relative to the best candidate of the tier, weighted by the
   caller's user tier (free leans on cost, enterprise on quality).
4. Fallback: when a tier has no candidate, the tiers below it in turn, then those above it (an
   unpinned `auto` request is better answered by a bigger model than not at all). A request also gets
   the later candidates as its retries.
Every decision keeps its scores and reasons for the ledger.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hpcrag.config import Config
from hpcrag.errors import HpcragError
from hpcrag.gateway.complexity import ComplexityScorer
from hpcrag.gateway.endpoints import EndpointTable, LiveEndpoint

AUTO = "auto"
TIER_PREFIX = "tier-"


class RoutingError(HpcragError):
    """No endpoint can take the request; `status` is the HTTP status the gateway answers with."""

    def __init__(self, status: int, code: str, message: str, decision: dict[str, Any] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.decision = decision or {}


@dataclass(frozen=True)
class RouteRequest:
    model: str
    text: str
    output_tokens: int
    user_tier: str
    compliance: frozenset[str] = frozenset()
    quality: str = "medium"
    max_ttft_ms: float | None = None
    max_cost_usd: float | None = None
    tier: str | None = None
    site: str | None = None
    provider: str | None = None

    @property
    def model_tier(self) -> str | None:
        """The tier a `tier-m` model names, else None."""
        return self.model[len(TIER_PREFIX) :] if self.model.startswith(TIER_PREFIX) else None

    @property
    def prompt_tokens(self) -> int:
        return max(1, len(self.text) // 4)  # the PRD's estimate: about 4 characters a token


@dataclass
class Candidate:
    endpoint: LiveEndpoint
    ttft_ms: float
    latency_ms: float
    cost_usd: float
    score: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        e = self.endpoint
        return {
            "endpoint": e.name,
            "tier": e.tier,
            "ttft_ms": round(self.ttft_ms, 1),
            "latency_ms": round(self.latency_ms, 1),
            "cost_usd": self.cost_usd,
            "score": round(self.score, 4),
            "basis": {"ttft": e.ttft_s.basis, "throughput": e.throughput_tps.basis},
        }


@dataclass
class Decision:
    wanted_tier: str
    reason: str
    candidates: list[Candidate]
    complexity: float | None = None
    adjusted: float | None = None
    rejected: list[dict[str, str]] = field(default_factory=list)

    @property
    def fallback(self) -> bool:
        return bool(self.candidates) and self.candidates[0].endpoint.tier != self.wanted_tier

    def record(self) -> dict[str, Any]:
        return {
            "wanted_tier": self.wanted_tier,
            "complexity": self.complexity,
            "adjusted": self.adjusted,
            "reason": self.reason,
            "fallback": self.fallback,
            "candidates": [c.as_dict() for c in self.candidates[:5]],
            "rejected": self.rejected[:10],
        }


class Router:
    def __init__(self, config: Config, table: EndpointTable, scorer: ComplexityScorer) -> None:
        self.config = config
        self.settings = config.gateway
        self.table = table
        self.scorer = scorer
        self.tiers = list(config.tiers)

    def tier_for(self, score: float, quality: str) -> tuple[float, str]:
        adjusted = score + self.settings.quality_boost[quality]
        for tier in self.tiers:
            if adjusted < self.settings.complexity_thresholds[tier]:
                return adjusted, tier
        return adjusted, self.tiers[-1]

    def route(self, request: RouteRequest) -> Decision:
        self._check(request)
        endpoints = self.table.live()
        complexity = adjusted = None
        model_tier = request.model_tier
        if request.tier is not None and model_tier is not None and request.tier != model_tier:
            raise RoutingError(
                400,
                "conflicting_tier",
                f"model {request.model!r} and X-Hpcrag-Tier {request.tier!r} name different tiers; "
                "give one of them",
            )
        pinned = request.tier or model_tier
        if pinned is not None:
            wanted, order, reason = pinned, [pinned], f"tier {pinned} pinned by the caller"
        elif request.model == AUTO:
            complexity = self.scorer.score(request.text)
            adjusted, wanted = self.tier_for(complexity, request.quality)
            below = self.tiers[: self.tiers.index(wanted)][::-1]
            above = self.tiers[self.tiers.index(wanted) + 1 :]
            order = [wanted, *below, *above]
            reason = (
                f"complexity {complexity:.2f} + quality {request.quality} = {adjusted:.2f} -> tier {wanted}"
            )
        else:
            serving = [e for e in endpoints if request.model in (e.row.served_name, e.row.model)]
            if not serving:
                raise RoutingError(404, "model_not_found", self._unknown_model(request.model, endpoints))
            order = list(dict.fromkeys(e.tier for e in serving))
            wanted, reason = order[0], f"model {request.model} is served by tier(s) {', '.join(order)}"
            endpoints = serving
        decision = Decision(wanted, reason, [], complexity, adjusted)
        for tier in order:
            viable = [c for e in endpoints if e.tier == tier if (c := self._consider(e, request, decision))]
            self._score(viable, request.user_tier)
            decision.candidates.extend(sorted(viable, key=lambda c: -c.score))
        if not decision.candidates:
            why = "; ".join(f"{r['endpoint']}: {r['why']}" for r in decision.rejected[:6])
            raise RoutingError(
                503,
                "no_endpoint",
                f"no endpoint can take this request (tiers tried: {', '.join(order)})"
                + (f": {why}" if why else ": no healthy server of those tiers is registered")
                + "; see `hpcrag serve status`",
                decision.record(),
            )
        if decision.fallback:
            decision.reason += f"; fallback to tier {decision.candidates[0].endpoint.tier}"
        return decision

    def _check(self, request: RouteRequest) -> None:
        if request.quality not in self.settings.quality_boost:
            raise RoutingError(
                400,
                "invalid_quality",
                f"unknown quality {request.quality!r}; one of: {', '.join(self.settings.quality_boost)}",
            )
        tier = request.tier or request.model_tier
        if tier is not None and tier not in self.tiers:
            raise RoutingError(
                400,
                "invalid_tier",
                f"unknown tier {tier!r}; tiers: {', '.join(self.tiers)} "
                f"(as model: {', '.join(TIER_PREFIX + t for t in self.tiers)} or {AUTO})",
            )
        if request.user_tier not in self.settings.user_tiers:
            raise RoutingError(
                400,
                "invalid_user_tier",
                f"unknown user tier {request.user_tier!r}; one of: {', '.join(self.settings.user_tiers)}",
            )

    def _unknown_model(self, model: str, endpoints: list[LiveEndpoint]) -> str:
        served = sorted({e.row.served_name for e in endpoints})
        return (
            f"model {model!r} is not served here; served: {', '.join(served) or '(none)'}; "
            f"or name a tier ({', '.join(TIER_PREFIX + t for t in self.tiers)}) or {AUTO!r}"
        )

    def _consider(self, e: LiveEndpoint, request: RouteRequest, decision: Decision) -> Candidate | None:
        why = None
        if request.site is not None and e.row.site != request.site:
            why = f"site {e.row.site}, pinned to {request.site}"
        elif request.provider is not None and e.row.provider != request.provider:
            why = f"provider {e.row.provider}, pinned to {request.provider}"
        elif not e.circuit.allows():
            why = "circuit open after repeated failures"
        elif missing := sorted(request.compliance - e.certifications):
            why = f"not certified for {', '.join(missing)}"
        if why is None:
            candidate = self.estimate(e, request)
            if request.max_ttft_ms is not None and candidate.ttft_ms > request.max_ttft_ms:
                why = f"estimated TTFT {candidate.ttft_ms:.0f} ms > limit {request.max_ttft_ms:.0f} ms"
            elif request.max_cost_usd is not None and candidate.cost_usd > request.max_cost_usd:
                why = f"estimated ${candidate.cost_usd:.6f} > limit ${request.max_cost_usd:.6f}"
            else:
                return candidate
        decision.rejected.append({"endpoint": e.name, "tier": e.tier, "why": why})
        return None

    def estimate(self, e: LiveEndpoint, request: RouteRequest) -> Candidate:
        """PRD §9: base latency (measured TTFT) + queue depth x time per request + network."""
        per_request_s = e.ttft_s.value + request.output_tokens / max(e.decode_tps.value, 1e-9)
        queue_s = max(e.waiting, 0.0) * per_request_s
        ttft_ms = e.network_ms + 1000.0 * (e.ttft_s.value + queue_s)
        latency_ms = e.network_ms + 1000.0 * (queue_s + per_request_s)
        cost = (request.prompt_tokens + request.output_tokens) * e.usd_per_token
        return Candidate(e, ttft_ms, latency_ms, cost)

    def _score(self, candidates: list[Candidate], user_tier: str) -> None:
        if not candidates:
            return
        weights = self.settings.user_tiers[user_tier]
        best_cost = min(c.cost_usd for c in candidates)
        best_latency = min(c.latency_ms for c in candidates)
        for c in candidates:
            cost_score = best_cost / c.cost_usd if c.cost_usd > 0 else 1.0
            latency_score = best_latency / c.latency_ms if c.latency_ms > 0 else 1.0
            c.score = (
                weights.cost * cost_score
                + weights.latency * latency_score
                + weights.quality * c.endpoint.quality
            )
