"""Pydantic models of `site-configs/`: each file's shape and the rules that hold inside one file.

Rules that span files (a site's GPU type must be in the catalogue, a profile's site must exist) are
checked by the loader, which knows which file to blame.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import hostlist
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    PositiveInt,
    StringConstraints,
    field_validator,
    model_validator,
)

from hpcrag.config.rag_schema import RagSettings
from hpcrag.errors import HpcragError

Name = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9-]*$")]
Port = Annotated[int, Field(ge=1024, le=65535)]
ModelTier = Literal["s", "m", "l", "xl"]
PriceBasis = Literal["prd-cost-table", "tier-reference", "gpu-range-high"]
Rating = Literal["recommended", "viable", "marginal", "not-recommended"]
Priority = Literal["production-critical", "production-standard", "batch-processing", "development"]

# Slurm's time formats for MaxTime: "minutes", "HH:MM:SS", "D-HH", "D-HH:MM", "D-HH:MM:SS",
# plus "UNLIMITED". We accept the unambiguous ones people write in partitions.
_SLURM_TIME = re.compile(r"^(UNLIMITED|(\d+-)?\d{1,3}:\d{2}(:\d{2})?|\d+)$")


class UnknownNameError(HpcragError):
    """A name (site, partition, GPU type, provider) that is not configured."""

    def __init__(self, kind: str, name: str, valid: list[str], where: str = "") -> None:
        scope = f" {where}" if where else ""
        plural = f"{kind[:-1]}ies" if kind.endswith("y") else f"{kind}s"
        super().__init__(f"unknown {kind} {name!r}{scope}; valid {plural}: {', '.join(valid) or '(none)'}")


def expand_nodes(expression: str) -> list[str]:
    """Expand a Slurm hostlist ("node[1-4],gpu7") into node names, with a clear error."""
    try:
        names = hostlist.expand_hostlist(expression)
    except hostlist.BadHostlist as exc:
        raise ValueError(f"bad Slurm hostlist {expression!r}: {exc}") from None
    if not names:
        raise ValueError("empty Slurm hostlist")
    return names


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GpuType(_Model):
    display_name: str
    vram_gb: PositiveInt
    bandwidth_tbs: float = Field(gt=0)
    fp8: bool
    fp4: bool
    price_range_usd_per_hour: tuple[NonNegativeFloat, NonNegativeFloat]
    best_for: list[ModelTier]
    fp16_tflops: float = Field(gt=0)


class GpuCatalog(_Model):
    gpus: dict[Name, GpuType] = Field(min_length=1)


class TierContext(_Model):
    typical: PositiveInt
    max: PositiveInt


class ModelTierSpec(_Model):
    display_name: str
    params_b: tuple[float, float]
    models: list[str] = Field(min_length=1)
    use_cases: list[str]
    memory_gb: dict[str, float]
    tokens_per_s: tuple[float, float]
    ttft_p99_ms: PositiveInt
    context: TierContext
    batch: PositiveInt
    partition: Name


class TierCatalog(_Model):
    tiers: dict[ModelTier, ModelTierSpec] = Field(min_length=4)


class ModelArch(_Model):
    """A model's shape, as far as memory planning needs it."""

    hf_id: str
    params_b: float = Field(gt=0)
    active_params_b: float | None = Field(default=None, gt=0)
    layers: PositiveInt
    hidden: PositiveInt
    heads: PositiveInt
    attention: Literal["gqa", "mla"] = "gqa"
    kv_heads: PositiveInt | None = None
    head_dim: PositiveInt | None = None
    kv_lora_rank: PositiveInt | None = None
    rope_head_dim: PositiveInt | None = None
    vocab: PositiveInt
    max_context: PositiveInt

    @model_validator(mode="after")
    def _attention_fields(self) -> ModelArch:
        needed = ("kv_heads", "head_dim") if self.attention == "gqa" else ("kv_lora_rank", "rope_head_dim")
        missing = [name for name in needed if getattr(self, name) is None]
        if missing:
            raise ValueError(f"attention {self.attention} needs {', '.join(missing)}")
        return self


