"""`hpcrag plan matrix|memory|select|search`: the PRD's configuration matrix, memory planning, selection,
and the capacity plan of a distributed vector search."""

from __future__ import annotations

from pathlib import Path

import click

from hpcrag.catalog.search_plan import DEFAULT_NLIST
from hpcrag.cli.common import echo_json, json_option, load, replicate_option, table


@click.group()
def plan() -> None:
    """Size and choose serving configurations from the catalogue (no cluster needed)."""


@plan.command("matrix")
@click.option("--infra", default=None, help="Only this infrastructure level (hyperscaler, gpu-native, ...).")
@json_option
@click.pass_context
def matrix(ctx: click.Context, infra: str | None, as_json: bool) -> None:
    """The tier x GPU feasibility tables of each infrastructure level (PRD §4)."""
    from hpcrag.catalog.matrix import SYMBOLS, cells

    config = load(ctx)
    every = cells(config, infra)
    if as_json:
        echo_json([c.as_dict() for c in every])
        return
    for level in dict.fromkeys(c.infra for c in every):
        rows = [
            [tier.upper(), *(SYMBOLS[c.rating] for c in every if c.infra == level and c.tier == tier)]
            for tier in config.tiers
        ]
        title = config.matrix.levels[level].get("display_name", level)
        table(str(title), ["tier", *config.matrix.columns], rows)
    click.echo("✅ recommended  ✓ viable  ⚠️ marginal  ❌ not recommended")


@plan.command("memory")
@click.option("--model", default=None, help="A model of models.yaml (exact KV cache from its architecture).")
@click.option("--params", "params_b", type=float, default=None, help="Billions of parameters (PRD formula).")
@click.option(
    "--precision", default="fp16", show_default=True, help="fp32 fp16 bf16 fp8 int8 int4 awq gptq fp4"
)
@click.option("--context", type=int, default=None, help="Context length in tokens [tier's typical].")
@click.option("--batch", type=int, default=None, help="Concurrent sequences [tier's batch].")
@click.option("--tier", default=None, help="Take context and batch defaults from this tier.")
@click.option("--gpu", "gpu_names", multiple=True, help="Plan tensor parallelism for these GPUs [all].")
@json_option
@click.pass_context
def memory(
    ctx: click.Context,
    model: str | None,
    params_b: float | None,
    precision: str,
    context: int | None,
    batch: int | None,
    tier: str | None,
    gpu_names: tuple[str, ...],
    as_json: bool,
) -> None:
    """GPU memory of one replica, and the tensor-parallel size each GPU type needs."""
    from hpcrag.catalog.memory import OVERHEAD_GB_PER_GPU, plan_for_model, plan_for_params, prd_formula_gb
    from hpcrag.catalog.parallel import choose, precision_on
    from hpcrag.errors import HpcragError

    config = load(ctx)
    if (model is None) == (params_b is None):
        raise HpcragError("give exactly one of --model NAME or --params BILLIONS")
    tier_spec = config.tier(tier) if tier else None
    context = context or (tier_spec.context.typical if tier_spec else 4096)
    batch = batch or (tier_spec.batch if tier_spec else 1)
    gpus = list(gpu_names) or list(config.gpus)
    layouts = []
    plans = {}
    for gpu_name in gpus:
        gpu = config.gpu(gpu_name)
        used, note = precision_on(precision.lower(), gpu_name, gpu)
        if used not in plans:
            plans[used] = (
                plan_for_model(model, config.model(model), used, context, batch, "auto")
                if model
                else plan_for_params(params_b or 0.0, used, context, batch)
            )
        layout = choose(plans[used], gpu_name, gpu, config.serving.gpu_memory_utilization)
        layouts.append((gpu_name, used, note, layout))
    base = plans.get(precision.lower()) or next(iter(plans.values()))
    params = params_b if params_b is not None else config.model(model or "").params_b
    prd = prd_formula_gb(params, base.precision, context, batch)
    if as_json:
        echo_json(
            {
                "model": model,
                "precision": base.precision,
                "context": context,
                "batch": batch,
                "basis": base.basis,
                "weights_gb": base.weights_gb,
                "kv_cache_gb": base.kv_cache_gb,
                "kv_bytes_per_token": base.kv_bytes_per_token,
                "activation_gb": base.activation_gb,
                "overhead_gb_per_gpu": OVERHEAD_GB_PER_GPU,
                "total_gb": base.total_gb,
                "prd_formula_gb": prd,
                "parallelism": [
                    {
                        "gpu": g,
                        "precision": used,
                        "note": note,
                        "tp": layout.tp if layout else None,
                        "pp": layout.pp if layout else None,
                        "per_gpu_gb": layout.per_gpu_gb if layout else None,
                        "usable_gb": layout.usable_gb if layout else None,
                    }
                    for g, used, note, layout in layouts
                ],
            }
        )
        return
    name = model or f"{params_b:g}B parameters"
    click.echo(f"{name}, {base.precision}, context {context} x batch {batch} ({base.basis})")
    click.echo(f"  weights      {base.weights_gb:9.2f} GB")
    click.echo(
        f"  KV cache     {base.kv_cache_gb:9.2f} GB  ({base.kv_bytes_per_token / 1024:.1f} KiB per token)"
    )
    click.echo(f"  activations  {base.activation_gb:9.2f} GB")
    click.echo(f"  overhead     {OVERHEAD_GB_PER_GPU:9.2f} GB per GPU")
    click.echo(f"  total        {base.total_gb:9.2f} GB on one GPU   (PRD formula: {prd:.2f} GB)")
    rows = []
    for gpu_name, used, note, layout in layouts:
        how = layout.describe() if layout else "does not fit even on several full nodes"
        rows.append([gpu_name, used + (" *" if note else ""), how])
    table(
        "Tensor parallelism (smallest power of two that fits with headroom)",
        ["gpu", "precision", "layout"],
        rows,
    )
    for _, _, note, _ in layouts:
        if note:
            click.echo(f"* {note}")


