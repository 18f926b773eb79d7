"""`hpcrag cluster status`: partitions, node states, GPUs by type and the queue, read from Slurm."""

from __future__ import annotations

import sys

import click

from hpcrag.cli.common import echo_json, json_option, load, table


@click.group()
def cluster() -> None:
    """Live state of the sites' Slurm clusters."""


@cluster.command()
@click.option("--site", "site_names", multiple=True, help="Only this site (repeatable).")
@json_option
@click.pass_context
def status(ctx: click.Context, site_names: tuple[str, ...], as_json: bool) -> None:
    """Per site: partitions, nodes and states, GPUs total/allocated/free, pending jobs and reasons.

    Exits 2 when a site's Slurm does not answer (the others are still reported).
    """
    from hpcrag.slurm.status import site_status
    from hpcrag.slurm.target import SlurmTarget, SlurmUnreachableError

    config = load(ctx)
    names = list(site_names) or list(config.sites)
    reports: list[dict[str, object]] = []
    for name in names:
        target = SlurmTarget.for_site(config.site(name))
        try:
            reports.append(site_status(target).to_dict())
        except SlurmUnreachableError as exc:
            reports.append({"site": name, "cluster": target.cluster, "reachable": False, "error": str(exc)})
    if as_json:
        echo_json({"profile": config.profile.name, "sites": reports})
    else:
        for report in reports:
            _print_site(report)
    if not all(r["reachable"] for r in reports):
        sys.exit(2)


def _print_site(report: dict) -> None:
    header = f"Site {report['site']} (cluster {report['cluster']})"
    if not report["reachable"]:
        click.secho(f"{header}: NOT REACHABLE\n  {report['error']}", fg="red", err=True)
        return
    table(
        f"{header}: partitions",
        ["partition", "state", "max time", "nodes"],
        [
            [p["name"] + ("*" if p["default"] else ""), p["state"], p["max_time"], p["nodes"]]
            for p in report["partitions"]
        ],
    )
    table(
        "Nodes",
        ["node", "state", "partitions", "GPUs (alloc/total)"],
        [
            [
                n["name"],
                n["state"],
                ",".join(n["partitions"]),
                ", ".join(f"{t} {c['allocated']}/{c['total']}" for t, c in n["gpus"].items()),
            ]
            for n in report["nodes"]
        ],
    )
    table(
        "GPUs by type",
        ["type", "total", "allocated", "free"],
        [[t, c["total"], c["allocated"], c["free"]] for t, c in report["gpus"].items()],
    )
    pending = report["pending_jobs"]
    click.echo(f"Running jobs: {report['running_jobs']}, pending: {len(pending)}")
    if pending:
        table(
            "Pending jobs",
            ["job", "partition", "name", "user", "reason", "gres"],
            [[j["job_id"], j["partition"], j["name"], j["user"], j["reason"], j["gres"]] for j in pending],
        )
