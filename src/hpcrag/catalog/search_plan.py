"""Capacity plan of a distributed vector search: memory, fan-out, throughput and p99 per local index kind.

`plan_search` sizes a collection of `vectors` x `dim` spread over `gpus` GPUs of one type, as
`gpus / replicas` shards (one per GPU, each held by `replicas` GPUs), for each shard-local index kind
(ivf-flat, hnsw, cagra, ivf-pq). Every figure it returns is a `Figure`: a value and its source, so that
a reader can tell a measurement from the seed study's claim from an assumption. The model:

- memory per GPU = bytes per vector x vectors per shard + runtime overhead (hnsw and cagra hold
  float32 copies of the rows, as hpcrag builds them); it fits when it stays within
  90% of the GPU's VRAM (10% headroom). hnsw is a CPU index, and ivf-pq keeps its full vectors for
  re-ranking on the host: host memory is checked against an assumed 32 GB per GPU.
- fan-out: a query touches a fraction f of the shards, f measured at N shards by the calibration file
  and applied unchanged to this plan's shard count (an extrapolation, stated as such). With boundary
  replication (`replicate`, the build's `--replicate`), f comes from the points measured at that
  share, and each shard stores (1 + share) x its share of the vectors.
- per-GPU throughput: ivf-flat and ivf-pq are memory-bound (bandwidth x 0.6 / bytes one query reads
  from its shard). A query's probed lists hold a share s = nprobe/nlist of the collection, what the
  calibration needed for its recall, wherever they sit: a touched shard reads s x shards / touched
  of its rows (at most all), so more shards spread the same reading, never shrink it. cagra takes
  the seed's T4 figure, scaled; hnsw runs on the host's cores from the calibration's per-core cost,
  scaled. Graph costs scale as dim x ln(vectors per shard).
- system QPS = 0.7 x min(coordinator, coordinator NIC, GPUs x per-GPU QPS / shards touched), the seed's
  70% utilisation; p99 = the seed's fixed P99 components + 1.7 x the per-shard mean.
- GPUs needed for a QPS target: replicas of the plan's shards, and the fewest GPUs over all shard
  counts, each with the fan-out measured at the nearest shard count.

The calibration file (JSON) holds what a benchmark measured on real data:
    {"dataset": str, "vectors": int, "dim": int, "k": int, "command": str,
     "fanout": [{"nshards", "recall", "mean_shards_touched", optional "nlist", "max_shards",
                 "replicate" (share of vectors copied to a second shard, default 0), and the
                 routing that measured it: "nprobe", "shard_margin"}, ...],
     "local": {"ivf-flat": {"recall", "scanned_share"},
               "hnsw": {"recall", "cpu_seconds_per_query_per_shard", "shard_vectors"},
               "ivf-pq": {"recall", "scanned_share", optional "pq_m", "refine"}}}
("scanned_share": nprobe/nlist, the share of the collection a query's probed lists hold.)
Any local kind may be absent; its figures then come from the stated defaults.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from hpcrag.errors import HpcragError
from hpcrag.paths import repo_root

if TYPE_CHECKING:  # annotations only: the CLI imports this module for its defaults, and stays light
    from hpcrag.config.schema import GpuType

KINDS = ("ivf-flat", "hnsw", "cagra", "ivf-pq")
DTYPE_BYTES = {"float16": 2, "float32": 4}
MAX_VECTORS = 1e15
DEFAULT_CALIBRATION = repo_root() / "benchmarks" / "search-calibration.json"

ID_BYTES = 8
SCORE_BYTES = 4
QUERY_ELEMENT_BYTES = 4  # queries travel as float32
HNSW_M = 32
GRAPH_ELEMENT_BYTES = 4  # hpcrag's CAGRA build keeps a float32 copy of the rows
CAGRA_GRAPH_DEGREE = 64
PQ_DIMS_PER_CODE = 8  # pq_m = dim / 8: 96 code bytes at 768 dims, the seed's §2.4 figure
DEFAULT_REFINE = 10

VRAM_USABLE = 0.9
RUNTIME_BYTES = 2e9  # seed §2.3: CUDA runtime and kernels
DEFAULT_NLIST = 1_000  # seed §3.5: the coordinator searches "1K cluster centroids"
QUERY_BUFFER_BYTES = 1e9  # seed §2.3: query processing buffer
BANDWIDTH_EFFICIENCY = 0.6  # as the decode estimate in catalog.select
# A host's share per GPU, as on a cloud T4 instance with 8 vCPUs and 32 GB (AWS g4dn.2xlarge).
CORES_PER_GPU = 8
HOST_BYTES_PER_GPU = 32e9
HOST_USABLE = 0.9
UTILISATION = 0.7  # seed §3.5: 7,000 sustained of 10,000 QPS
P99_OVER_MEAN = 1.7  # seed §3.5: worker search 20 ms P99 / 12 ms P50
COORDINATOR_QPS = 10_000  # seed §3.5
NIC_BYTES_PER_S = 25e9 / 8  # seed §3.4 recommends 25 GbE
FIXED_P99_MS = {  # seed §3.5, P99 of each component outside the shards
    "load balancer": 2.0,
    "coordinator routing": 8.0,
    "network to shards": 2.0,
    "network from shards": 2.0,
    "merge": 3.0,
    "response": 2.0,
}

T4_BANDWIDTH_TBS = 0.32
CAGRA_T4_QPS = 1000.0  # seed §3.5 (its §4.2 says 1,200), at 95% recall on 1M x 768 per T4
CAGRA_T4_MEAN_MS = 12.0  # seed §3.5 worker search P50 on 1M vectors
SEED_SHARD_VECTORS = 1_000_000
SEED_DIM = 768

MAX_SHARDS_SEARCHED = 100_000
DEFAULT_FANOUT = (0.5, 4)  # fraction of shards touched, at this many shards
DEFAULT_SCANNED_SHARE = 1 / 16  # nprobe/nlist
# Issue 15's run: faiss IndexHNSWFlat M=32, efSearch 32, 21,550 q/s on 2 threads, 84,114 x 384, recall 0.973.
DEFAULT_HNSW = (2 / 21_550, 84_114, 384)

_REQUIRED_LOCAL = {
    "ivf-flat": ("recall", "scanned_share"),
    "hnsw": ("recall", "cpu_seconds_per_query_per_shard", "shard_vectors"),
    "ivf-pq": ("recall", "scanned_share"),
}
_SUFFIX = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9, "t": 10**12}


@dataclass(frozen=True)
class Figure:
    """One number of the plan, its unit and where it comes from."""

    value: float | int | bool
    unit: str
    source: str

    def text(self) -> str:
        """The value as people read it: bytes in KB/MB/GB, rates with thousands separators."""
        v = self.value
        if isinstance(v, bool):
            return "yes" if v else "no"
        if self.unit == "bytes":
            return human_bytes(v)
        if self.unit == "bytes/s":
            return human_bytes(v) + "/s"
        if self.unit in ("QPS", "vectors"):
            return f"{v:,.0f} {self.unit}"
        if self.unit == "ms":
            return f"{v:.3g} ms" if v < 100 else f"{v:,.0f} ms"
        text = f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}"
        return f"{text} {self.unit}".rstrip()


@dataclass(frozen=True)
class FanoutPoint:
    nshards: int
    recall: float
    mean_shards_touched: float
    nlist: int | None = None
    max_shards: int | None = None
    replicate: float = 0.0
    nprobe: int | None = None
    shard_margin: float | None = None

    def routing(self) -> str:
        """The routing this fan-out was measured with, as `hpcrag index search` flags ('' if unknown)."""
        flags = " ".join(
            f"--{name} {value}"
            for name, value in (
                ("nprobe", self.nprobe),
                ("max-shards", self.max_shards),
                ("shard-margin", self.shard_margin),
            )
            if value is not None
        )
        return f" with {flags}" if flags else ""


@dataclass(frozen=True)
class Calibration:
    """What a benchmark measured: fan-out by shard count, and each local kind's cost at a recall."""

    path: str
    dataset: str
    vectors: int
    dim: int
    k: int
    command: str
    fanout: tuple[FanoutPoint, ...]
    local: dict[str, dict[str, float]]

    def label(self, detail: str) -> str:
        return f"calibration {self.path} ({self.dataset}, {detail})"


