"""The launch spec of one vLLM replica: GPU type and count, precision, and the server's arguments.

From (site, tier, model, precision), sized by the catalogue's memory planner: the GPU type is the
partition's best-rated one (PRD on-prem matrix) that holds the model, tensor parallelism the smallest
power of two that fits with headroom, and the arguments follow the PRD's deployment section
(--tensor-parallel-size, --quantization, --max-model-len, --gpu-memory-utilization, prefix caching,
chunked prefill) plus the NCCL environment that tensor parallelism needs inside one node. Where the
server listens (`bind`) and its certificate, when it speaks HTTPS, come from the site's `vllm:` block.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from hpcrag.catalog.matrix import RATING_WEIGHT, rating
from hpcrag.catalog.memory import BATCHED_TOKENS, check_precision, plan_for_model
from hpcrag.catalog.parallel import Parallelism, choose, precision_on
from hpcrag.config import Config
from hpcrag.config.loader import ON_PREM_LEVEL
from hpcrag.config.schema import UnknownNameError
from hpcrag.errors import HpcragError
from hpcrag.serve.runtime import check_runtime, command, model_location

# FP8 is the one precision vLLM quantizes to on the fly; the others need a checkpoint quantized
# beforehand, whose config tells vLLM the method, so they get no flag but a note.
ON_THE_FLY = {"fp8": "fp8"}
PREQUANTIZED = ("awq", "gptq", "int4", "int8", "fp4")
AUTO_PRECISIONS = ("bf16", "fp8", "awq")
TP_ENV = {"NCCL_P2P_LEVEL": "NVL", "VLLM_WORKER_MULTIPROC_METHOD": "spawn"}


class ModelDoesNotFitError(HpcragError):
    """No GPU type of the partition can hold the model in one node."""


@dataclass(frozen=True)
class LaunchSpec:
    site: str
    tier: str
    partition: str
    model: str
    served_name: str
    gpu_type: str
    precision: str
    tp: int
    max_model_len: int
    per_gpu_gb: float
    usd_per_hour: float
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    bind: str | None = None  # None: the node's advertised address
    certfile: str | None = None
    keyfile: str | None = None

    @property
    def gpus(self) -> int:
        return self.tp

    @property
    def scheme(self) -> str:
        return "https" if self.certfile else "http"

    def argv_with_port(self, host: str, port: int) -> list[str]:
        argv = [*self.argv, "--host", host, "--port", str(port)]
        if self.certfile and self.keyfile:
            argv += ["--ssl-certfile", self.certfile, "--ssl-keyfile", self.keyfile]
        return argv

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_model(config: Config, site: str, tier: str) -> str:
    runtime = config.site(site).vllm
    if runtime is not None and tier in runtime.tier_models:
        return runtime.tier_models[tier]
    return config.tier(tier).models[0]


@dataclass(frozen=True)
class ReplicaSize:
    """How one replica is laid out: model, precision, context and GPUs (no environment involved)."""

    partition: str
    model: str
    precision: str
    context: int
    layout: Parallelism
    note: str | None


def size_replica(
    config: Config,
    site: str,
    tier: str,
    model: str | None = None,
    precision: str = "auto",
    gpu_type: str | None = None,
    max_model_len: int | None = None,
) -> ReplicaSize:
    """The partition's best-rated GPU type that holds the model in one node, and its TP size."""
    site_config = config.site(site)
    tier = tier.lower()
    tier_spec = config.tier(tier)
    partition = site_config.partition(tier_spec.partition).name
    model = model or default_model(config, site, tier)
    arch = config.model(model)
    types = site_config.partition_gpu_types(partition)
    if gpu_type is not None and gpu_type not in types:
        raise UnknownNameError("GPU type", gpu_type, types, f"on partition {site}/{partition}")
    context = max_model_len or min(tier_spec.context.typical, arch.max_context)
    precisions = AUTO_PRECISIONS if precision == "auto" else (check_precision(precision),)
    per_node = {g.gpu_type: g.gpus_per_node for g in site_config.node_groups}
    # Best-rated GPU type first (PRD on-prem matrix), then the partition's order.
    ordered = sorted(
        [gpu_type] if gpu_type else types,
        key=lambda g: -RATING_WEIGHT[rating(config, ON_PREM_LEVEL, tier, g)],
    )
    tried: list[str] = []
    for wanted in precisions:
        for gpu_name in ordered:
            gpu = config.gpu(gpu_name)
            used, note = precision_on(wanted, gpu_name, gpu)
            if precision == "auto" and note:
                continue
            plan = plan_for_model(model, arch, used, context, tier_spec.batch)
            layout = choose(plan, gpu_name, gpu, config.serving.gpu_memory_utilization, per_node[gpu_name])
            if layout is None or layout.pp > 1:
                need = plan.per_gpu_gb(min(8, per_node[gpu_name]))
                tried.append(f"{gpu_name} in {used}: {need:.0f} GB per GPU at TP={per_node[gpu_name]}")
                continue
            return ReplicaSize(partition, model, used, context, layout, note)
    raise ModelDoesNotFitError(
        f"{model} does not fit on any GPU of partition {site}/{partition} within one node "
        f"({'; '.join(tried)}); use a lower --precision (fp8, awq), a shorter --max-model-len, "
        "or a tier whose partition has larger GPUs"
    )


