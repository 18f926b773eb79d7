"""`hpcrag demo`: the main job on the active profile: show the clusters, run a multi-rank MPI job
on every site, check what each job reports. Later features extend this same command.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from hpcrag.cli.common import load, table


@click.command()
@click.option("--site", "site_names", multiple=True, help="Only this site (repeatable).")
@click.option("--partition", default="tier-s", show_default=True, help="Partition for the MPI job.")
@click.option("--nodes", default=2, show_default=True, type=click.IntRange(min=1))
@click.option("--ranks", default=4, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path.home() / "hpcrag-jobs",
    show_default=True,
    help="Where job logs go (must be visible from the compute nodes).",
)
@click.option("--timeout", default=300.0, show_default=True, help="Seconds to wait for each job.")
@click.pass_context
def demo(
    ctx: click.Context,
    site_names: tuple[str, ...],
    partition: str,
    nodes: int,
    ranks: int,
    workdir: Path,
    timeout: float,
) -> None:
    """Show every site's cluster and run slurm/mpi-check.sbatch on each (srun --mpi=pmix)."""
    from hpcrag.errors import HpcragError
    from hpcrag.paths import slurm_templates_dir
    from hpcrag.slurm import batch
    from hpcrag.slurm.status import site_status
    from hpcrag.slurm.target import SlurmTarget

    config = load(ctx)
    names = list(site_names) or list(config.sites)
    script = slurm_templates_dir() / "mpi-check.sbatch"
    click.echo(f"profile {config.profile.name}: sites {', '.join(names)}")
    submitted: list[tuple[str, SlurmTarget, str, Path]] = []
    for name in names:
        site = config.site(name)
        site.partition(partition)
        target = SlurmTarget.for_site(site)
        status = site_status(target)
        table(
            f"{name} ({site.display_name}, cluster {target.cluster}): GPUs",
            ["type", "total", "allocated", "free"],
            [[t, c.total, c.allocated, c.free] for t, c in status.gpus.items()],
        )
        log = workdir.resolve() / f"mpi-check-{name}.out"
        args = [
            f"--partition={partition}",
            f"--nodes={nodes}",
            f"--ntasks={ranks}",
            f"--export=ALL,HPCRAG_PYTHON={sys.executable}",
        ]
        job_id = batch.submit(target, script, args, log)
        click.echo(f"{name}: submitted {script.name} as job {job_id} on {partition} ({ranks} ranks)")
        submitted.append((name, target, job_id, log))
    failures = 0
    for name, target, job_id, log in submitted:
        try:
            outcome = batch.wait(target, job_id, log, timeout=timeout)
        except HpcragError as exc:
            click.secho(f"{name}: {exc}", fg="red", err=True)
            failures += 1
            continue
        report = _report(log)
        nodes_used = sorted({r["node"] for r in report["ranks"]})
        gpus = {r["node"]: r["cuda_visible_devices"] for r in report["ranks"]}
        ok = report["ok"] and report["cluster"] == target.cluster and report["size"] == ranks
        click.secho(
            f"{name}: job {job_id} {outcome.state} in {outcome.elapsed} on cluster {report['cluster']}, "
            f"partition {report['partition']}: {report['size']} ranks on {', '.join(nodes_used)}, "
            f"CUDA_VISIBLE_DEVICES {gpus}, allreduce {report['allreduce']} "
            f"(expected {report['expected']}) {'OK' if ok else 'WRONG'}",
            fg="green" if ok else "red",
        )
        failures += 0 if ok else 1
    if failures:
        sys.exit(1)


def _report(log: Path) -> dict:
    for line in reversed(log.read_text().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    from hpcrag.errors import HpcragError

    raise HpcragError(f"the job wrote no report line; see {log}")
