"""`hpcrag serve up|down|status|logs|run|burst`: vLLM tiers as Slurm jobs, and cloud burst."""

from __future__ import annotations

import datetime as dt
import time

import click

from hpcrag.cli.common import echo_json, json_option, load, table
from hpcrag.util.money import money

PRIORITY = click.Choice(["production-critical", "production-standard", "batch-processing", "development"])


@click.group()
def serve() -> None:
    """Launch, inspect and stop vLLM servers per tier and site."""


def _spec_options(command: click.decorators.FC) -> click.decorators.FC:
    for option in reversed(
        [
            click.option("--site", required=True, help="Site to run at (nyc, sf)."),
            click.option("--tier", required=True, help="Model tier: s, m, l or xl."),
            click.option(
                "--model", default=None, help="Model of models.yaml [the site's or tier's default]."
            ),
            click.option(
                "--precision", default="auto", show_default=True, help="auto, bf16, fp16, fp8, awq, ..."
            ),
            click.option(
                "--gpu", "gpu_type", default=None, help="GPU type of the partition [best that fits]."
            ),
            click.option("--max-model-len", type=int, default=None, help="Context length [tier's typical]."),
        ]
    ):
        command = option(command)
    return command


@serve.command("up")
@_spec_options
@click.option("--replicas", type=int, default=1, show_default=True, help="Servers (one Slurm job each).")
@click.option("--priority", type=PRIORITY, default="production-standard", show_default=True)
@click.option("--wait/--no-wait", default=False, help="Wait until every server answers /health.")
@click.option("--timeout", type=float, default=900, show_default=True, help="Seconds --wait waits.")
@click.option("--dry-run", is_flag=True, help="Print the launch spec; submit nothing.")
@json_option
@click.pass_context
def up(
    ctx: click.Context,
    site: str,
    tier: str,
    model: str | None,
    precision: str,
    gpu_type: str | None,
    max_model_len: int | None,
    replicas: int,
    priority: str,
    wait: bool,
    timeout: float,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Submit vLLM servers for a tier at a site (checked and sized before anything is submitted)."""
    from hpcrag.serve import launcher
    from hpcrag.serve.spec import build_spec

    config = load(ctx)
    if dry_run:
        spec = build_spec(config, site, tier, model, precision, gpu_type, max_model_len)
        launcher.priority_parameters(config, priority)
        if as_json:
            echo_json(spec.as_dict())
            return
        click.echo(
            f"{spec.site}/{spec.partition}: {spec.model} {spec.precision} on {spec.gpus} x {spec.gpu_type} "
            f"(TP={spec.tp}, {spec.per_gpu_gb:.1f} GB per GPU), ${money(spec.usd_per_hour)}/h"
        )
        click.echo(f"  command: {' '.join(spec.argv)}")
        for key, value in spec.env.items():
            click.echo(f"  env: {key}={value}")
        for note in spec.notes:
            click.echo(f"  note: {note}")
        return
    endpoints = launcher.up(
        config,
        site,
        tier,
        model=model,
        replicas=replicas,
        priority=priority,
        precision=precision,
        gpu_type=gpu_type,
        max_model_len=max_model_len,
    )
    for endpoint in endpoints:
        click.echo(
            f"submitted endpoint {endpoint.id}: tier {endpoint.tier} {endpoint.model} on {site}, "
            f"job {endpoint.job_id}; log: {endpoint.log_path}"
        )
    if wait:
        for endpoint in launcher.wait_healthy(config, endpoints, timeout):
            click.echo(f"endpoint {endpoint.id} healthy at {endpoint.url}")


@serve.command("down")
@click.argument("ids", type=int, nargs=-1)
@click.option("--site", default=None, help="Every live server of this site.")
@click.option("--tier", default=None, help="Every live server of this tier.")
@click.option("--all", "everything", is_flag=True, help="Every live server.")
@click.pass_context
def down(
    ctx: click.Context, ids: tuple[int, ...], site: str | None, tier: str | None, everything: bool
) -> None:
    """Cancel servers' jobs (or cloud instances) and deregister them."""
    from hpcrag.serve import launcher

    config = load(ctx)
    registry = launcher.registry_of(config)
    if site is not None:
        config.site(site)
    if tier is not None:
        config.tier(tier)
    chosen = launcher.select_endpoints(registry, list(ids), site, tier, everything)
    if not chosen:
        click.echo("no live servers matched")
        return
    for endpoint in chosen:
        if not endpoint.live:
            click.echo(f"endpoint {endpoint.id} already ended ({endpoint.state})")
    for endpoint in launcher.down(config, chosen):
        click.echo(
            f"stopped endpoint {endpoint.id} ({endpoint.provider} {endpoint.job_id} on {endpoint.site})"
        )


@serve.command("status")
@click.option("--all", "everything", is_flag=True, help="Also servers that have ended.")
@click.option("--site", default=None, help="Only this site.")
@json_option
@click.pass_context
def status(ctx: click.Context, everything: bool, site: str | None, as_json: bool) -> None:
    """The registry joined with Slurm's state; a dead job shows its state and log path."""
    from hpcrag.serve import launcher

    config = load(ctx)
    if site is not None:
        config.site(site)
    rows = launcher.status(config, everything=everything, site=site)
    if as_json:
        echo_json([{**r.endpoint.public(), "slurm_state": r.slurm_state, "problem": r.problem} for r in rows])
        return
    if not rows:
        where = f" at {site}" if site else ""
        click.echo(
            f"no servers registered{where}"
            if everything
            else f"no live servers{where}; `hpcrag serve status --all` also shows servers that have ended"
        )
        return
    table(
        "Servers",
        ["id", "site", "tier", "model", "provider", "job", "state", "slurm", "url", "$/h", "since"],
        [
            [
                e.id,
                e.site,
                e.tier,
                e.model,
                e.provider,
                e.job_id,
                e.state,
                r.slurm_state or "-",
                e.url or "-",
                money(e.usd_per_hour),
                _since(e.healthy_at or e.started_at or e.submitted_at),
            ]
            for r in rows
            for e in [r.endpoint]
        ],
    )
    for site_name in sorted({r.endpoint.site for r in rows if r.slurm_state == launcher.UNREACHABLE}):
        click.echo(f"site {site_name}: Slurm not reachable; its rows show the registry's last word")
    for row in rows:
        if row.problem:
            click.echo(f"endpoint {row.endpoint.id}: {row.problem}" + _message(row.endpoint.message))


def _message(message: str) -> str:
    return f" ({message})" if message and "log:" not in message else ""


def _since(stamp: float | None) -> str:
    if stamp is None:
        return "-"
    return dt.datetime.fromtimestamp(stamp).strftime("%H:%M:%S")


@serve.command("logs")
@click.argument("endpoint_id", type=int)
@click.option("-n", "--lines", type=int, default=50, show_default=True, help="Last lines (0: all).")
@click.pass_context
def logs(ctx: click.Context, endpoint_id: int, lines: int) -> None:
    """The Slurm log of a server's job (vLLM's output included)."""
    from hpcrag.serve import launcher

    config = load(ctx)
    click.echo(launcher.log_text(launcher.registry_of(config).get(endpoint_id), lines))


@serve.command("run")
@_spec_options
@click.pass_context
def run(
    ctx: click.Context,
    site: str,
    tier: str,
    model: str | None,
    precision: str,
    gpu_type: str | None,
    max_model_len: int | None,
) -> None:
    """Run the supervisor in this Slurm job (what slurm/vllm-tier.sbatch calls)."""
    from hpcrag.serve.launcher import supervisor_for
    from hpcrag.serve.spec import build_spec
    from hpcrag.serve.supervisor import run_foreground

    config = load(ctx)
    spec = build_spec(config, site, tier, model, precision, gpu_type, max_model_len)
    run_foreground(supervisor_for(config, spec))


@serve.command("burst")
@click.option("--tier", required=True, help="Tier whose load is evaluated.")
@click.option(
    "--wait-s",
    "wait_s",
    type=float,
    default=None,
    help="How long the tier's requests wait now [measured from its servers' vLLM metrics].",
)
@click.option("--interval", type=float, default=30.0, show_default=True, help="Seconds between samples.")
@click.option("--watch", is_flag=True, help="Keep evaluating every --interval seconds (Ctrl-C stops).")
@json_option
@click.pass_context
def burst(
    ctx: click.Context, tier: str, wait_s: float | None, interval: float, watch: bool, as_json: bool
) -> None:
    """Evaluate the burst policy: burst to a cloud, scale back idle burst servers, or hold."""
    from hpcrag.serve import load as tier_load
    from hpcrag.serve.burst.policy import BurstPolicy
    from hpcrag.serve.client import backend_ssl_context
    from hpcrag.serve.launcher import registry_of

    config = load(ctx)
    config.tier(tier)
    registry = registry_of(config)
    policy = BurstPolicy(config, registry)
    verify = backend_ssl_context(config)  # https servers signed by the site's CA (serving.backend_ca)
    previous = tier_load.sample(registry, tier, verify=verify) if wait_s is None else None
    while True:
        observed = wait_s
        if previous is not None:
            time.sleep(interval)
            current = tier_load.sample(registry, tier, verify=verify)
            observed = tier_load.recent_wait_s(previous, current)
            previous = current
        assert observed is not None
        decisions = policy.evaluate(tier, observed)
        if as_json:
            echo_json(
                [
                    {
                        "action": d.action,
                        "reason": d.reason,
                        "endpoint": d.endpoint.public() if d.endpoint else None,
                    }
                    for d in decisions
                ]
            )
        else:
            stamp = dt.datetime.now().strftime("%H:%M:%S")
            for decision in decisions:
                click.echo(f"{stamp} {decision.action}: {decision.reason}")
        if not watch:
            return
        if previous is None:
            time.sleep(interval)
