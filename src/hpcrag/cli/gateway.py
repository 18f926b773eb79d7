"""`hpcrag gateway serve|keys|log`: the OpenAI-compatible gateway, its API keys and its decisions."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING

import click

from hpcrag.cli.common import PORT, echo_json, json_option, load, shown, table, tls_files, tls_options
from hpcrag.util.money import money

if TYPE_CHECKING:
    from hpcrag.config import Config
    from hpcrag.gateway.keys import KeyStore


@click.group()
def gateway() -> None:
    """Run the OpenAI-compatible gateway; manage its API keys; read its routing log."""


@gateway.command("serve")
@click.option("--host", default=None, help="Address to listen on [gateway.yaml].")
@click.option("--port", type=PORT, default=None, help="Port, 0 for a free one [gateway.yaml].")
@tls_options
@click.pass_context
def serve(
    ctx: click.Context,
    host: str | None,
    port: int | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_client_ca: Path | None,
) -> None:
    """Serve /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models, /health, /metrics.

    HTTPS with the --tls-* options, else with gateway.yaml's `tls`."""
    from hpcrag.config.schema import ListenerTls
    from hpcrag.gateway.service import serve as run

    tls = None
    if (files := tls_files(tls_cert, tls_key, tls_client_ca)) is not None:
        cert, key, client_ca = (str(p.resolve()) if p else None for p in files)
        tls = ListenerTls(cert=cert, key=key, client_ca=client_ca)
    config = load(ctx)
    settings = config.gateway

    def ready(url: str) -> None:
        click.echo(f"hpcrag gateway listening on {url} (database {config.resolve_path(settings.database)})")

    run(config, host or settings.host, settings.port if port is None else port, ready, tls)


@gateway.group()
def keys() -> None:
    """API keys: user tier, compliance needs, daily budget and rate limit per key."""


def _store(ctx: click.Context) -> tuple[Config, KeyStore]:
    from hpcrag.gateway.keys import KeyStore

    config = load(ctx)
    return config, KeyStore(config.resolve_path(config.gateway.database))


@keys.command("add")
@click.argument("name")
@click.option(
    "--user-tier", default=None, help="free, pro or enterprise (gateway.yaml user_tiers) [default]."
)
@click.option("--compliance", multiple=True, help="A certification every answer must come from (repeat).")
@click.option("--budget-usd", type=float, default=None, help="Daily budget in dollars [none].")
@click.option("--rate", "rate_per_s", type=float, default=None, help="Requests per second [no limit].")
@click.option("--burst", type=int, default=None, help="Requests allowed at once above the rate [rate].")
@click.pass_context
def add(
    ctx: click.Context,
    name: str,
    user_tier: str | None,
    compliance: tuple[str, ...],
    budget_usd: float | None,
    rate_per_s: float | None,
    burst: int | None,
) -> None:
    """Make a key NAME and print it (it is shown only this once).

    NAME is 1-64 characters: ASCII letters, digits, '.', '_', '-' and '@', starting with a letter or digit.
    """
    from hpcrag.catalog.select import eligible_levels
    from hpcrag.errors import HpcragError

    config, store = _store(ctx)
    user_tier = user_tier or config.gateway.default_user_tier
    if user_tier not in config.gateway.user_tiers:
        raise HpcragError(f"unknown user tier {user_tier!r}; one of: {', '.join(config.gateway.user_tiers)}")
    eligible_levels(config, list(compliance))  # refuses an unknown certification by name
    key = store.create(
        name,
        user_tier=user_tier,
        compliance=[c.lower() for c in compliance],
        daily_budget_usd=budget_usd,
        rate_per_s=rate_per_s,
        burst=burst,
    )
    click.echo(key)


@keys.command("list")
@json_option
@click.pass_context
def list_keys(ctx: click.Context, as_json: bool) -> None:
    """Every key with its settings and today's spend (never the key itself)."""
    from hpcrag.cost.ledger import Ledger
    from hpcrag.gateway.access import utc_day_start

    config, store = _store(ctx)
    spend = Ledger(config.resolve_path(config.gateway.database)).spend_by_key(utc_day_start())
    rows = [
        {
            "name": k.name,
            "user_tier": k.user_tier,
            "compliance": list(k.compliance),
            "daily_budget_usd": k.daily_budget_usd,
            "spent_today_usd": spend.get(k.name, 0.0),
            "rate_per_s": k.rate_per_s,
            "burst": k.burst,
            "revoked": k.revoked_at is not None,
        }
        for k in store.all()
    ]
    if as_json:
        echo_json(rows)
        return
    columns = ["name", "user tier", "compliance", "budget $/day", "spent today $", "rate/s", "revoked"]
    table(
        "API keys",
        columns,
        [
            [
                r["name"],
                r["user_tier"],
                ",".join(r["compliance"]) or "-",
                money(r["daily_budget_usd"]),
                money(r["spent_today_usd"]),
                r["rate_per_s"] or "-",
                "yes" if r["revoked"] else "",
            ]
            for r in rows
        ],
    )


@keys.command("revoke")
@click.argument("name")
@click.pass_context
def revoke(ctx: click.Context, name: str) -> None:
    """Refuse key NAME from the gateways' next refresh on."""
    _, store = _store(ctx)
    store.revoke(name)
    click.echo(f"revoked {shown(name)}")


@keys.command("budget")
@click.argument("name")
@click.argument("usd", type=float)
@click.pass_context
def budget(ctx: click.Context, name: str, usd: float) -> None:
    """Set key NAME's daily budget to USD dollars."""
    _, store = _store(ctx)
    store.set_budget(name, usd)
    click.echo(f"{shown(name)}: daily budget ${money(usd)}")


@gateway.command("log")
@click.option("--last", type=click.IntRange(min=1), default=20, show_default=True, help="Requests to show.")
@json_option
@click.pass_context
def request_log(ctx: click.Context, last: int, as_json: bool) -> None:
    """The latest requests: where each went, why, its tokens and dollars."""
    from hpcrag.cost.ledger import Ledger

    config = load(ctx)
    records = Ledger(config.resolve_path(config.gateway.database)).last(last)
    if as_json:
        echo_json([vars(r) for r in records])
        return
    table(
        f"last {len(records)} requests",
        ["time", "key", "route", "status", "tier", "endpoint", "tokens", "$", "why"],
        [
            [
                dt.datetime.fromtimestamp(r.started_at).strftime("%H:%M:%S"),
                r.key or "-",
                r.route,
                r.status,
                r.tier or "-",
                f"{r.provider}/{r.site}/{r.job_id}" if r.endpoint else "-",
                r.tokens,
                money(r.usd),
                r.decision.get("reason", r.outcome),
            ]
            for r in records
        ],
        whole="key",
    )