@plan.command("select")
@click.option(
    "--complexity",
    type=click.Choice(["simple", "moderate", "complex", "frontier"]),
    required=True,
    help="Task complexity; sets the model tier (S, M, L, XL).",
)
@click.option("--latency-ms", type=float, required=True, help="Largest acceptable TTFT p99.")
@click.option("--budget", "budget_per_1k", type=float, required=True, help="Largest $ per 1K tokens.")
@click.option("--compliance", multiple=True, help="Required certification (hipaa, soc2, air-gapped, ...).")
@click.option("--gpus", "available", default=None, help="Comma-separated GPU types available [all].")
@click.option("--model", default=None, help="Model to size [the tier's first representative model].")
@click.option("--precision", default="fp8", show_default=True, help="Weight precision where the GPU has it.")
@click.option("--top", type=int, default=5, show_default=True, help="Runners-up to show.")
@json_option
@click.pass_context
def select_command(
    ctx: click.Context,
    complexity: str,
    latency_ms: float,
    budget_per_1k: float,
    compliance: tuple[str, ...],
    available: str | None,
    model: str | None,
    precision: str,
    top: int,
    as_json: bool,
) -> None:
    """Choose the configuration for a workload, and say why (PRD §4 selection)."""
    from hpcrag.catalog.select import select

    config = load(ctx)
    gpus = [g.strip() for g in available.split(",") if g.strip()] if available else None
    result = select(config, complexity, latency_ms, budget_per_1k, list(compliance), gpus, model, precision)
    if as_json:
        echo_json(result.as_dict())
        return
    chosen = result.chosen
    if chosen is None:
        click.echo(f"no configuration for tier {result.tier.upper()} ({result.model}) meets the limits:")
    else:
        click.echo(
            f"tier {result.tier.upper()} ({result.model}): {chosen.gpu} x{chosen.tp * chosen.pp} "
            f"({chosen.precision}, TP={chosen.tp}) at {chosen.provider} "
            f"[{chosen.infra}, PRD: {chosen.rating}]"
        )
        click.echo(
            f"  ~{chosen.tokens_per_s:.0f} tokens/s per request, ${chosen.usd_per_1k_tokens:.4f}/1K tokens, "
            f"TTFT p99 ~{chosen.ttft_p99_ms:.0f} ms, ${chosen.usd_per_hour:.2f}/h"
        )
        rows = [
            [
                c.infra,
                c.provider,
                c.gpu,
                f"{c.precision} TP={c.tp}",
                c.rating,
                f"{c.usd_per_1k_tokens:.4f}",
                f"{c.ttft_p99_ms:.0f}",
                f"{c.score:.2f}",
            ]
            for c in result.ranked[:top]
        ]
        table(
            "Ranked (score = rating weight x cheapest $/1K / own $/1K)",
            ["level", "provider", "gpu", "layout", "rating", "$/1K", "TTFT ms", "score"],
            rows,
        )
    reasons: dict[str, int] = {}
    for rejection in result.rejected:
        reasons[rejection.reason] = reasons.get(rejection.reason, 0) + 1
    for reason, count in sorted(reasons.items(), key=lambda kv: -kv[1])[:8]:
        click.echo(f"  rejected x{count}: {reason}")