@dataclass(frozen=True)
class KindPlan:
    """One local index kind's figures, or why it does not apply."""

    kind: str
    device: str
    applicable: bool
    reason: str | None = None
    figures: dict[str, Figure] = field(default_factory=dict)
    verdicts: dict[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "device": self.device,
            "applicable": self.applicable,
            "reason": self.reason,
            "figures": {name: asdict(f) for name, f in self.figures.items()},
            "verdicts": self.verdicts,
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class SearchPlan:
    inputs: dict[str, Any]
    calibration: str | None
    shared: dict[str, Figure]
    kinds: list[KindPlan]
    notes: tuple[str, ...] = ()

    def kind(self, name: str) -> KindPlan:
        return next(k for k in self.kinds if k.kind == name)

    def as_dict(self) -> dict[str, Any]:
        return {
            "inputs": self.inputs,
            "calibration": self.calibration,
            "shared": {name: asdict(f) for name, f in self.shared.items()},
            "kinds": [k.as_dict() for k in self.kinds],
            "notes": list(self.notes),
        }


def human_bytes(n: float) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}" if n / size < 100 else f"{n / size:,.0f} {unit}"
    return f"{n:,.0f} B"


def parse_count(text: str) -> int:
    """A count such as 100M, 1.5B, 250k, 1e8 or 100_000_000 as an integer >= 1."""
    # Commas only as thousands separators: "1,5M" is a typo, not 15M.
    number = r"(?:[0-9][0-9_]*|[0-9]{1,3}(?:,[0-9]{3})+)(?:\.[0-9]+)?(?:e[0-9]{1,2})?"
    match = re.fullmatch(rf"\s*({number})\s*([kmbgt]?)\s*", text.lower())
    if not match:
        raise HpcragError(
            f"cannot read {text!r} as a number of vectors; write e.g. 100M, 1.5B, 250k or 84114"
        )
    value = float(match.group(1).replace("_", "").replace(",", "")) * _SUFFIX[match.group(2)]
    if value > MAX_VECTORS:
        raise HpcragError(f"number of vectors {text!r} is beyond any plan (more than {MAX_VECTORS:.0e})")
    if value < 1 or value != int(value):
        raise HpcragError(f"number of vectors {text!r} must be a whole number >= 1; write e.g. 100M or 84114")
    return int(value)


