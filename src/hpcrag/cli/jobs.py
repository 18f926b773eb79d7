"""`hpcrag jobs list|cancel`: the queues of the sites, and cancelling a job on its own cluster."""

from __future__ import annotations

import click

from hpcrag.cli.common import echo_json, json_option, load, table


@click.group()
def jobs() -> None:
    """Jobs queued or running on the sites."""


@jobs.command("list")
@click.option("--site", "site_names", multiple=True, help="Only this site (repeatable).")
@click.option("--user", default=None, help="Only this user's jobs.")
@json_option
@click.pass_context
def list_jobs(ctx: click.Context, site_names: tuple[str, ...], user: str | None, as_json: bool) -> None:
    """Jobs of every site (or of --site), as squeue reports them."""
    from hpcrag.slurm.status import list_jobs as read_jobs
    from hpcrag.slurm.target import SlurmTarget

    config = load(ctx)
    rows = []
    for name in list(site_names) or list(config.sites):
        for job in read_jobs(SlurmTarget.for_site(config.site(name)), user=user):
            rows.append({"site": name, **job})
    if as_json:
        echo_json(rows)
        return
    table(
        "Jobs",
        [
            "site",
            "job",
            "partition",
            "name",
            "user",
            "state",
            "time",
            "limit",
            "nodes",
            "nodelist (reason)",
            "gres",
        ],
        [
            [
                r["site"],
                r["job_id"],
                r["partition"],
                r["name"],
                r["user"],
                r["state"],
                r["time"],
                r["time_limit"],
                r["nodes"],
                r["reason_or_nodes"],
                r["gres"],
            ]
            for r in rows
        ],
    )


@jobs.command()
@click.argument("job_ids", nargs=-1, required=True)
@click.option("--site", required=True, help="The site whose cluster runs the jobs.")
@click.pass_context
def cancel(ctx: click.Context, job_ids: tuple[str, ...], site: str) -> None:
    """Cancel JOB_IDS on SITE's cluster."""
    from hpcrag.errors import HpcragError
    from hpcrag.slurm.status import list_jobs as read_jobs
    from hpcrag.slurm.target import SlurmTarget

    target = SlurmTarget.for_site(load(ctx).site(site))
    bad = [j for j in job_ids if not j.replace("_", "").isdigit()]
    if bad:
        raise HpcragError(f"not a Slurm job id: {', '.join(bad)} (expected numbers such as 100042)")
    queued = {j["job_id"].split("_")[0] for j in read_jobs(target)}
    unknown = [j for j in job_ids if j.split("_")[0] not in queued]
    if unknown:
        raise HpcragError(
            f"no such queued or running job on site {site}: {', '.join(unknown)} "
            f"(see `hpcrag jobs list --site {site}`)"
        )
    target.scancel(*job_ids)
    click.echo(f"cancelled on {site}: {', '.join(job_ids)}")