@plan.command("search")
@click.option(
    "--vectors", "vectors_text", required=True, help="Vectors in the collection: 100M, 1.5B, 250k, 84114."
)
@click.option("--dim", type=int, required=True, help="Embedding width.")
@click.option("--gpus", type=int, required=True, help="GPUs in the deployment (shards x replicas).")
@click.option("--gpu", "gpu_name", required=True, help="GPU type of gpus.yaml (t4, l40s, h100, ...).")
@click.option("--recall", type=float, required=True, help="Recall@k target, e.g. 0.95.")
@click.option("--qps", "qps_target", type=float, default=None, help="Sustained queries/s to reach.")
@click.option("--p99-ms", "p99_target_ms", type=float, default=None, help="p99 latency limit in ms.")
@click.option("--replicas", type=int, default=1, show_default=True, help="Copies of each shard.")
@click.option("--k", type=int, default=10, show_default=True, help="Results per query.")
@click.option("--dtype", default="float16", show_default=True, help="Stored vectors: float16 or float32.")
@click.option("--pq-m", type=int, default=None, help="ivf-pq code bytes per vector [dim / 8].")
@click.option(
    "--nlist",
    type=int,
    default=DEFAULT_NLIST,
    show_default=True,
    help="Coarse centroids, which every rank holds to route (the seed's 1K clusters).",
)
@replicate_option(
    "Boundary vectors copied to a second shard at build (index build --replicate): more memory, "
    "fan-out as the calibration measured it at that share."
)
@click.option(
    "--calibration",
    "calibration_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Measured fan-out and local costs (JSON) [benchmarks/search-calibration.json if present].",
)
@json_option
@click.pass_context
def search_command(
    ctx: click.Context,
    vectors_text: str,
    dim: int,
    gpus: int,
    gpu_name: str,
    recall: float,
    qps_target: float | None,
    p99_target_ms: float | None,
    replicas: int,
    k: int,
    dtype: str,
    pq_m: int | None,
    nlist: int,
    replicate: float,
    calibration_path: Path | None,
    as_json: bool,
) -> None:
    """Capacity plan of a distributed vector search per local index kind, every figure with its source."""
    from hpcrag.catalog import search_plan as sp

    config = load(ctx)
    gpu = config.gpu(gpu_name)
    vectors = sp.parse_count(vectors_text)
    sp.check_inputs(
        vectors, dim, gpus, recall, k, replicas, dtype, qps_target, p99_target_ms, pq_m, replicate, nlist
    )
    calibration = sp.load_calibration(calibration_path) if calibration_path else sp.default_calibration()
    result = sp.plan_search(
        vectors,
        dim,
        gpus,
        gpu_name,
        gpu,
        recall,
        k=k,
        replicas=replicas,
        dtype=dtype,
        qps_target=qps_target,
        p99_target_ms=p99_target_ms,
        pq_m=pq_m,
        calibration=calibration,
        replicate=replicate,
        nlist=nlist,
    )
    if as_json:
        echo_json(result.as_dict())
        return
    shards = result.shared["shards"].value
    click.echo(
        f"{vectors:,} x {dim} {dtype} on {gpus} x {gpu.display_name} ({gpu.vram_gb} GB, "
        f"{gpu.bandwidth_tbs} TB/s): {shards} shards x {replicas} replica(s), k={k}, recall >= {recall}"
        + (f", {replicate:.0%} of the vectors also in a second shard" if replicate else "")
    )
    click.echo(f"calibration: {result.calibration or 'none (defaults marked assumed)'}")
    _figures("Shared by every kind", result.shared)
    summary = []
    for kind in result.kinds:
        if not kind.applicable:
            click.echo(str(kind.reason))
            summary.append([kind.kind, "-", "-", "-", "-", "not applicable"])
            continue
        _figures(f"{kind.kind} ({kind.device.upper()})", kind.figures)
        for text in [*kind.verdicts.values(), *kind.notes]:
            click.echo(f"  {text}")
        f = kind.figures
        memory = f["vram_per_gpu"] if "vram_per_gpu" in f else f["host_bytes_per_gpu"]
        where = "" if "vram_per_gpu" in f else " (host)"
        summary.append(
            [
                kind.kind,
                memory.text() + where,
                f["fits"].text(),
                f["system_qps"].text(),
                f["p99_ms"].text(),
                kind.verdicts.get("qps", "-"),
            ]
        )
    table("Summary", ["kind", "memory per GPU", "fits", "sustained", "p99", "target"], summary)
    for note in result.notes:
        click.echo(f"note: {note}")


def _figures(title: str, figures: dict) -> None:
    rows = [[name.replace("_", " "), figure.text(), figure.source] for name, figure in figures.items()]
    table(title, ["figure", "value", "source"], rows)
