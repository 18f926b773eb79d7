"""`scripts/dev-cluster up|down|status`: start, stop and inspect the local clusters."""

from __future__ import annotations

import json
import sys

import click

from hpcrag.config import load_config
from hpcrag.errors import HpcragError


def _cluster(profile: str | None):
    from hpcrag.devcluster import DevCluster

    return DevCluster(load_config(profile=profile), log=lambda line: click.echo(line, err=True))


@click.group()
@click.option("--profile", default=None, help="Local profile to run (default: $HPCRAG_PROFILE or dev).")
@click.pass_context
def main(ctx: click.Context, profile: str | None) -> None:
    """Run the sites of a local profile as real Slurm clusters on this host."""
    ctx.obj = profile


@main.command()
@click.option("--timeout", default=90.0, show_default=True, help="Seconds to wait for every node.")
@click.pass_obj
def up(profile: str | None, timeout: float) -> None:
    """Start munge, MariaDB, slurmdbd and every site's slurmctld and slurmd; wait until ready."""
    seconds = _cluster(profile).up(timeout=timeout)
    click.echo(f"local clusters ready in {seconds:.1f}s")


@main.command()
@click.option("--purge", is_flag=True, help="Also delete the run directory (state, database, logs).")
@click.pass_obj
def down(profile: str | None, purge: bool) -> None:
    """Stop every daemon and job step of the local clusters."""
    stopped = _cluster(profile).down(purge=purge)
    click.echo(f"stopped {stopped} processes")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def status(profile: str | None, as_json: bool) -> None:
    """Show every daemon, its pid and log; exit 3 if any is not running."""
    rows = _cluster(profile).status()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        for row in rows:
            state = f"running (pid {row['pid']})" if row["running"] else "stopped"
            click.echo(f"{row['daemon']:<10} {row['site']:<10} {state:<22} {row['log']}")
    if not all(row["running"] for row in rows):
        sys.exit(3)


if __name__ == "__main__":
    try:
        main(standalone_mode=True)
    except HpcragError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
