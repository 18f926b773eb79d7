"""`hpcrag demo`: the main job on the active profile: show the clusters, run a multi-rank MPI job
on every site, check what each job reports, then build and search a distributed vector index with
the sbatch templates on the first site and check it against exact search, then serve vLLM tier S
there through `serve up` and get a chat completion from it through `hpcrag gateway serve` with `auto`
routing and a one-off API key; then ingest Slurm's own documentation into the RAG collection
`slurm-docs` with slurm/rag-ingest.sbatch (2 MPI ranks) and answer a question from it through the
gateway (`model: "rag:slurm-docs"`, tier S) with its cited sources. Later features extend this command.
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
@click.option(
    "--rag-corpus",
    type=click.Choice(["subset", "all"]),
    default="subset",
    show_default=True,
    help="Slurm doc pages to ingest: a dozen central ones (about a minute the first time), or all 130.",
)
@click.pass_context
def demo(
    ctx: click.Context,
    site_names: tuple[str, ...],
    partition: str,
    nodes: int,
    ranks: int,
    workdir: Path,
    timeout: float,
    rag_corpus: str,
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
    rag_dir = workdir.resolve() / "rag"
    failures += _rag_ingest_demo(
        SlurmTarget.for_site(first), partition, rag_dir, rag_corpus, max(timeout, 900)
    )
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


# Pages of the Slurm docs a new user asks about first: the demo's collection unless --rag-corpus all.
DEMO_PAGES = (
    "quickstart.html", "faq.html", "sbatch.html", "srun.html", "squeue.html", "scancel.html",
    "sinfo.html", "job_array.html", "gres.html", "mpi_guide.html", "cpu_management.html",
)  # fmt: skip
DOCS = Path("/usr/share/doc/slurm-wlm/html")
RAG_COLLECTION = "slurm-docs"


def _rag_ingest_demo(target: SlurmTarget, partition: str, workdir: Path, corpus: str, timeout: float) -> int:
    """Ingest the Slurm docs into the `slurm-docs` collection with slurm/rag-ingest.sbatch on 2 ranks."""
    import shutil

    from hpcrag.errors import HpcragError
    from hpcrag.paths import slurm_templates_dir
    from hpcrag.slurm import batch

    if not DOCS.is_dir():
        click.secho(
            f"{DOCS} is missing: install Debian's slurm-wlm-doc (scripts/setup does)", fg="red", err=True
        )
        return 1
    pages = workdir / "slurm-docs"
    pages.mkdir(parents=True, exist_ok=True)
    wanted = sorted(p.name for p in DOCS.glob("*.html")) if corpus == "all" else DEMO_PAGES
    for name in wanted:
        if not (pages / name).is_file() or (pages / name).read_bytes() != (DOCS / name).read_bytes():
            shutil.copy2(DOCS / name, pages / name)
    for extra in set(p.name for p in pages.glob("*.html")) - set(wanted):
        (pages / extra).unlink()
    log = workdir / "rag-ingest.out"
    args = [f"--partition={partition}", "--ntasks=2", f"--export=ALL,HPCRAG_PYTHON={sys.executable}"]
    try:
        job_id = batch.submit(target, slurm_templates_dir() / "rag-ingest.sbatch", args, log,
                              [RAG_COLLECTION, str(pages)])  # fmt: skip
        outcome = batch.wait(target, job_id, log, timeout=timeout)
    except HpcragError as exc:
        click.secho(f"{target.site}: rag-ingest.sbatch: {exc}", fg="red", err=True)
        return 1
    lines = [line.strip() for line in log.read_text().splitlines()]
    summary = "; ".join(line for line in lines if line.startswith(("collection ", "added ", "chunks")))
    click.secho(
        f"{target.site}: rag-ingest.sbatch job {job_id} {outcome.state} in {outcome.elapsed}: "
        f"{len(wanted)} Slurm doc pages, {summary} OK",
        fg="green",
    )
    return 0


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
        return _rag_answer(site, url, key)
    except (httpx.HTTPError, KeyError, ValueError) as exc:
        click.secho(f"{site}: chat completion through the gateway {url} failed: {exc}", fg="red", err=True)
        return 1
    finally:
        gateway.terminate()
        gateway.wait(timeout=30)
        store.revoke(name)


RAG_QUESTION = "How do I submit a job array, and how do I cancel one of its tasks?"


def _rag_answer(site: str, url: str, key: str) -> int:
    """Ask the `slurm-docs` collection one question through the gateway's `rag:` model, tier S."""
    import httpx

    request = {
        "model": f"rag:{RAG_COLLECTION}:tier-s",
        "messages": [{"role": "user", "content": RAG_QUESTION}],
        "max_tokens": 48,
    }
    try:
        answer = httpx.post(
            f"{url}/v1/chat/completions",
            json=request,
            headers={"Authorization": f"Bearer {key}"},
            timeout=120,
        )
        reply = answer.json()
        sources = reply["hpcrag_sources"]
        text = reply["choices"][0]["message"]["content"]
    except (httpx.HTTPError, KeyError, ValueError, TypeError) as exc:
        click.secho(f"{site}: RAG answer through the gateway {url} failed: {exc}", fg="red", err=True)
        return 1
    if answer.status_code != 200 or not sources:
        click.secho(
            f"{site}: RAG answer: HTTP {answer.status_code}, {len(sources)} sources: {reply}", fg="red"
        )
        return 1
    click.echo(f"{site}: rag:{RAG_COLLECTION} (tier {answer.headers.get('X-Hpcrag-Tier')}): {RAG_QUESTION}")
    click.echo(f"  answer (random weights): {text!r}")
    for source in sources:
        where = Path(source["document"]).name + (f"#{source['anchor']}" if source.get("anchor") else "")
        click.echo(f"  [{source['number']}] {' > '.join(source['section']) or source['title']} ({where})")
    click.secho(f"{site}: RAG answer with {len(sources)} numbered sources through the gateway OK", fg="green")
    return 0


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