class ModelCatalog(_Model):
    models: dict[str, ModelArch] = Field(min_length=1)


class Matrix(_Model):
    """PRD §4: for each infrastructure level, a rating per model tier and GPU column."""

    columns: list[Name] = Field(min_length=1)
    levels: dict[Name, dict[str, Any]]


class ContainerRuntime(_Model):
    image: str
    engine: Literal["apptainer", "singularity"] = "apptainer"


class ServerTls(_Model):
    """The certificate (PEM chain) and unencrypted key a site's vLLM servers present over HTTPS."""

    certfile: str
    keyfile: str


class VllmRuntime(_Model):
    """Where a site's vLLM lives: a Python interpreter (optionally after `module load`) or a container,
    and where it listens: `bind` (unset: the node's advertised address; "0.0.0.0" for every interface)
    and, with `tls`, HTTPS.

    Relative paths are taken from the folder that holds `site-configs/`.
    """

    python: str | None = None
    modules: list[str] = []
    container: ContainerRuntime | None = None
    device: Literal["cuda", "cpu"] = "cuda"
    model_root: str | None = None
    model_paths: dict[str, str] = {}
    tier_models: dict[ModelTier, str] = {}
    args: list[str] = []
    env: dict[str, str] = {}
    bind: str | None = None
    tls: ServerTls | None = None

    @field_validator("bind")
    @classmethod
    def _bind_address(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or any(c in value for c in "/[] \t")):
            raise ValueError(
                f"bind {value!r} is not an address or host name; give one such as 10.0.0.5, "
                "node1.example.org or 0.0.0.0, or leave it out for the node's advertised address"
            )
        return value

    @field_validator("args")
    @classmethod
    def _no_reserved_args(cls, value: list[str]) -> list[str]:
        # Each of these is set by the supervisor from the settings above, or must stay out of `ps`.
        reserved = ("--host", "--port", "--api-key", "--ssl-certfile", "--ssl-keyfile")
        given = sorted({a.split("=", 1)[0] for a in value} & set(reserved))
        if given:
            raise ValueError(
                f"args must not set {', '.join(given)}: the supervisor sets the port and the per-job API "
                "key itself; use vllm.bind and vllm.tls for the address and the certificate"
            )
        return value

    @model_validator(mode="after")
    def _one_runtime(self) -> VllmRuntime:
        if (self.python is None) == (self.container is None):
            raise ValueError("give exactly one of 'python' (an interpreter with vLLM) or 'container'")
        if self.modules and self.container is not None:
            raise ValueError("'modules' go with 'python'; a container brings its own environment")
        return self


class BurstPolicySettings(_Model):
    wait_threshold_s: float = Field(default=30, gt=0)
    idle_s: float = Field(default=600, ge=0)
    providers: list[Name] = []


class Serving(_Model):
    """Fleet-wide serving settings (`serving.yaml`)."""

    registry: str
    registry_journal: Literal["wal", "delete"] = "wal"
    heartbeat_s: float = Field(default=15, gt=0)
    health_timeout_s: float = Field(default=900, gt=0)
    gpu_memory_utilization: float = Field(default=0.92, gt=0, le=1)
    signal_delay_s: PositiveInt = 120
    priorities: dict[Priority, dict[Literal["qos", "nice"], str | int]]
    burst: BurstPolicySettings = BurstPolicySettings()
    # The CA file that signed the vLLM servers' certificates (sites with vllm.tls); unset: the system's.
    backend_ca: str | None = None

    @property
    def stale_after_s(self) -> float:
        """A server silent for three heartbeats is taken for dead."""
        return 3 * self.heartbeat_s


class CircuitSettings(_Model):
    failures: PositiveInt = 3
    open_s: float = Field(default=10, gt=0)
    probe_s: float = Field(default=2, gt=0)


class UserTierWeights(_Model):
    cost: float = Field(ge=0)
    latency: float = Field(ge=0)
    quality: float = Field(ge=0)


