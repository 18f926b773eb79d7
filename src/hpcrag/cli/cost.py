"""`hpcrag cost report`: spend, tokens and $/1K tokens of the serving fleet, with optimisation hints."""

from __future__ import annotations

import click

from hpcrag.cli.common import echo_json, json_option, load, table
from hpcrag.util.money import money


@click.group()
def cost() -> None:
    """Cost accounting from the gateway's usage ledger and Slurm's accounting."""


@cost.command("report")
@click.option(
    "--since", default="24h", show_default=True, help="A span back from now (24h, 30m, 7d) or an ISO time."
)
@click.option(
    "--by", type=click.Choice(["provider", "tier", "site", "key"]), default="provider", show_default=True
)
@json_option
@click.pass_context
def report(ctx: click.Context, since: str, by: str, as_json: bool) -> None:
    """Requests, tokens, charged dollars, GPU-hours and GPU dollars per group, and $/1K tokens."""
    from hpcrag.cost.report import build_report, parse_since

    config = load(ctx)
    result = build_report(config, by, parse_since(since))
    if as_json:
        echo_json(result.as_dict())
        return
    table(
        f"cost by {by} since {since}",
        [by, "requests", "tokens", "charged $", "GPU-hours", "GPU $", "$/1K tokens", "utilisation"],
        [
            [
                g.name or "-",
                g.requests,
                g.tokens,
                money(g.charged_usd),
                "-" if g.gpu_hours is None else f"{g.gpu_hours:.4f}",
                money(g.gpu_usd),
                money(g.usd_per_1k_tokens),
                "-" if g.utilisation is None else f"{g.utilisation:.2%}",
            ]
            for g in result.groups
        ],
    )
    for notice in result.notices:
        click.echo(f"notice: {notice}", err=True)
    for hint in result.hints:
        click.echo(f"hint: {hint}")
