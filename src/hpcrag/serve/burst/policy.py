"""When to burst a tier to the cloud, and when to give the capacity back.

Burst when the tier's requests wait longer than `wait_threshold_s` and neither site can start another
replica soon: no node of the tier's partition has enough free GPUs of a type that holds the model, or
jobs already wait on that partition. Scale back a burst server that has had no running or waiting
request for `idle_s` while the tier no longer waits. Providers are tried in the configured order; on
each, the best-rated GPU type (PRD matrix at the provider's level) that holds the tier's model.
"""

from __future__ import annotations

from dataclasses import dataclass

from hpcrag.catalog.matrix import RATING_WEIGHT, rating
from hpcrag.catalog.memory import plan_for_model
from hpcrag.catalog.parallel import choose, precision_on
from hpcrag.config import Config
from hpcrag.errors import HpcragError
from hpcrag.serve.burst.base import BurstRequest
from hpcrag.serve.burst.registry import adapter_for
from hpcrag.serve.client import backend_ssl_context
from hpcrag.serve.load import scrape
from hpcrag.serve.registry import Endpoint, Registry, now
from hpcrag.serve.spec import ModelDoesNotFitError, size_replica
from hpcrag.serve.supervisor import PROVIDER as SLURM_PROVIDER
from hpcrag.slurm.status import site_status
from hpcrag.slurm.target import SlurmTarget


@dataclass(frozen=True)
class SiteCapacity:
    site: str
    partition: str
    free_gpus_on_one_node: dict[str, int]
    gpus_per_replica: dict[str, int]
    pending_jobs: int

    def can_start(self) -> bool:
        """A replica fits on one node now, and nothing already waits for the partition."""
        return self.pending_jobs == 0 and any(
            self.free_gpus_on_one_node.get(gpu, 0) >= need for gpu, need in self.gpus_per_replica.items()
        )

    def describe(self) -> str:
        free = ", ".join(f"{g}: {n}" for g, n in self.free_gpus_on_one_node.items()) or "none"
        need = ", ".join(f"{g}: {n}" for g, n in self.gpus_per_replica.items()) or "no GPU type holds it"
        return (
            f"{self.site}/{self.partition}: most free GPUs on a node {free}; a replica needs {need}; "
            f"{self.pending_jobs} job(s) pending"
        )


@dataclass(frozen=True)
class Decision:
    action: str  # burst | scale-down | hold
    reason: str
    endpoint: Endpoint | None = None


def site_capacity(config: Config, site: str, tier: str) -> SiteCapacity:
    partition = config.tier(tier).partition
    status = site_status(SlurmTarget.for_site(config.site(site)))
    best: dict[str, int] = {}
    for node in status.nodes:
        if partition not in node.partitions or not node.state.lower().startswith(("idle", "mix", "alloc")):
            continue
        for gpu_type, count in node.gpus.items():
            best[gpu_type] = max(best.get(gpu_type, 0), count.free)
    pending = sum(1 for job in status.jobs if job["partition"] == partition and job["state"] == "PENDING")
    return SiteCapacity(site, partition, best, replica_gpus(config, site, tier), pending)


def replica_gpus(config: Config, site: str, tier: str) -> dict[str, int]:
    """GPUs of each type of the tier's partition that one replica asks for, as `serve up` sizes it."""
    partition = config.tier(tier).partition
    needs = {}
    for gpu_type in config.site(site).partition_gpu_types(partition):
        try:
            needs[gpu_type] = size_replica(config, site, tier, gpu_type=gpu_type).layout.gpus
        except ModelDoesNotFitError:
            continue
    return needs


def burst_request(config: Config, provider: str, tier: str) -> BurstRequest | None:
    """The best GPU type of `provider` for the tier's default model, or None if none holds it."""
    tier_spec = config.tier(tier)
    model = tier_spec.models[0]
    arch = config.model(model)
    level = config.clouds.providers[provider].tier
    offered = config.clouds.providers[provider].gpus
    ordered = sorted(offered, key=lambda g: -RATING_WEIGHT[rating(config, level, tier, g)])
    for gpu_name in ordered:
        if rating(config, level, tier, gpu_name) == "not-recommended":
            continue
        gpu = config.gpu(gpu_name)
        precision, _ = precision_on("fp8", gpu_name, gpu)
        plan = plan_for_model(model, arch, precision, tier_spec.context.typical, tier_spec.batch)
        layout = choose(plan, gpu_name, gpu, config.serving.gpu_memory_utilization)
        if layout is None or layout.pp > 1:
            continue
        args = [
            f"--tensor-parallel-size={layout.tp}",
            f"--max-model-len={tier_spec.context.typical}",
            f"--gpu-memory-utilization={config.serving.gpu_memory_utilization:g}",
            "--enable-prefix-caching",
            "--enable-chunked-prefill",
        ]
        if precision == "fp8":
            args.append("--quantization=fp8")
        return BurstRequest(
            provider=provider,
            tier=tier,
            model=model,
            hf_id=arch.hf_id,
            gpu_type=gpu_name,
            gpus=layout.tp,
            instance_type=offered[gpu_name].instance,
            usd_per_hour=offered[gpu_name].usd_per_gpu_hour * layout.tp,
            vllm_args=tuple(args),
        )
    return None