class RequestLimits(_Model):
    """Bounds on what one request may send; beyond them the gateway refuses early with 413 or 400."""

    max_body_bytes: PositiveInt = Field(
        default=8 * 1024 * 1024, description="Largest request body in bytes (413 beyond it)."
    )
    max_model_chars: PositiveInt = Field(default=256, description="Longest 'model' name in characters.")
    max_messages: PositiveInt = Field(default=1024, description="Most messages in one chat request.")
    max_text_chars: PositiveInt = Field(
        default=2_000_000,
        description="Most characters over all strings of one body, token ids counting 4 each (413 beyond).",
    )
    max_json_depth: PositiveInt = Field(default=32, description="Deepest nesting of JSON arrays and objects.")
    max_header_bytes: PositiveInt = Field(
        default=1024, description="Longest value of a header the gateway reads (X-Hpcrag-*), in bytes."
    )
    max_input_items: PositiveInt = Field(
        default=2048, description="Most items in an 'input' or 'prompt' list (embeddings, completions)."
    )
    max_inflight_body_bytes: PositiveInt = Field(
        default=256 * 1024 * 1024,
        description="Bytes of request bodies held at once over all requests (503 with Retry-After beyond).",
    )


class ListenerTls(_Model):
    """HTTPS for a listener: its certificate chain and key (PEM files), and optionally the CA whose
    client certificates it requires. Relative paths are taken from the folder that holds `site-configs/`."""

    cert: str
    key: str
    client_ca: str | None = None


class Gateway(_Model):
    """The OpenAI-compatible gateway and its router (`gateway.yaml`)."""

    host: str = "127.0.0.1"
    port: Port = 8400
    database: str
    refresh_s: float = Field(default=2, gt=0)
    upstream_timeout_s: float = Field(default=600, gt=0)
    connect_timeout_s: float = Field(default=3, gt=0)
    attempts: PositiveInt = 3
    circuit: CircuitSettings = CircuitSettings()
    scorer: str = "hpcrag.gateway.complexity:HeuristicScorer"
    complexity_thresholds: dict[ModelTier, float]
    quality_boost: dict[str, float]
    technical_terms: list[str]
    user_tiers: dict[Name, UserTierWeights] = Field(min_length=1)
    default_user_tier: Name
    default_output_tokens: PositiveInt = 256
    network_latency_ms: dict[str, float] = {}
    ewma_alpha: float = Field(default=0.2, gt=0, le=1)
    limits: RequestLimits = RequestLimits()
    ledger_synchronous: Literal["full", "normal"] = Field(
        default="full",
        description="SQLite synchronous mode of the usage ledger: full survives a power cut, normal only "
        "a killed gateway, without an fsync per commit",
    )
    ledger_commit_timeout_s: float = Field(
        default=10, gt=0, description="How long an answer waits for its ledger row before it is a 503"
    )
    tls: ListenerTls | None = None
    metrics_listen: str | None = Field(
        default=None,
        description="HOST:PORT of a listener of its own that serves /metrics without a key, for Prometheus",
        pattern=r"^[^\s/]+:[0-9]{1,5}$",
    )

    @field_validator("metrics_listen")
    @classmethod
    def _metrics_port(cls, value: str | None) -> str | None:
        if value is not None and not 1 <= int(value.rpartition(":")[2]) <= 65535:
            raise ValueError(f"metrics_listen {value!r}: the port must be 1-65535")
        return value

    metrics_token_file: str | None = Field(
        default=None,
        description="File with the bearer token that /metrics on the API port asks for "
        "(else $HPCRAG_METRICS_TOKEN; with neither, /metrics is only on metrics_listen)",
    )

    @model_validator(mode="after")
    def _consistent(self) -> Gateway:
        if self.default_user_tier not in self.user_tiers:
            raise ValueError(
                f"default_user_tier {self.default_user_tier!r} is not one of user_tiers: "
                f"{', '.join(self.user_tiers)}"
            )
        tiers = ("s", "m", "l", "xl")
        if set(self.complexity_thresholds) != set(tiers):
            raise ValueError(f"complexity_thresholds needs one threshold for each tier: {', '.join(tiers)}")
        ordered = [self.complexity_thresholds[t] for t in tiers]
        if ordered != sorted(ordered):
            raise ValueError(f"complexity_thresholds must rise from tier s to tier xl, got {ordered}")
        return self