def build_spec(
    config: Config,
    site: str,
    tier: str,
    model: str | None = None,
    precision: str = "auto",
    gpu_type: str | None = None,
    max_model_len: int | None = None,
) -> LaunchSpec:
    """Validate everything a launch needs and size it; every refusal names the fix."""
    size = size_replica(config, site, tier, model, precision, gpu_type, max_model_len)
    runtime = check_runtime(config, site)
    return _spec(config, site, tier.lower(), size, runtime)


def _spec(config: Config, site: str, tier: str, size: ReplicaSize, runtime: Any) -> LaunchSpec:
    model, precision, layout, context = size.model, size.precision, size.layout, size.context
    served_name = model
    args = [
        "--model",
        model_location(config, runtime, model),
        "--served-model-name",
        served_name,
        "--max-model-len",
        str(context),
        "--enable-prefix-caching",
        "--enable-chunked-prefill",
        "--max-num-batched-tokens",
        str(BATCHED_TOKENS),
    ]
    if runtime.device == "cuda":
        args += [
            "--tensor-parallel-size",
            str(layout.tp),
            "--gpu-memory-utilization",
            f"{config.serving.gpu_memory_utilization:g}",
        ]
    notes = [size.note] if size.note else []
    if precision in ON_THE_FLY:
        args += ["--quantization", ON_THE_FLY[precision]]
    elif precision in PREQUANTIZED:
        notes.append(
            f"{precision.upper()} weights need a checkpoint of {model} quantized beforehand: map one under "
            "vllm.model_paths in the site's YAML (vLLM reads the method from its config)"
        )
    elif precision in ("fp16", "bf16") and runtime.device == "cuda":
        args += ["--dtype", {"fp16": "float16", "bf16": "bfloat16"}[precision]]
    args += runtime.args
    env = dict(runtime.env)
    if layout.tp > 1:
        env = {**TP_ENV, **env}
    price = config.site(site).gpu_price_usd_per_hour.get(layout.gpu, 0.0) * layout.gpus
    tls = runtime.tls
    return LaunchSpec(
        site=site,
        tier=tier,
        partition=size.partition,
        model=model,
        served_name=served_name,
        gpu_type=layout.gpu,
        precision=precision,
        tp=layout.tp,
        max_model_len=context,
        per_gpu_gb=layout.per_gpu_gb,
        usd_per_hour=price,
        argv=command(config, runtime, args),
        env=env,
        notes=notes,
        bind=runtime.bind,
        certfile=str(config.resolve_path(tls.certfile)) if tls else None,
        keyfile=str(config.resolve_path(tls.keyfile)) if tls else None,
    )
