"""Configuration selection (PRD §4 "Configuration Selection Algorithm") on the catalogue's data.

From a task complexity, a TTFT limit, a budget per 1K tokens, compliance needs and the GPU types
available, every (infrastructure level, GPU, provider or site) the matrix does not rule out is sized
and priced, filtered, and scored; the answer keeps the whole reasoning: the winner, the runners-up and
why each rejected configuration was rejected.

Estimates, stated so they can be checked:
- decode speed of one request: memory-bound, tp x bandwidth x DECODE_EFFICIENCY / bytes of the active
  weights (the PRD's $/1K-token table implies ~340 tokens/s for an AWQ 3B model on an L40S, which this
  gives with an efficiency of 0.6);
- $/1K tokens = $/hour of the replica's GPUs / (tokens/s x 3.6), one request at a time, as in the PRD's
  table (batching divides it);
- TTFT p99 = TTFT_P99_FACTOR x prefill time of `prompt_tokens` at PREFILL_MFU of the GPUs' dense FP16
  throughput, the factor standing for queueing behind other prefills.
- compliance: a level is eligible when every requirement is fully met there (clouds.yaml, the PRD §13
  matrix) or, on-prem, listed by a site.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from hpcrag.catalog.matrix import RATING_WEIGHT, rating
from hpcrag.catalog.memory import PRECISION_BYTES, MemoryPlan, plan_for_model
from hpcrag.catalog.parallel import choose, precision_on
from hpcrag.config import Config
from hpcrag.config.loader import ON_PREM_LEVEL
from hpcrag.errors import HpcragError

COMPLEXITY_TIER = {"simple": "s", "moderate": "m", "complex": "l", "frontier": "xl"}
DECODE_EFFICIENCY = 0.6
PREFILL_MFU = 0.4
TTFT_P99_FACTOR = 2.0


@dataclass(frozen=True)
class Candidate:
    infra: str
    gpu: str
    provider: str
    rating: str
    precision: str
    tp: int
    pp: int
    usd_per_hour: float
    tokens_per_s: float
    usd_per_1k_tokens: float
    ttft_p99_ms: float
    score: float = 0.0
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Rejection:
    infra: str
    gpu: str
    provider: str
    reason: str


@dataclass
class Selection:
    tier: str
    model: str
    chosen: Candidate | None
    ranked: list[Candidate] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "tier": self.tier,
            "model": self.model,
            "chosen": asdict(self.chosen) if self.chosen else None,
            "ranked": [asdict(c) for c in self.ranked],
            "rejected": [asdict(r) for r in self.rejected],
        }


def eligible_levels(config: Config, compliance: list[str]) -> dict[str, str | None]:
    """Each level -> None when eligible, else the requirement it misses."""
    wanted = [c.lower() for c in compliance]
    known = {c for tier in config.clouds.tiers.values() for c in tier.compliance}
    known |= {c for site in config.sites.values() for c in site.compliance}
    unknown = [c for c in wanted if c not in known]
    if unknown:
        raise HpcragError(f"unknown compliance requirement {unknown[0]!r}; known: {', '.join(sorted(known))}")
    result: dict[str, str | None] = {}
    for level in config.matrix.levels:
        if level == ON_PREM_LEVEL:
            offered = {c for site in config.sites.values() for c in site.compliance}
            missing = [c for c in wanted if c not in offered]
        else:
            full = {k for k, v in config.clouds.tiers[level].compliance.items() if v == "full"}
            missing = [c for c in wanted if c not in full]
        result[level] = f"does not fully meet {', '.join(missing)}" if missing else None
    return result


def offers(config: Config, level: str, gpu: str) -> list[tuple[str, float]]:
    """(provider or site, $/GPU-hour) offering `gpu` at an infrastructure level."""
    if level == ON_PREM_LEVEL:
        return [
            (f"site:{name}", site.gpu_price_usd_per_hour[gpu])
            for name, site in config.sites.items()
            if gpu in site.gpu_price_usd_per_hour
        ]
    return [
        (name, provider.gpus[gpu].usd_per_gpu_hour)
        for name, provider in config.clouds.providers.items()
        if provider.tier == level and gpu in provider.gpus
    ]


def select(
    config: Config,
    complexity: str,
    latency_ms: float,
    budget_per_1k: float,
    compliance: list[str] | None = None,
    available_gpus: list[str] | None = None,
    model: str | None = None,
    precision: str = "fp8",
    prompt_tokens: int = 1024,
) -> Selection:
    """Every configuration the matrix allows for the complexity's tier, sized, priced and ranked."""
    if complexity not in COMPLEXITY_TIER:
        raise HpcragError(f"unknown complexity {complexity!r}; valid: {', '.join(COMPLEXITY_TIER)}")
    if latency_ms <= 0 or budget_per_1k <= 0:
        raise HpcragError("latency and budget must be > 0")
    for gpu in available_gpus or []:
        config.gpu(gpu)
    tier_name = COMPLEXITY_TIER[complexity]
    tier = config.tier(tier_name)
    model = model or tier.models[0]
    config.model(model)
    levels = eligible_levels(config, compliance or [])
    selection = Selection(tier=tier_name, model=model, chosen=None)
    candidates: list[Candidate] = []
    for level, excluded in levels.items():
        for gpu_name in config.matrix.columns:
            for provider, price in offers(config, level, gpu_name):
                if excluded:
                    outcome: Candidate | str = f"compliance: {level} {excluded}"
                elif available_gpus is not None and gpu_name not in available_gpus:
                    outcome = "GPU type not available"
                else:
                    limits = (latency_ms, budget_per_1k, precision, prompt_tokens)
                    outcome = _evaluate(config, tier_name, model, level, gpu_name, provider, price, limits)
                if isinstance(outcome, str):
                    selection.rejected.append(Rejection(level, gpu_name, provider, outcome))
                else:
                    candidates.append(outcome)
    if candidates:
        cheapest = min(c.usd_per_1k_tokens for c in candidates)
        scored = [
            Candidate(**{**asdict(c), "score": RATING_WEIGHT[c.rating] * cheapest / c.usd_per_1k_tokens})
            for c in candidates
        ]
        scored.sort(key=lambda c: (-c.score, c.usd_per_1k_tokens, c.ttft_p99_ms, c.provider))
        selection.ranked = scored
        selection.chosen = scored[0]
    return selection


