"""`hpcrag`: the entry point. Only click is imported at start, so `--help` is instant anywhere."""

from __future__ import annotations

import sys
from typing import Any

import click

from hpcrag.cli import (
    cluster,
    cost,
    demo,
    gateway,
    index,
    index_replicas,
    index_updates,
    jobs,
    plan,
    rag,
    serve,
    sites,
)


class _Group(click.Group):
    """Prints hpcrag's own errors as one clear message and exit code 1, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        from hpcrag.errors import HpcragError

        try:
            return super().invoke(ctx)
        except HpcragError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--profile",
    envvar="HPCRAG_PROFILE",
    default=None,
    help="Deployment profile in site-configs/profiles (default: dev, the local clusters).",
)
@click.option(
    "--config-dir",
    envvar="HPCRAG_CONFIG_DIR",
    default=None,
    type=click.Path(file_okay=False),
    help="The site-configs directory to read.",
)
@click.version_option(package_name="hpcrag")
@click.pass_context
def cli(ctx: click.Context, profile: str | None, config_dir: str | None) -> None:
    """hpcrag: distributed vector search, tiered LLM serving and RAG on Slurm."""
    ctx.obj = {"profile": profile, "config_dir": config_dir}


cli.add_command(sites.sites)
cli.add_command(cluster.cluster)
cli.add_command(jobs.jobs)
cli.add_command(demo.demo)
cli.add_command(index.index)
for command in (*index_updates.COMMANDS, *index_replicas.COMMANDS):
    index.index.add_command(command)
cli.add_command(plan.plan)
cli.add_command(serve.serve)
cli.add_command(gateway.gateway)
cli.add_command(cost.cost)
cli.add_command(rag.rag)