class NodeGroup(_Model):
    nodes: str
    gpu_type: Name
    gpus_per_node: int = Field(ge=1, le=64)
    cpus: PositiveInt
    memory_mb: PositiveInt

    @field_validator("nodes")
    @classmethod
    def _valid_hostlist(cls, value: str) -> str:
        expand_nodes(value)
        return value

    @property
    def node_names(self) -> list[str]:
        return expand_nodes(self.nodes)


class Partition(_Model):
    name: Name
    nodes: str
    default: bool = False
    max_time: str
    state: Literal["UP", "DOWN"] = "UP"

    @field_validator("nodes")
    @classmethod
    def _valid_hostlist(cls, value: str) -> str:
        expand_nodes(value)
        return value

    @field_validator("max_time")
    @classmethod
    def _valid_time(cls, value: str) -> str:
        if not _SLURM_TIME.match(value):
            raise ValueError(
                f"invalid Slurm time {value!r}; write HH:MM:SS, D-HH:MM:SS, minutes or UNLIMITED"
            )
        return value

    @property
    def node_names(self) -> list[str]:
        return expand_nodes(self.nodes)


class SlurmAccess(_Model):
    """How client commands reach a site: its own slurm.conf, or a multi-cluster name."""

    clusters: Name | None = None
    slurm_conf: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> SlurmAccess:
        if (self.clusters is None) == (self.slurm_conf is None):
            raise ValueError("give exactly one of 'clusters' (a Slurm cluster name) or 'slurm_conf'")
        return self


class SiteSlurm(_Model):
    cluster_name: Name
    controller_host: str
    access: SlurmAccess


class Site(_Model):
    name: Name
    display_name: str
    location: str
    rack: str
    slurm: SiteSlurm
    node_groups: list[NodeGroup] = Field(min_length=1)
    partitions: list[Partition] = Field(min_length=1)
    gpu_price_usd_per_hour: dict[Name, NonNegativeFloat]
    compliance: list[str] = []
    vllm: VllmRuntime | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Site:
        owner: dict[str, int] = {}
        for index, group in enumerate(self.node_groups):
            for node in group.node_names:
                if node in owner:
                    raise ValueError(f"node {node} is in node_groups[{owner[node]}] and node_groups[{index}]")
                owner[node] = index
        names = [p.name for p in self.partitions]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate partition names: {', '.join(duplicates)}")
        for partition in self.partitions:
            missing = [n for n in partition.node_names if n not in owner]
            if missing:
                raise ValueError(
                    f"partition {partition.name} names nodes no node group declares: "
                    f"{hostlist.collect_hostlist(missing)}"
                )
        defaults = [p.name for p in self.partitions if p.default]
        if len(defaults) > 1:
            raise ValueError(f"more than one default partition: {', '.join(defaults)}")
        return self

    def node_group_of(self, node: str) -> NodeGroup:
        for group in self.node_groups:
            if node in group.node_names:
                return group
        raise UnknownNameError("node", node, self.node_names, f"at site {self.name}")

    @property
    def node_names(self) -> list[str]:
        return [n for g in self.node_groups for n in g.node_names]

    def partition(self, name: str) -> Partition:
        for partition in self.partitions:
            if partition.name == name:
                return partition
        raise UnknownNameError("partition", name, [p.name for p in self.partitions], f"at site {self.name}")

    def partition_gpu_types(self, name: str) -> list[str]:
        """GPU types present on a partition's nodes, in node-group order."""
        nodes = set(self.partition(name).node_names)
        types = [g.gpu_type for g in self.node_groups if nodes & set(g.node_names)]
        return list(dict.fromkeys(types))


class CloudTier(_Model):
    display_name: str
    cost_multiplier: float = Field(gt=0)
    setup_time: str
    compliance: dict[str, Literal["full", "partial"]]


class ProviderGpu(_Model):
    instance: str
    usd_per_gpu_hour: NonNegativeFloat
    price_basis: PriceBasis | None = None