def _evaluate(
    config: Config,
    tier_name: str,
    model: str,
    level: str,
    gpu_name: str,
    provider: str,
    price: float,
    limits: tuple[float, float, str, int],
) -> Candidate | str:
    """A sized and priced candidate, or the reason it is rejected."""
    latency_ms, budget_per_1k, precision, prompt_tokens = limits
    cell = rating(config, level, tier_name, gpu_name)
    if cell == "not-recommended":
        return f"PRD matrix: tier {tier_name.upper()} on {gpu_name} at {level} is not recommended"
    tier = config.tier(tier_name)
    arch = config.model(model)
    gpu = config.gpu(gpu_name)
    used, note = precision_on(precision, gpu_name, gpu)
    plan = plan_for_model(model, arch, used, tier.context.typical, tier.batch)
    layout = choose(plan, gpu_name, gpu, config.serving.gpu_memory_utilization)
    if layout is None:
        return f"{model} in {used} does not fit on {gpu_name} even on several full nodes"
    active = arch.active_params_b or arch.params_b
    tokens_s = decode_tokens_per_s(plan, active, gpu, layout.tp)
    hourly = price * layout.gpus
    cost = hourly / (tokens_s * 3.6)
    ttft = ttft_p99_ms(active, prompt_tokens, gpu, layout.gpus)
    if ttft > latency_ms:
        return f"estimated TTFT p99 {ttft:.0f} ms > limit {latency_ms:.0f} ms"
    if cost > budget_per_1k:
        return f"estimated ${cost:.4f}/1K tokens > budget ${budget_per_1k:.4f}"
    notes = (note,) if note else ()
    return Candidate(
        level, gpu_name, provider, cell, used, layout.tp, layout.pp, hourly, tokens_s, cost, ttft, notes=notes
    )


def decode_tokens_per_s(plan: MemoryPlan, active_params_b: float, gpu: Any, tp: int) -> float:
    weight_bytes = active_params_b * 1e9 * PRECISION_BYTES[plan.precision]
    return tp * gpu.bandwidth_tbs * 1e12 * DECODE_EFFICIENCY / weight_bytes


def ttft_p99_ms(active_params_b: float, prompt_tokens: int, gpu: Any, gpus: int) -> float:
    flops = 2 * active_params_b * 1e9 * prompt_tokens
    return TTFT_P99_FACTOR * flops / (gpus * gpu.fp16_tflops * 1e12 * PREFILL_MFU) * 1e3