class BurstPolicy:
    def __init__(self, config: Config, registry: Registry) -> None:
        self.config = config
        self.registry = registry
        self.settings = config.serving.burst

    def evaluate(self, tier: str, observed_wait_s: float) -> list[Decision]:
        self.config.tier(tier)
        tier = tier.lower()
        decisions = self._scale_down(tier, observed_wait_s)
        if observed_wait_s <= self.settings.wait_threshold_s:
            return decisions or [
                Decision(
                    "hold",
                    f"tier {tier} waits {observed_wait_s:.1f} s <= {self.settings.wait_threshold_s:.0f} s",
                )
            ]
        starting = [e for e in self.registry.find(tier=tier, live_only=True) if e.provider != SLURM_PROVIDER]
        starting = [e for e in starting if e.state != "healthy"]
        if starting:
            first = starting[0]
            return [
                *decisions,
                Decision("hold", f"burst server {first.provider} {first.job_id} is still starting"),
            ]
        capacities = [site_capacity(self.config, site, tier) for site in self.config.sites]
        startable = [c for c in capacities if c.can_start()]
        if startable:
            return [
                *decisions,
                Decision("hold", f"a site can start tier {tier} now: {startable[0].describe()}"),
            ]
        saturated = "; ".join(c.describe() for c in capacities)
        for provider in self.settings.providers:
            request = burst_request(self.config, provider, tier)
            if request is None:
                continue
            endpoint = self.registry.add(adapter_for(self.config, provider).launch(request))
            waits = f"tier {tier} waits {observed_wait_s:.1f} s > {self.settings.wait_threshold_s:.0f} s"
            where = f"{request.gpus} x {request.gpu_type} on {provider} ({request.instance_type})"
            reason = f"{waits} and no site can start it ({saturated}): {where}, ${request.usd_per_hour:.2f}/h"
            return [*decisions, Decision("burst", reason, endpoint)]
        raise HpcragError(
            f"tier {tier} should burst but no provider in serving.burst.providers "
            f"({', '.join(self.settings.providers)}) offers a GPU that holds its model"
        )

    def _scale_down(self, tier: str, observed_wait_s: float) -> list[Decision]:
        decisions = []
        verify = backend_ssl_context(self.config)  # https servers signed by the site's CA
        for endpoint in self.registry.find(tier=tier, live_only=True):
            if endpoint.provider == SLURM_PROVIDER:
                continue
            adapter = adapter_for(self.config, endpoint.provider)
            changes = adapter.refresh(endpoint)
            # Unreachable counts as not busy.
            load = scrape(endpoint.url, verify=verify) if endpoint.url else None
            if load is not None and load.busy:
                changes["details"] = {**endpoint.details, "last_busy_at": now()}
            if changes:
                endpoint = self.registry.update(endpoint.provider, endpoint.site, endpoint.job_id, **changes)
            if not endpoint.live:
                continue
            last = endpoint.details.get("last_busy_at") or endpoint.healthy_at or endpoint.started_at or now()
            idle_for = now() - float(last)
            if observed_wait_s <= self.settings.wait_threshold_s and idle_for >= self.settings.idle_s:
                adapter.terminate(endpoint)
                stopped = self.registry.update(
                    endpoint.provider,
                    endpoint.site,
                    endpoint.job_id,
                    state="stopped",
                    stopped_at=now(),
                    url=None,
                    secret=None,
                    message=f"idle {idle_for:.0f} s: scaled down",
                )
                decisions.append(
                    Decision(
                        "scale-down", f"{endpoint.provider} {endpoint.job_id} idle {idle_for:.0f} s", stopped
                    )
                )
        return decisions