class BurstSettings(_Model):
    """How hpcrag bursts to a provider: which adapter, and what that adapter needs."""

    adapter: Name
    region: str | None = None
    image: str = "vllm/vllm-openai:v0.6.4"
    machine_image: str | None = None
    namespace: str = "inference"
    cloud: str | None = None
    spot: bool = False


class Provider(_Model):
    display_name: str
    tier: Name
    price_basis: PriceBasis
    gpus: dict[Name, ProviderGpu] = Field(min_length=1)
    burst: BurstSettings | None = None


class Clouds(_Model):
    tiers: dict[Name, CloudTier] = Field(min_length=1)
    providers: dict[Name, Provider] = Field(min_length=1)

    @model_validator(mode="after")
    def _tiers_exist(self) -> Clouds:
        for name, provider in self.providers.items():
            if provider.tier not in self.tiers:
                raise ValueError(
                    f"provider {name}: unknown tier {provider.tier!r}; valid tiers: {', '.join(self.tiers)}"
                )
        return self


class DevSiteSettings(_Model):
    """Where a site's local cluster listens and where its job ids start."""

    slurmctld_port: Port
    slurmd_port_base: Port
    first_job_id: PositiveInt


class Accounting(_Model):
    slurmdbd_port: Port
    mariadb_port: Port


class Profile(_Model):
    name: Name
    description: str
    run_dir: str | None = None
    accounting: Accounting | None = None
    sites: dict[Name, DevSiteSettings] = {}
    vllm: VllmRuntime | None = None
    serving: dict[str, Any] = {}
    gateway: dict[str, Any] = {}

    @model_validator(mode="after")
    def _local_is_complete(self) -> Profile:
        if self.sites and (self.run_dir is None or self.accounting is None):
            raise ValueError("a profile that maps sites onto local clusters needs run_dir and accounting")
        if self.run_dir is not None and not Path(self.run_dir).is_absolute():
            raise ValueError(f"run_dir must be an absolute path, got {self.run_dir!r}")
        if self.run_dir is not None and re.search(r"\s", self.run_dir):
            # slurm.conf has no quoting: a path with blanks cannot be written into it.
            raise ValueError(
                f"run_dir must not contain whitespace (slurm.conf cannot quote it): {self.run_dir!r}"
            )
        return self

    @property
    def is_local(self) -> bool:
        return bool(self.sites)


class Config(_Model):
    """The whole validated configuration, with the active profile already applied to the sites."""

    root: Path
    gpus: dict[str, GpuType]
    sites: dict[str, Site]
    clouds: Clouds
    profile: Profile
    tiers: dict[str, ModelTierSpec]
    models: dict[str, ModelArch]
    matrix: Matrix
    serving: Serving
    gateway: Gateway
    rag: RagSettings

    def site(self, name: str) -> Site:
        try:
            return self.sites[name]
        except KeyError:
            raise UnknownNameError("site", name, sorted(self.sites)) from None

    def tier(self, name: str) -> ModelTierSpec:
        try:
            return self.tiers[name.lower()]
        except KeyError:
            raise UnknownNameError("tier", name, list(self.tiers)) from None

    def model(self, name: str) -> ModelArch:
        try:
            return self.models[name]
        except KeyError:
            raise UnknownNameError("model", name, sorted(self.models)) from None

    def gpu(self, name: str) -> GpuType:
        try:
            return self.gpus[name]
        except KeyError:
            raise UnknownNameError("GPU type", name, list(self.gpus)) from None

    def resolve_path(self, path: str) -> Path:
        """A path from the configuration: relative ones are taken from the folder above `root`."""
        candidate = Path(path).expanduser()
        # abspath, not resolve(): a virtualenv's python is a symlink that must stay one.
        return candidate if candidate.is_absolute() else Path(os.path.abspath(self.root.parent / candidate))

    def dev_settings(self, site: str) -> DevSiteSettings:
        self.site(site)
        try:
            return self.profile.sites[site]
        except KeyError:
            raise HpcragError(
                f"profile {self.profile.name!r} does not map site {site!r} onto a local cluster; "
                "use a local profile such as 'dev' (--profile dev or HPCRAG_PROFILE=dev)"
            ) from None
