"""`hpcrag demo`: the main job on the active profile: show the clusters, run a multi-rank MPI job
on every site, check what each job reports, then build and search a distributed vector index with
the sbatch templates on the first site and check it against exact search, then serve vLLM tier S
there through `serve up` and get a chat completion from it through `hpcrag gateway serve` with `auto`
routing and a one-off API key. Later features extend this same command.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from hpcrag.cli.common import load, table

if TYPE_CHECKING:
    from hpcrag.config import Config
    from hpcrag.serve.registry import Endpoint
    from hpcrag.slurm.target import SlurmTarget


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
    first = config.site(names[0])
    failures += _search_demo(SlurmTarget.for_site(first), partition, workdir.resolve() / "search", timeout)
    failures += _serve_demo(config, first.name, timeout=max(timeout, 420.0))
    if failures:
        sys.exit(1)


def _search_demo(target: SlurmTarget, partition: str, workdir: Path, timeout: float) -> int:
    """Build an index of synthetic clustered vectors with 2 ranks, search it with 2 ranks, and
    compare with exact search; returns 1 on failure."""
    import numpy as np

    from hpcrag.errors import HpcragError
    from hpcrag.paths import slurm_templates_dir
    from hpcrag.search import Metric, reference
    from hpcrag.search.synthetic import clustered
    from hpcrag.slurm import batch

    workdir.mkdir(parents=True, exist_ok=True)
    base, queries = clustered(50_000, 500, 64, clusters=200, spread=0.6, seed=7, topics=16, topic_spread=0.5)
    np.save(workdir / "base.npy", base)
    np.save(workdir / "queries.npy", queries)
    index_dir, result_path = workdir / "index", workdir / "result.npz"
    common = [f"--partition={partition}", "--ntasks=2", f"--export=ALL,HPCRAG_PYTHON={sys.executable}"]
    steps = [
        ("index-build.sbatch", [str(workdir / "base.npy"), "--out", str(index_dir), "--nlist", "128",
                                "--shards", "4", "--overwrite"]),
        ("index-search.sbatch", [str(index_dir), "--queries", str(workdir / "queries.npy"), "--k", "10",
                                 "--nprobe", "8", "--out", str(result_path)]),
    ]  # fmt: skip
    for script, args in steps:
        log = workdir / script.replace(".sbatch", ".out")
        try:
            job_id = batch.submit(target, slurm_templates_dir() / script, common, log, args)
            outcome = batch.wait(target, job_id, log, timeout=timeout)
        except HpcragError as exc:
            click.secho(f"{target.site}: {script}: {exc}", fg="red", err=True)
            return 1
        click.echo(f"{target.site}: {script} job {job_id} {outcome.state} in {outcome.elapsed}: "
                   f"{_summary(log)}")  # fmt: skip
    result = np.load(result_path)
    truth = reference.search(reference.exact(base, Metric.IP), queries, 10, Metric.IP)[1]
    recall = reference.recall_at(result["ids"], truth, 10)
    touched = float(result["shards_touched"].mean())
    ok = recall >= 0.9
    click.secho(
        f"{target.site}: vector search over 2 ranks: recall@10 {recall:.3f} against exact search, "
        f"mean shards touched {touched:.2f} of 4 {'OK' if ok else 'LOW'}",
        fg="green" if ok else "red",
    )
    return 0 if ok else 1


def _serve_demo(config: Config, site: str, timeout: float) -> int:
    """Launch vLLM tier S at `site` through `serve up`, ask it one chat completion, take it down."""
    import time

    from hpcrag.errors import HpcragError
    from hpcrag.serve import launcher

    began = time.monotonic()
    try:
        (endpoint,) = launcher.up(config, site, "s", priority="development")
        click.echo(
            f"{site}: serve up tier s: job {endpoint.job_id} ({endpoint.model}); log: {endpoint.log_path}"
        )
        (endpoint,) = launcher.wait_healthy(config, [endpoint], timeout)
    except HpcragError as exc:
        click.secho(f"{site}: serve: {exc}", fg="red", err=True)
        return 1
    try:
        return _chat_through_gateway(config, site, endpoint, began)
    finally:
        launcher.down(config, [endpoint])
        click.echo(f"{site}: serve down: job {endpoint.job_id} cancelled and deregistered")


def _chat_through_gateway(config: Config, site: str, endpoint: Endpoint, began: float) -> int:
    """Start `hpcrag gateway serve`, send one `auto` chat completion through it with a one-off key."""
    import os
    import subprocess
    import sys
    import time

    import httpx

    from hpcrag.gateway.keys import KeyStore
    from hpcrag.serve.supervisor import free_port

    port = free_port()
    store = KeyStore(config.resolve_path(config.gateway.database))
    name = f"demo-{int(time.time())}"
    key = store.create(name, user_tier=config.gateway.default_user_tier)
    env = {**os.environ, "HPCRAG_CONFIG_DIR": str(config.root), "HPCRAG_PROFILE": config.profile.name}
    gateway = subprocess.Popen(
        [sys.executable, "-m", "hpcrag", "gateway", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).json()["endpoints"] >= 1:
                    break
            except (httpx.HTTPError, ValueError):
                pass
            if gateway.poll() is not None or time.monotonic() > deadline:
                click.secho(
                    f"{site}: the gateway did not start: {gateway.stderr.read().decode()}", fg="red", err=True
                )
                return 1
            time.sleep(0.3)
        request = {
            "model": "auto",
            "messages": [{"role": "user", "content": "hello, what is a slurm job?"}],
            "max_tokens": 8,
        }
        answer = httpx.post(
            f"{url}/v1/chat/completions", json=request, headers={"Authorization": f"Bearer {key}"}, timeout=60
        )
        reply = answer.json()
        usage = reply["usage"]
        click.secho(
            f"{site}: vLLM tier s healthy at {endpoint.url} after {time.monotonic() - began:.0f} s; "
            f"gateway {url} routed 'auto' to tier {answer.headers['X-Hpcrag-Tier']} "
            f"({answer.headers['X-Hpcrag-Endpoint']}); chat completion "
            f"{usage['prompt_tokens']}+{usage['completion_tokens']} tokens: "
            f"{reply['choices'][0]['message']['content']!r} (random weights) OK",
            fg="green",
        )
        return 0
    except (httpx.HTTPError, KeyError, ValueError) as exc:
        click.secho(f"{site}: chat completion through the gateway {url} failed: {exc}", fg="red", err=True)
        return 1
    finally:
        gateway.terminate()
        gateway.wait(timeout=30)
        store.revoke(name)


def _summary(log: Path) -> str:
    """The command's own last line, skipping progress lines (stderr may land after stdout)."""
    lines = [line for line in log.read_text().splitlines() if line and not line.startswith("[hpcrag")]
    return lines[-1] if lines else f"(no output; see {log})"


def _report(log: Path) -> dict:
    for line in reversed(log.read_text().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    from hpcrag.errors import HpcragError

    raise HpcragError(f"the job wrote no report line; see {log}")
