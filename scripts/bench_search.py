#!/usr/bin/env python3
"""Benchmark the distributed search against faiss on this machine; print and save one table.

    .venv/bin/python scripts/bench_search.py --dataset manpages      # ../shared/datasets/manpages-minilm
    .venv/bin/python scripts/bench_search.py --dataset synthetic     # clustered Gaussian blobs
    .venv/bin/python scripts/bench_search.py --base B.npy --queries Q.npy [--gt GT.npy]
    .venv/bin/python scripts/bench_search.py --suite kinds --dataset manpages|synthetic

`--suite kinds` (issue 15's goals): hpcrag with hnsw, ivf-flat and ivf-pq shards (4 and 8 shards,
nlist 1024, 2 MPI ranks with one thread each) against single-process faiss HNSW and faiss
IndexShards over the same shards' HNSW graphs queried scatter-gather (2 threads), every method
repeated in interleaved rounds inside one MPI job (rank 0 runs the peers while rank 1 sleeps), the
median of the rounds kept. Each method's fastest setting at recall@10 >= 0.95 is compared; for
manpages the figures also go to benchmarks/search-calibration.json for `hpcrag plan search`.

Side by side, for each nprobe: exact search (faiss IndexFlat), faiss IndexIVFFlat (same nlist and
nprobe, trained by faiss itself, same threads), and hpcrag with 1, 2 and 4 MPI ranks sharing the same
cores (mpirun; threads split between ranks): recall@k against exact ground truth, queries/s for all
queries in one batch (best of --repeat), mean shards touched per query, and what a random grouping
of lists into shards would touch. Build seconds: faiss train+add; hpcrag `index build` with R ranks.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MANPAGES = REPO.parent / "shared" / "datasets" / "manpages-minilm"


def main() -> None:
    args = parse_args()
    if args.worker:
        worker(args)
        return
    if args.suite == "kinds":
        from bench_search_kinds import kinds_suite

        kinds_suite(args)
        return
    base, queries, gt, name = load_dataset(args)
    args.nlist = args.nlist or 256
    nprobes = [int(p) for p in args.nprobe.split(",")]
    ranks = [int(r) for r in args.ranks.split(",")]
    import faiss

    from hpcrag.search import Metric, reference
    from hpcrag.search.grouping import random_grouping, shards_touched
    from hpcrag.search.metric import prepare

    metric = Metric(args.metric)
    faiss.omp_set_num_threads(args.threads)
    rows: list[dict] = []
    exact = reference.exact(base, metric)
    seconds = best_of(args.repeat, lambda: reference.search(exact, queries, args.k, metric))
    if gt is None:
        gt = reference.search(exact, queries, max(args.k, 100), metric)[1]
    found = reference.search(exact, queries, args.k, metric)[1]
    rows.append(
        row("exact (faiss IndexFlat)", "-", reference.recall_at(found, gt, args.k), len(queries) / seconds)
    )

    started = time.perf_counter()
    ivf = faiss.IndexIVFFlat(faiss.IndexFlat(base.shape[1], metric.faiss_metric()), base.shape[1], args.nlist,
                             metric.faiss_metric())  # fmt: skip
    prepared = prepare(base, metric, "base")
    ivf.train(prepared)
    ivf.add(prepared)
    faiss_build = time.perf_counter() - started
    rows.extend(ivf_rows("faiss IndexIVFFlat", ivf, queries, gt, metric, nprobes, args, faiss_build))

    with tempfile.TemporaryDirectory(dir=args.workdir) as scratch:
        scratch = Path(scratch)
        np.save(scratch / "base.npy", base)
        np.save(scratch / "queries.npy", queries)
        np.save(scratch / "gt.npy", gt)
        for count in ranks:
            index_dir = scratch / f"index-{count}"
            started = time.perf_counter()
            mpirun(count, args.threads, ["-m", "hpcrag", "index", "build", str(scratch / "base.npy"),
                   "--out", str(index_dir), "--nlist", str(args.nlist), "--shards", str(args.shards),
                   "--metric", args.metric])  # fmt: skip
            build = time.perf_counter() - started
            report = scratch / f"report-{count}.json"
            worker_args = ["--worker", str(index_dir), "--queries", str(scratch / "queries.npy"),
                           "--gt", str(scratch / "gt.npy"), "--nprobe", args.nprobe, "--k", str(args.k),
                           "--repeat", str(args.repeat), "--report", str(report)]  # fmt: skip
            mpirun(count, args.threads, [__file__, *worker_args])
            centroids = np.load(index_dir / "centroids.npy")
            if count == ranks[0]:
                same = reference.ivf_flat(base, centroids, metric)
                rows.extend(
                    ivf_rows(
                        "faiss IndexIVFFlat, hpcrag's centroids", same, queries, gt, metric, nprobes, args
                    )
                )
            quantizer = faiss.IndexFlat(centroids.shape[1], metric.faiss_metric())
            quantizer.add(centroids)
            for measured in json.loads(report.read_text()):
                probes = quantizer.search(prepare(queries, metric, "q"), measured["nprobe"])[1]
                random = shards_touched(probes, random_grouping(args.nlist, args.shards)).mean()
                label = f"hpcrag, {count} rank(s)"
                rows.append(row(label, measured["nprobe"], measured["recall"], measured["qps"],
                                touched=measured["touched"], random=random, build=build))  # fmt: skip
    rows.sort(key=lambda r: (-1 if r["nprobe"] == "-" else r["nprobe"], r["method"]))
    text = render(name, base, queries, args, rows)
    print(text)
    out = REPO / "benchmarks" / f"search-{name}.md"
    out.write_text(text)
    print(f"saved {out.relative_to(REPO)}")


def ivf_rows(label, ivf, queries, gt, metric, nprobes, args, build=None) -> list[dict]:
    from hpcrag.search import reference

    rows = []
    for nprobe in nprobes:
        seconds = best_of(args.repeat, lambda p=nprobe: reference.search(ivf, queries, args.k, metric, p))
        recall = reference.recall_at(reference.search(ivf, queries, args.k, metric, nprobe)[1], gt, args.k)
        rows.append(row(label, nprobe, recall, len(queries) / seconds, build=build))
    return rows


def worker(args: argparse.Namespace) -> None:
    """Every rank: open the index; rank 0 times the searches and writes the report."""
    from hpcrag.search import DistributedIndex, make_comm, reference

    comm = make_comm()
    index = DistributedIndex.open(args.worker, comm)
    queries = np.load(args.queries) if comm.rank == 0 else None
    gt = np.load(args.gt) if comm.rank == 0 else None
    measured = []
    for nprobe in [int(p) for p in args.nprobe.split(",")]:
        best, result = float("inf"), None
        for _ in range(args.repeat + 1):  # the first run warms caches and is not counted
            result = index.search(queries, k=args.k, nprobe=nprobe)
            if result is not None and _ > 0:
                best = min(best, result.seconds)
        if comm.rank == 0:
            measured.append({"nprobe": nprobe, "recall": reference.recall_at(result.ids, gt, args.k),
                             "qps": len(queries) / best, "touched": result.mean_shards_touched})  # fmt: skip
    if comm.rank == 0:
        Path(args.report).write_text(json.dumps(measured))


def mpirun(ranks: int, threads: int, argv: list[str]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "PMIX_", "OMPI_"))}
    env.update(OMPI_MCA_plm="isolated", HPCRAG_THREADS=str(max(1, threads // ranks)))
    command = ["mpirun", "--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "-n", str(ranks),
               sys.executable, *argv]  # fmt: skip
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)


def best_of(repeat: int, action) -> float:
    action()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return min(times)


def row(method: str, nprobe, recall: float, qps: float, touched=None, random=None, build=None) -> dict:
    return {"method": method, "nprobe": nprobe, "recall": recall, "qps": qps, "touched": touched,
            "random": random, "build": build}  # fmt: skip


def render(
    name: str, base: np.ndarray, queries: np.ndarray, args: argparse.Namespace, rows: list[dict]
) -> str:
    def fmt(value, pattern: str) -> str:
        return "-" if value is None else format(value, pattern)

    lines = [
        f"# Search benchmark: {name}",
        "",
        f"- data: {base.shape[0]:,} x {base.shape[1]} base vectors, {len(queries):,} queries, "
        f"metric {args.metric}",
        f"- index: nlist {args.nlist}, {args.shards} shards, float16 storage; recall@{args.k} against exact",
        f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{args.threads} threads for every method; date {time.strftime('%Y-%m-%d')}",
        f"- command: `{' '.join(['scripts/bench_search.py', *sys.argv[1:]])}`",
        "",
        f"| nprobe | method | recall@{args.k} | queries/s | shards touched | random grouping | build s |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['nprobe']} | {r['method']} | {r['recall']:.3f} | {r['qps']:,.0f} | "
            f"{fmt(r['touched'], '.2f')} | {fmt(r['random'], '.2f')} | {fmt(r['build'], '.1f')} |"
        )
    return "\n".join(lines) + "\n"


def load_dataset(args: argparse.Namespace):
    if args.base:
        gt = np.load(args.gt) if args.gt else None
        return np.load(args.base), np.load(args.queries).astype(np.float32), gt, Path(args.base).stem
    if args.dataset == "manpages":
        return (np.load(MANPAGES / "base.f16.npy"), np.load(MANPAGES / "queries.f32.npy"),
                np.load(MANPAGES / "gt.i64.npy"), "manpages-minilm")  # fmt: skip
    from hpcrag.search.synthetic import clustered

    base, queries = clustered(
        200_000, 1000, 96, clusters=400, spread=0.6, seed=1, topics=16, topic_spread=0.5
    )
    return base.astype(np.float16), queries, None, "synthetic-clustered"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", choices=["manpages", "synthetic"], default="manpages")
    parser.add_argument("--base")
    parser.add_argument("--queries")
    parser.add_argument("--gt")
    parser.add_argument("--metric", default="ip", choices=["ip", "l2", "cosine"])
    parser.add_argument("--nlist", type=int, default=None, help="[ivf 256; kinds: 1024, synthetic 256]")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--nprobe", default="8,16,32,64")
    parser.add_argument("--ranks", default="1,2,4")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", default=None, help="Scratch directory for the built indexes.")
    parser.add_argument("--suite", choices=["ivf", "kinds"], default="ivf")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--report", help=argparse.SUPPRESS)
    return parser.parse_args()


if __name__ == "__main__":
    main()
