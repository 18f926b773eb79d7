"""`hpcrag index serve-group` and `hpcrag index replicas`: replica jobs of one index, and their state.

serve-group submits R jobs of `slurm/index-serve.sbatch` (round robin over the sites given), each a
whole `hpcrag index serve` that registers under the group once it has replayed the update log.
replicas lists the group's registry rows with Slurm's view of each job and what each service says
about itself (its update seq and live vectors: replicas that agree show the same).
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from hpcrag.cli.common import echo_json, load


@click.command(name="serve-group")
@click.argument("index_dir", type=click.Path(path_type=Path))
@click.option("--group", required=True, help="The group name clients use (ReplicaSet, --replicas of rag).")
@click.option("--replicas", type=click.IntRange(1, 64), default=2, show_default=True)
@click.option(
    "--sites", default=None, help="Comma-separated sites, used in turn (default: every configured site)."
)
@click.option("--ntasks", type=click.IntRange(min=1), default=1, show_default=True, help="Ranks per replica.")
@click.option("--partition", default=None, help="Slurm partition (default: the site's default).")
@click.option("--log-dir", type=click.Path(path_type=Path), default=Path("."), show_default=True)
@click.pass_context
def serve_group(
    ctx: click.Context,
    index_dir: Path,
    group: str,
    replicas: int,
    sites: str | None,
    ntasks: int,
    partition: str | None,
    log_dir: Path,
) -> None:
    """Submit REPLICAS search-service jobs of INDEX_DIR registered as one group."""
    import sys

    from hpcrag.errors import HpcragError
    from hpcrag.paths import slurm_templates_dir
    from hpcrag.search.layout import read_manifest
    from hpcrag.slurm.batch import submit
    from hpcrag.slurm.target import SlurmTarget

    config = load(ctx)
    try:
        manifest = read_manifest(index_dir)
        if ntasks > manifest.nshards:
            raise HpcragError(f"--ntasks {ntasks} exceeds the index's {manifest.nshards} shards")
        names = [s.strip() for s in sites.split(",")] if sites else list(config.sites)
        chosen = [config.site(name) for name in names]  # an unknown site is an error naming the known ones
        index_dir = index_dir.resolve()
        for number in range(replicas):
            site = chosen[number % len(chosen)]
            log = (log_dir / f"hpcrag-index-{group}-{number}-%j.out").resolve()
            export = f"--export=ALL,HPCRAG_PYTHON={sys.executable},INDEX={index_dir},PORT=0,GROUP={group}"
            args = [f"--ntasks={ntasks}", f"--job-name=hpcrag-index-{group}", export]
            if partition:
                args.append(f"--partition={partition}")
            job = submit(SlurmTarget.for_site(site), slurm_templates_dir() / "index-serve.sbatch", args, log)
            click.echo(f"replica {number} of {group!r}: job {job} at site {site.name}, log {log}")
    except HpcragError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"each registers once serving; watch them with: hpcrag index replicas {group}")


@click.command()
@click.argument("group")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.pass_context
def replicas(ctx: click.Context, group: str, as_json: bool) -> None:
    """The replicas of GROUP: Slurm state, registry state, heartbeat, and each service's update seq."""
    from hpcrag.errors import HpcragError
    from hpcrag.search.client import SearchClient
    from hpcrag.serve.launcher import joined_rows, registry_of
    from hpcrag.serve.registry import INDEX_TIER

    config = load(ctx)
    registry = registry_of(config)
    rows = [
        r
        for r in joined_rows(config, registry, registry.find(tier=INDEX_TIER))
        if r.endpoint.served_name == group
    ]
    report = []
    for row in rows:
        endpoint = row.endpoint
        health: dict = {}
        if endpoint.state == "healthy" and endpoint.url:
            try:
                with SearchClient(endpoint.url, timeout=3, token=endpoint.secret or "") as client:
                    health = client.health()
            except HpcragError as exc:
                health = {"error": str(exc)}
        beat = endpoint.heartbeat_at
        report.append(
            {
                "site": endpoint.site,
                "job": endpoint.job_id,
                "slurm": row.slurm_state,
                "state": endpoint.state,
                "url": endpoint.url,
                "heartbeat_age_s": None if beat is None else round(time.time() - beat, 1),
                "restarts": endpoint.restarts,
                "seq": health.get("seq"),
                "vectors": health.get("live_vectors"),
                "error": health.get("error"),
                "index": endpoint.model,
            }
        )
    if as_json:
        echo_json(report)
        return
    if not report:
        click.echo(f"no replica of {group!r} is registered (start them with hpcrag index serve-group)")
        return
    for item in report:
        status = item["error"] or f"update #{item['seq']}, {item['vectors']} vectors"
        click.echo(
            f"{item['site']}/{item['job']}: slurm {item['slurm'] or '?'}, {item['state']}, {item['url']}, "
            f"heartbeat {item['heartbeat_age_s']} s ago, restarts {item['restarts']}: {status}"
        )


COMMANDS = (serve_group, replicas)