def load_calibration(path: Path) -> Calibration:
    """Read and check a calibration file; every problem names the file, the key and the fix."""
    where = _shown_path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise HpcragError(
            f"calibration file {where} not found; give an existing file or leave it out"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise HpcragError(f"cannot read calibration file {where}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise HpcragError(
            f"calibration file {where} is not valid JSON ({exc.msg} at line {exc.lineno}); "
            "fix or regenerate it"
        ) from None
    check = _Checker(where)
    top = check.mapping(data, "")
    fanout = tuple(
        FanoutPoint(
            nshards=check.count(point, f"fanout[{i}]", "nshards"),
            recall=check.recall(point, f"fanout[{i}]"),
            mean_shards_touched=check.number(point, f"fanout[{i}]", "mean_shards_touched"),
            nlist=check.count(point, f"fanout[{i}]", "nlist") if "nlist" in point else None,
            max_shards=check.count(point, f"fanout[{i}]", "max_shards") if "max_shards" in point else None,
            replicate=check.share(point, f"fanout[{i}]", "replicate") if "replicate" in point else 0.0,
            nprobe=check.count(point, f"fanout[{i}]", "nprobe") if "nprobe" in point else None,
            shard_margin=(
                check.non_negative(point, f"fanout[{i}]", "shard_margin") if "shard_margin" in point else None
            ),
        )
        for i, point in enumerate(check.items(top, "fanout"))
    )
    for i, point in enumerate(fanout):
        if point.mean_shards_touched > point.nshards:
            check.fail(f"fanout[{i}].mean_shards_touched", f"is more than nshards ({point.nshards})")
    local: dict[str, dict[str, float]] = {}
    for kind, entry in check.mapping(top.get("local", {}), "local").items():
        if kind not in _REQUIRED_LOCAL:
            check.fail(f"local.{kind}", f"is not a calibrated kind; use one of {', '.join(_REQUIRED_LOCAL)}")
        values = check.mapping(entry, f"local.{kind}")
        if "scanned_fraction" in values and "scanned_share" not in values:
            check.fail(
                f"local.{kind}.scanned_fraction",
                "is the old key (a touched shard's fraction at the benchmark's shard count): give "
                "scanned_share, the share nprobe/nlist, or rerun scripts/bench_search.py --suite kinds",
            )
        for key in _REQUIRED_LOCAL[kind]:
            check.number(values, f"local.{kind}", key)
        check.recall(values, f"local.{kind}")
        if "scanned_share" in values and not 0 < values["scanned_share"] <= 1:
            check.fail(f"local.{kind}.scanned_share", "must be in (0, 1]")
        local[kind] = {
            k: check.number(values, f"local.{kind}", k) for k, v in values.items() if _is_number(v)
        }
    return Calibration(
        path=where,
        dataset=check.text(top, "dataset"),
        vectors=check.count(top, "", "vectors"),
        dim=check.count(top, "", "dim"),
        k=check.count(top, "", "k"),
        command=str(top.get("command", "")),
        fanout=fanout,
        local=local,
    )


def default_calibration() -> Calibration | None:
    """The repository's `benchmarks/search-calibration.json` when it exists, else None."""
    return load_calibration(DEFAULT_CALIBRATION) if DEFAULT_CALIBRATION.is_file() else None


def plan_search(
    vectors: int,
    dim: int,
    gpus: int,
    gpu_name: str,
    gpu: GpuType,
    recall: float,
    *,
    k: int = 10,
    replicas: int = 1,
    dtype: str = "float16",
    qps_target: float | None = None,
    p99_target_ms: float | None = None,
    pq_m: int | None = None,
    calibration: Calibration | None = None,
    replicate: float = 0.0,
    nlist: int = DEFAULT_NLIST,
) -> SearchPlan:
    """The plan for every local kind; bad input raises HpcragError before any arithmetic."""
    check_inputs(
        vectors, dim, gpus, recall, k, replicas, dtype, qps_target, p99_target_ms, pq_m, replicate, nlist
    )
    check_replicate_measured(replicate, calibration, gpus // replicas)
    model = _Model(
        vectors, dim, gpu_name, gpu, recall, k, DTYPE_BYTES[dtype], pq_m, calibration, replicate, nlist
    )
    shards = gpus // replicas
    shared = model.shared(shards)
    kinds = [model.kind_plan(kind, shards, replicas, qps_target, p99_target_ms) for kind in KINDS]
    notes = [
        "routing skew is not modelled: load is taken as even, "
        "but a shard owning popular regions saturates first"
    ]
    if calibration is not None and calibration.k != k:
        notes.append(f"calibration measured recall@{calibration.k}; this plan is for k={k}")
    return SearchPlan(
        inputs={
            "vectors": vectors,
            "dim": dim,
            "dtype": dtype,
            "gpus": gpus,
            "gpu": gpu_name,
            "replicas": replicas,
            "replicate": replicate,
            "recall": recall,
            "k": k,
            "nlist": nlist,
            "qps_target": qps_target,
            "p99_target_ms": p99_target_ms,
        },
        calibration=calibration.path if calibration else None,
        shared=shared,
        kinds=kinds,
        notes=tuple(notes),
    )


def check_inputs(
    vectors: int,
    dim: int,
    gpus: int,
    recall: float,
    k: int = 10,
    replicas: int = 1,
    dtype: str = "float16",
    qps_target: float | None = None,
    p99_target_ms: float | None = None,
    pq_m: int | None = None,
    replicate: float = 0.0,
    nlist: int = DEFAULT_NLIST,
) -> None:
    """Raise HpcragError naming the option and its fix for the first bad input."""
    if vectors < 1:
        raise HpcragError(f"--vectors must be >= 1, got {vectors}")
    if dim <= 0:
        raise HpcragError(f"--dim must be > 0, got {dim}; give the embedding width, e.g. 768")
    if gpus < 1:
        raise HpcragError(f"--gpus must be >= 1, got {gpus}; give the number of GPUs to plan for")
    if not 0 < recall <= 1:
        raise HpcragError(f"--recall must be in (0, 1], got {recall}; e.g. 0.95 for recall@10 >= 0.95")
    if k < 1:
        raise HpcragError(f"--k must be >= 1, got {k}")
    if replicas < 1 or gpus % replicas:
        raise HpcragError(
            f"--replicas {replicas} does not divide --gpus {gpus}: each shard needs the same number of "
            "copies; choose a divisor of --gpus"
        )
    if dtype not in DTYPE_BYTES:
        raise HpcragError(f"unknown --dtype {dtype!r}; valid: {', '.join(DTYPE_BYTES)}")
    if qps_target is not None and not qps_target > 0:
        raise HpcragError(f"--qps must be > 0, got {qps_target}")
    if p99_target_ms is not None and not p99_target_ms > 0:
        raise HpcragError(f"--p99-ms must be > 0, got {p99_target_ms}")
    if pq_m is not None and pq_m < 1:
        raise HpcragError(f"--pq-m must be >= 1, got {pq_m}")
    if not 0 <= replicate <= 1:
        raise HpcragError(
            f"--replicate {replicate} is not a share of the vectors: give a number from 0 to 1, as at build"
        )
    if nlist < 1:
        raise HpcragError(f"--nlist must be >= 1, got {nlist}; give the index's coarse centroids (as built)")


def check_replicate_measured(replicate: float, calibration: Calibration | None, shards: int) -> None:
    """Fan-out with boundary copies comes only from a measurement at that share (and the calibration
    must hold points at the share asked for, 0 included)."""
    if replicate and shards < 2:
        raise HpcragError(
            f"--replicate copies vectors into a second shard, but --gpus / --replicas gives {shards} shard: "
            "plan at least 2 shards, or drop --replicate"
        )
    if calibration is None:
        if not replicate:
            return
        raise HpcragError(
            f"--replicate {replicate:g} needs a calibration file that measured it (fan-out with copies is "
            "not assumed); run scripts/bench_search.py --suite kinds --dataset manpages"
        )
    shares = sorted({p.replicate for p in calibration.fanout})
    if replicate not in shares:
        raise HpcragError(
            f"calibration {calibration.path} has no fan-out measured with --replicate {replicate:g}; "
            f"it measured {', '.join(f'{share:g}' for share in shares)}: choose one of those"
        )


@dataclass(frozen=True)
class _Numbers:
    """One kind's figures for one layout, without sources (the layout search evaluates many)."""

    bytes_per_vector: float
    index: float
    vram: float | None
    host: float | None
    fits: bool
    read_per_query: float | None
    qps_per_gpu: float
    shard_mean_ms: float
    touched: float
    bounds: dict[str, float]
    limited_by: str
    p99_ms: float

    @property
    def capacity(self) -> float:
        return self.bounds[self.limited_by]

    @property
    def sustainable(self) -> float:
        return UTILISATION * self.capacity


@dataclass(frozen=True)
class _Model:
    vectors: int
    dim: int
    gpu_name: str
    gpu: GpuType
    recall: float
    k: int
    element: int
    pq_m: int | None
    calibration: Calibration | None
    replicate: float = 0.0
    nlist: int = DEFAULT_NLIST

    def centroid_bytes(self) -> float:
        """The coarse centroids (float32) every rank holds to route its slice of each batch."""
        return float(self.nlist * self.dim * 4)

    # Fan-out and network, common to every kind.

    def fanout(self, shards: int) -> tuple[float, str]:
        """The fraction of shards a query touches, and its source: the measurement that meets the recall
        target at the shard count closest to `shards` (the larger on a tie)."""
        if self.calibration is None:
            fraction, at = DEFAULT_FANOUT
            return fraction, f"assumed: {fraction} of {at} shards (no calibration file)"
        points = [p for p in self.calibration.fanout if p.replicate == self.replicate]
        meeting = [p for p in points if p.recall >= self.recall] or list(points)
        point = min(meeting, key=lambda p: (abs(p.nshards - shards), -p.nshards))
        fraction = point.mean_shards_touched / point.nshards
        short = f"; recall {point.recall} is below the target" if point.recall < self.recall else ""
        copies = f", {self.replicate:.0%} replicated" if self.replicate else ""
        detail = (
            f"{point.mean_shards_touched:g} of {point.nshards} shards{copies} at recall {point.recall}"
            f"{point.routing()}{short}"
        )
        return fraction, self.calibration.label(detail)

    def extrapolation(self, shards: int) -> str:
        measured = self.calibration is not None and any(
            p.nshards == shards and p.replicate == self.replicate for p in self.calibration.fanout
        )
        return "" if measured else f" (extrapolated to {shards} shards)"

    def touched(self, shards: int, fraction: float) -> float:
        return min(float(shards), max(1.0, fraction * shards))

    def network_per_shard(self) -> float:
        return self.dim * QUERY_ELEMENT_BYTES + self.k * (ID_BYTES + SCORE_BYTES)

    def shared(self, shards: int) -> dict[str, Figure]:
        fraction, fanout_source = self.fanout(shards)
        touched = self.touched(shards, fraction)
        per_shard = self.network_per_shard()
        fixed = sum(FIXED_P99_MS.values())
        parts = " + ".join(f"{name} {ms:g}" for name, ms in FIXED_P99_MS.items())
        return {
            "shards": Figure(shards, "", "--gpus / --replicas, one shard per GPU"),
            "vectors_per_shard": Figure(
                self.shard_vectors(shards),
                "vectors",
                "--vectors x (1 + --replicate) / shards, rounded up"
                if self.replicate
                else "--vectors / shards, rounded up",
            ),
            "routing_centroids_per_gpu": Figure(
                self.centroid_bytes(),
                "bytes",
                f"--nlist {self.nlist:,} x {self.dim} x 4 B float32: every rank holds the coarse centroids "
                "to route its slice of each batch (counted in each kind's memory)",
            ),
            "fanout_fraction": Figure(fraction, "", fanout_source),
            "shards_touched": Figure(
                touched, "", f"fraction x {shards} shards, at least 1{self.extrapolation(shards)}"
            ),
            "network_bytes_per_query": Figure(
                touched * per_shard,
                "bytes",
                f"shards touched x ({self.dim} x 4 B float32 query + k={self.k} x (8 B id + 4 B score))",
            ),
            "fixed_p99_ms": Figure(fixed, "ms", f"seed §3.5 P99 components: {parts} ms"),
            "coordinator_qps": Figure(
                COORDINATOR_QPS, "QPS", "seed §3.5 coordinator capacity (not measured)"
            ),
            "coordinator_nic": Figure(NIC_BYTES_PER_S, "bytes/s", "seed §3.4: 25 GbE"),
        }

    # Per-kind arithmetic.

    def pq_codes(self) -> tuple[int | None, str]:
        """pq_m, or None and why ivf-pq does not apply."""
        if self.pq_m is not None:
            if self.dim % self.pq_m:
                return None, (
                    f"ivf-pq not applicable: dim {self.dim} is not divisible by pq_m {self.pq_m}; "
                    f"give a --pq-m that divides {self.dim}"
                )
            return self.pq_m, "--pq-m"
        if self.dim % PQ_DIMS_PER_CODE:
            return None, (
                f"ivf-pq not applicable: dim {self.dim} is not divisible by {PQ_DIMS_PER_CODE} (the default "
                f"pq_m = dim / {PQ_DIMS_PER_CODE}); give a --pq-m that divides {self.dim}"
            )
        return (
            self.dim // PQ_DIMS_PER_CODE,
            f"assumed: pq_m = dim / {PQ_DIMS_PER_CODE} (seed §2.4: 96 B at 768)",
        )

    def local(self, kind: str) -> dict[str, float] | None:
        return self.calibration.local.get(kind) if self.calibration else None

    def scanned(self, kind: str, shards: int, touched: float) -> tuple[float, str]:
        """The fraction of a touched shard's rows one query reads: its probed lists hold a share of
        the collection (nprobe/nlist) wherever they sit, spread over the shards it touches."""
        measured = self.local(kind)
        if measured is None:
            share, source = (
                DEFAULT_SCANNED_SHARE,
                "assumed nprobe/nlist = 1/16 (no calibration for this kind)",
            )
        else:
            assert self.calibration is not None
            share = measured["scanned_share"]
            detail = (
                f"{kind} nprobe/nlist {share:g} at recall {measured['recall']:g}, {self.calibration.dim} dims"
            )
            source = self.calibration.label(detail)
        fraction = min(1.0, share * shards / touched)
        cap = ", capped at 1" if share * shards > touched else ""
        return (
            fraction,
            f"{source}; over the touched shards: {share:g} x {shards} shards / {touched:.3g}{cap}",
        )

    def graph_scale(self, shard_vectors: int, at_vectors: float, at_dim: int) -> float:
        """Graph search cost relative to a measured one: proportional to dim x ln(vectors)."""
        return (self.dim * math.log(max(shard_vectors, 2))) / (at_dim * math.log(max(at_vectors, 2)))

    def hnsw_cost(self) -> tuple[float, float, int, str]:
        """Core-seconds per query per shard as measured, at (vectors, dim), and the source."""
        measured = self.local("hnsw")
        if measured is None:
            cost, at_vectors, at_dim = DEFAULT_HNSW
            source = (
                "assumed: issue 15's faiss HNSWFlat M=32 ef 32 run (21,550 q/s on 2 threads, 84,114 x 384)"
            )
            return cost, at_vectors, at_dim, source
        assert self.calibration is not None
        at = f"{measured['shard_vectors']:,.0f} x {self.calibration.dim}"
        detail = f"hnsw at recall {measured['recall']:g}, {at}"
        return (
            measured["cpu_seconds_per_query_per_shard"],
            measured["shard_vectors"],
            self.calibration.dim,
            self.calibration.label(detail),
        )

    def shard_vectors(self, shards: int) -> int:
        """Rows a shard stores: its share of the vectors, and the copies of boundary vectors (one
        shard has no other to copy into)."""
        share = self.replicate if shards > 1 else 0.0
        return math.ceil(self.vectors * (1 + share) / shards)

    def numbers(self, kind: str, shards: int, replicas: int) -> _Numbers:
        shard_vectors = self.shard_vectors(shards)
        bandwidth = self.gpu.bandwidth_tbs * 1e12 * BANDWIDTH_EFFICIENCY
        full = self.dim * self.element + ID_BYTES
        full32 = self.dim * GRAPH_ELEMENT_BYTES + ID_BYTES  # hpcrag's CAGRA graphs hold float32 rows
        host: float | None = None
        read: float | None = None
        touched = self.touched(shards, self.fanout(shards)[0])
        if kind == "ivf-flat":
            per_vector = float(full)
            read = self.scanned(kind, shards, touched)[0] * shard_vectors * per_vector
            qps = bandwidth / read
        elif kind == "ivf-pq":
            pq_m = self.pq_codes()[0]
            assert pq_m is not None
            per_vector = float(pq_m + ID_BYTES)
            host = shard_vectors * self.dim * self.element
            codes = self.scanned(kind, shards, touched)[0] * shard_vectors * per_vector
            read = codes + self.k * self.refine()[0] * self.dim * self.element
            qps = bandwidth / read
        elif kind == "cagra":
            per_vector = float(full32 + CAGRA_GRAPH_DEGREE * 4)
            scale = self.graph_scale(shard_vectors, SEED_SHARD_VECTORS, SEED_DIM)
            qps = CAGRA_T4_QPS * (self.gpu.bandwidth_tbs / T4_BANDWIDTH_TBS) / scale
        else:
            per_vector = float(full + HNSW_M * 2 * 4)  # the graph keeps rows at the stored dtype
            cost, at_vectors, at_dim, _ = self.hnsw_cost()
            qps = CORES_PER_GPU / (cost * self.graph_scale(shard_vectors, at_vectors, at_dim))
        index = per_vector * shard_vectors
        vram: float | None = None
        if kind == "hnsw":
            host = index + self.centroid_bytes()
            mean_ms = CORES_PER_GPU / qps * 1e3
        else:
            vram = index + self.centroid_bytes() + RUNTIME_BYTES + QUERY_BUFFER_BYTES
            # ivf kinds: one query's scan at the modelled bandwidth
            mean_ms = CAGRA_T4_MEAN_MS * CAGRA_T4_QPS / qps if kind == "cagra" else 1e3 / qps
        fits = (vram is None or vram <= VRAM_USABLE * self.gpu.vram_gb * 1e9) and (
            host is None or host <= HOST_USABLE * HOST_BYTES_PER_GPU
        )
        bounds = {
            "GPUs": shards * replicas * qps / touched,
            "coordinator": float(COORDINATOR_QPS),
            "coordinator NIC": NIC_BYTES_PER_S / (touched * self.network_per_shard()),
        }
        limited_by = min(bounds, key=lambda name: bounds[name])
        return _Numbers(
            bytes_per_vector=per_vector,
            index=index,
            vram=vram,
            host=host,
            fits=fits,
            read_per_query=read,
            qps_per_gpu=qps,
            shard_mean_ms=mean_ms,
            touched=touched,
            bounds=bounds,
            limited_by=limited_by,
            p99_ms=sum(FIXED_P99_MS.values()) + P99_OVER_MEAN * mean_ms,
        )

    def refine(self) -> tuple[float, str]:
        measured = self.local("ivf-pq") or {}
        if "refine" in measured:
            return measured["refine"], "calibration"
        return DEFAULT_REFINE, "assumed"

    def kind_plan(
        self, kind: str, shards: int, replicas: int, qps_target: float | None, p99_target_ms: float | None
    ) -> KindPlan:
        device = "cpu" if kind == "hnsw" else "gpu"
        if kind == "ivf-pq":
            pq_m, pq_source = self.pq_codes()
            if pq_m is None:
                return KindPlan(kind, device, applicable=False, reason=pq_source)
        n = self.numbers(kind, shards, replicas)
        verdicts: dict[str, str] = {}
        if not n.fits:
            verdicts["memory"] = "does not fit: add shards (more GPUs, or fewer replicas)"
        if qps_target is not None:
            verdicts["qps"] = f"{qps_target:,.0f} QPS: " + _verdict(n.sustainable, qps_target, True)
            verdicts["gpus_needed"] = self.gpus_needed(kind, shards, qps_target)
        if p99_target_ms is not None:
            verdicts["p99"] = f"p99 {p99_target_ms:g} ms: " + _verdict(n.p99_ms, p99_target_ms, False)
        figures = self.figures(kind, n, shards, replicas)
        return KindPlan(kind, device, True, None, figures, verdicts, self.kind_notes(kind))

    def figures(self, kind: str, n: _Numbers, shards: int, replicas: int) -> dict[str, Figure]:
        e = self.element
        bandwidth = (
            f"gpus.yaml {self.gpu_name} bandwidth {self.gpu.bandwidth_tbs} TB/s "
            f"x {BANDWIDTH_EFFICIENCY} efficiency (assumed)"
        )
        host_note = f"assumed: {HOST_BYTES_PER_GPU / 1e9:g} GB host RAM and {CORES_PER_GPU} cores per GPU"
        if kind == "ivf-flat":
            layout = f"{self.dim} x {e} B + 8 B id"
        elif kind == "ivf-pq":
            layout = f"pq_m {int(n.bytes_per_vector) - ID_BYTES} B codes ({self.pq_codes()[1]}) + 8 B id"
        elif kind == "cagra":
            layout = (
                f"{self.dim} x 4 B (float32, as hpcrag builds it) + 8 B id + graph degree "
                f"{CAGRA_GRAPH_DEGREE} x 4 B"
            )
        else:
            layout = (
                f"{self.dim} x {self.element} B (the graph keeps the stored dtype) + 8 B id + M={HNSW_M} "
                "x 2 x 4 B level-0 links (upper levels not counted)"
            )
        out = {
            "bytes_per_vector": Figure(n.bytes_per_vector, "bytes", layout),
            "index_bytes_per_gpu": Figure(n.index, "bytes", "bytes per vector x vectors per shard"),
        }
        if n.vram is not None:
            out["vram_per_gpu"] = Figure(
                n.vram,
                "bytes",
                "index bytes + routing centroids + 2 GB CUDA runtime + 1 GB query buffers (seed §2.3)",
            )
        if n.host is not None:
            what = "the CPU index + routing centroids" if kind == "hnsw" else "full vectors for refine"
            out["host_bytes_per_gpu"] = Figure(n.host, "bytes", f"host RAM per GPU: {what}")
        limits = (
            [f"{VRAM_USABLE:.0%} of {self.gpu.vram_gb} GB VRAM (gpus.yaml)"] if n.vram is not None else []
        )
        if n.host is not None:
            limits.append(f"{HOST_USABLE:.0%} of host RAM ({host_note})")
        out["fits"] = Figure(n.fits, "", f"within {' and '.join(limits)}: 10% headroom")
        if n.read_per_query is not None:
            if kind == "ivf-pq":
                refine, refine_source = self.refine()
                how = (
                    f"scanned fraction x shard codes + k x refine {refine:g} ({refine_source}) full vectors; "
                    "refine reads counted at GPU bandwidth (assumed)"
                )
            else:
                how = "scanned fraction x shard bytes; no list shared across a batch"
            fraction, fraction_source = self.scanned(kind, shards, n.touched)
            out["scanned_fraction"] = Figure(fraction, "", fraction_source)
            out["bytes_read_per_query_per_shard"] = Figure(n.read_per_query, "bytes", how)
            out["qps_per_gpu"] = Figure(n.qps_per_gpu, "QPS", f"{bandwidth} / bytes read per query")
            mean_source = "1 / per-GPU QPS: one query's scan at that bandwidth"
        elif kind == "cagra":
            scale = (
                f"scaled by bandwidth vs T4 ({T4_BANDWIDTH_TBS} TB/s) "
                "and by dim x ln(vectors per shard) vs 768 x ln(1M)"
            )
            out["qps_per_gpu"] = Figure(
                n.qps_per_gpu,
                "QPS",
                f"seed §3.5 (1,000 QPS per T4; §4.2 says 1,200), not measured here; {scale}",
            )
            mean_source = f"seed §3.5 worker search 12 ms P50, not measured here; {scale}"
        else:
            out["cpu_seconds_per_query_per_shard"] = Figure(
                CORES_PER_GPU / n.qps_per_gpu,
                "s",
                f"{self.hnsw_cost()[3]}; per core, scaled by dim x ln(vectors per shard)",
            )
            out["qps_per_gpu"] = Figure(
                n.qps_per_gpu, "QPS", f"cores per GPU / core-seconds per query ({host_note})"
            )
            mean_source = "one core's time per query"
        out["shard_mean_ms"] = Figure(n.shard_mean_ms, "ms", mean_source)
        out["shard_p99_ms"] = Figure(
            P99_OVER_MEAN * n.shard_mean_ms,
            "ms",
            f"assumed: {P99_OVER_MEAN} x mean, the seed's worker P99/P50 (20/12 ms, §3.5)",
        )
        gpus = shards * replicas
        out["gpu_bound_qps"] = Figure(n.bounds["GPUs"], "QPS", f"{gpus} GPUs x per-GPU QPS / shards touched")
        out["nic_bound_qps"] = Figure(
            n.bounds["coordinator NIC"], "QPS", "coordinator NIC / network bytes per query"
        )
        out["capacity_qps"] = Figure(
            n.capacity, "QPS", f"min of GPU, coordinator and NIC bounds: {n.limited_by}-bound"
        )
        out["system_qps"] = Figure(
            n.sustainable, "QPS", f"capacity x {UTILISATION} utilisation (seed §3.5: 30% headroom)"
        )
        out["network_bytes_per_s"] = Figure(
            n.sustainable * n.touched * self.network_per_shard(),
            "bytes/s",
            "system QPS x network bytes per query",
        )
        out["p99_ms"] = Figure(
            n.p99_ms,
            "ms",
            "fixed P99 components + shard p99, as the seed sums them; the slowest shard touched can be later",
        )
        return out

    def kind_notes(self, kind: str) -> tuple[str, ...]:
        notes = []
        measured = self.local(kind)
        if measured is not None and measured["recall"] < self.recall:
            notes.append(f"calibration measured {kind} at recall {measured['recall']:g}, below the target")
        if kind == "hnsw":
            notes.append("hnsw is a CPU index (faiss): the GPUs' hosts serve it, the GPUs idle")
        if kind == "cagra":
            notes.append("cagra is not calibrated here: its throughput and latency are the seed's claims")
        if kind == "ivf-pq":
            notes.append(
                "modelled as a GPU index (cuVS IVF-PQ); hpcrag's ivf-pq runs on the CPU (faiss) today, "
                "and its calibration was measured there"
            )
        if kind == "ivf-pq" and measured is not None and "pq_m" in measured and self.calibration is not None:
            notes.append(
                f"recall measured with pq_m {measured['pq_m']:g} at {self.calibration.dim} dims "
                f"({self.calibration.dim / measured['pq_m']:g} dims per code byte)"
            )
        return tuple(notes)

    def replicas_for(self, kind: str, shards: int, qps_target: float) -> int | str:
        """Replicas of `shards` shards that sustain qps_target, or why no number of them does."""
        n = self.numbers(kind, shards, 1)
        if not n.fits:
            return f"{shards} shards do not fit"
        nic = UTILISATION * n.bounds["coordinator NIC"]
        if nic < qps_target:
            return f"the coordinator NIC sustains {nic:,.0f} QPS at {n.touched:g} shards touched"
        return max(1, math.ceil(qps_target / (UTILISATION * n.bounds["GPUs"])))

    def gpus_needed(self, kind: str, shards: int, qps_target: float) -> str:
        """GPUs that sustain qps_target: replicas of this plan's shards, and the fewest over shard counts."""
        if qps_target > UTILISATION * COORDINATOR_QPS:
            return (
                f"no GPU count: one coordinator sustains {UTILISATION * COORDINATOR_QPS:,.0f} QPS "
                "(seed §3.5); add coordinators"
            )
        here = self.replicas_for(kind, shards, qps_target)
        text = _layout(shards, here) if isinstance(here, int) else f"not with {shards} shards: {here}"
        best: tuple[int, int] | None = None
        for count in range(1, min(self.vectors, MAX_SHARDS_SEARCHED) + 1):
            if best is not None and count > best[0] * best[1]:
                break
            replicas = self.replicas_for(kind, count, qps_target)
            if isinstance(replicas, int) and (
                best is None or (count * replicas, replicas) < (best[0] * best[1], best[1])
            ):
                best = (count, replicas)
        if best is None:
            return f"{text}; no layout of up to {MAX_SHARDS_SEARCHED:,} shards reaches it"
        if best[0] * best[1] < (shards * here if isinstance(here, int) else math.inf):
            text += f"; fewest: {_layout(*best)}"
        return text + " (fan-out at each shard count from the nearest measured one)"


def _layout(shards: int, replicas: int) -> str:
    return f"{_count(shards * replicas, 'GPU')} as {_count(shards, 'shard')} x {_count(replicas, 'replica')}"


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def _verdict(value: float, target: float, more_is_better: bool) -> str:
    if (value >= target) if more_is_better else (value <= target):
        return "meets"
    if more_is_better:
        return f"short by {(1 - value / target) * 100:.0f}%"
    return f"over by {(value / target - 1) * 100:.0f}%"


def _shown_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(repo_root()))
    except ValueError:
        return str(path)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class _Checker:
    """Typed reads of the calibration JSON that fail with the file, the key and the fix."""

    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, key: str, problem: str) -> NoReturn:
        raise HpcragError(f"calibration file {self.where}: {key} {problem}; fix the file or regenerate it")

    def mapping(self, value: Any, key: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.fail(key or "the top level", "must be a JSON object")
        return value

    def items(self, top: dict[str, Any], key: str) -> list[dict[str, Any]]:
        value = top.get(key)
        if not isinstance(value, list) or not value:
            self.fail(key, "is missing or not a non-empty list")
        return [self.mapping(v, f"{key}[{i}]") for i, v in enumerate(value)]

    def number(self, values: dict[str, Any], at: str, key: str) -> float:
        name = f"{at}.{key}" if at else key
        if key not in values:
            self.fail(name, "is missing")
        if not _is_number(values[key]) or not values[key] > 0:
            self.fail(name, f"must be a number > 0, got {values[key]!r}")
        return float(values[key])

    def non_negative(self, values: dict[str, Any], at: str, key: str) -> float:
        value = values[key]
        if not _is_number(value) or not value >= 0:
            self.fail(f"{at}.{key}", f"must be a number >= 0, got {value!r}")
        return float(value)

    def count(self, values: dict[str, Any], at: str, key: str) -> int:
        number = self.number(values, at, key)
        if number != int(number):
            self.fail(f"{at}.{key}" if at else key, f"must be a whole number, got {values[key]!r}")
        return int(number)

    def share(self, values: dict[str, Any], at: str, key: str) -> float:
        value = values[key]
        if not _is_number(value) or not 0 <= value <= 1:
            self.fail(f"{at}.{key}", f"must be a share from 0 to 1, got {value!r}")
        return float(value)

    def recall(self, values: dict[str, Any], at: str) -> float:
        recall = self.number(values, at, "recall")
        if recall > 1:
            self.fail(f"{at}.recall", f"must be in (0, 1], got {recall}")
        return recall

    def text(self, values: dict[str, Any], key: str) -> str:
        if not isinstance(values.get(key), str):
            self.fail(key, "is missing or not a string")
        return values[key]
