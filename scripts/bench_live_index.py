#!/usr/bin/env python3
"""Benchmark the live index on the man-page set: filtered search at 50/10/1/0.1% selectivity, update
throughput, search while updating, and compaction; print and save one report.

    .venv/bin/python scripts/bench_live_index.py [--repeat 3] [--out benchmarks/live-index-manpages.md]

Filters: every vector carries `bucket` (uniform 0..999, so `bucket < 500` keeps 50%), its man page
`section` and `page`. For each filter, recall@10 against the exact top-10 over the matching rows
(NumPy, float32), and queries/s of the 1,000 queries in one batch with the `auto` strategy (and with
`ivf` and `exact` forced), best of --repeat rounds that interleave every method; the unfiltered
search at the same nprobe is in every round. Updates: batches through the Python API (each one
fsynced before it returns), then an HTTP search service in this process taking 100-query searches
from one client while another streams upserts, alternated with periods without updates.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "datasets" / "manpages-minilm"
FILTERS = [
    ("bucket < 500 (50%)", {"bucket": {"lt": 500}}),
    ("bucket < 100 (10%)", {"bucket": {"lt": 100}}),
    ("bucket < 10 (1%)", {"bucket": {"lt": 10}}),
    ("bucket = 0 (0.1%)", {"bucket": 0}),
    ("section = 5 (5.4%)", {"section": 5}),
    ('page = "bash.1.txt"', {"page": "bash.1.txt"}),
]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--nlist", type=int, default=256)
    parser.add_argument("--nprobe", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "live-index-manpages.md")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "src"))
    from hpcrag.search.threads import limit_threads

    limit_threads(args.threads)
    base = np.load(DATA / "base.f16.npy")
    queries = np.load(DATA / "queries.f32.npy")
    pages = json.loads((DATA / "sources.json").read_text())
    rng = np.random.default_rng(7)
    rows = [
        {"bucket": int(b), "section": int(page.rsplit(".", 2)[-2][0]), "page": page}
        for b, page in zip(rng.integers(0, 1000, len(base)), pages, strict=True)
    ]
    work = Path(tempfile.mkdtemp(prefix="hpcrag-bench-live-"))
    try:
        lines = [f"# Live index benchmark: manpages-minilm ({len(base):,} x {base.shape[1]})", ""]
        lines += [
            f"- machine: {platform.machine()}, {args.threads} threads; date {time.strftime('%Y-%m-%d')}",
            f"- index: nlist {args.nlist}, 4 shards, float16, one process; nprobe {args.nprobe} everywhere",
            f"- command: `scripts/bench_live_index.py --repeat {args.repeat}`",
            "",
        ]
        index = build(work, base, rows, args.nlist)
        lines += filters(index, base, queries, rows, args)
        lines += updates(index, base, queries, args, rng)
        lines += service_under_updates(work / "index", base, queries, args, rng)
        lines += compaction(index, work / "index", queries, args)
        report = "\n".join(lines) + "\n"
        print(report)
        args.out.write_text(report)
        print(f"wrote {args.out}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def build(work: Path, base: np.ndarray, rows: list[dict], nlist: int):
    from hpcrag.search import BuildOptions, DistributedIndex, build_index

    np.save(work / "base.npy", base)
    with open(work / "attributes.jsonl", "w") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows)
    started = time.perf_counter()
    build_index(
        work / "base.npy",
        work / "index",
        BuildOptions(nlist=nlist, nshards=4),
        attributes_path=work / "attributes.jsonl",
    )
    print(f"built in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return DistributedIndex.open(work / "index")


def timed(action) -> tuple[float, object]:
    started = time.perf_counter()
    value = action()
    return time.perf_counter() - started, value


def filtered_truth(base32: np.ndarray, queries: np.ndarray, match: np.ndarray) -> np.ndarray:
    rows = np.flatnonzero(match)
    scores = queries @ base32[rows].T
    top = np.argsort(-scores, axis=1, kind="stable")[:, :10]
    return rows[top]


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    hits = [
        len(set(f[f >= 0].tolist()) & set(t.tolist())) / min(10, len(t))
        for f, t in zip(found, truth, strict=True)
    ]
    return float(np.mean(hits))


def filters(index, base, queries, rows, args) -> list[str]:
    from hpcrag.search.filters import compile_filter

    base32 = base.astype(np.float32)
    columns = np.array([[r["bucket"], r["section"]] for r in rows])
    cases = []
    for name, spec in FILTERS:
        flt = compile_filter(spec, index.schema)
        if "bucket" in spec:
            value = spec["bucket"]
            match = columns[:, 0] < value["lt"] if isinstance(value, dict) else columns[:, 0] == value
        elif "section" in spec:
            match = columns[:, 1] == spec["section"]
        else:
            match = np.array([r["page"] == spec["page"] for r in rows])
        cases.append((name, flt, match, filtered_truth(base32, queries, match)))
    best: dict[tuple[str, str], float] = {}
    outcome: dict[tuple[str, str], tuple[float, str]] = {}
    unfiltered_truth = np.load(DATA / "gt.i64.npy")[:, :10]
    for _ in range(args.repeat):
        seconds, result = timed(lambda: index.search(queries, k=10, nprobe=args.nprobe))
        best["none", "auto"] = min(best.get(("none", "auto"), np.inf), seconds)
        outcome["none", "auto"] = (recall(result.ids, unfiltered_truth), result.strategy)
        for name, flt, _, truth in cases:
            for strategy in ("auto", "ivf", "exact"):
                seconds, result = timed(
                    lambda flt=flt, strategy=strategy: index.search(
                        queries, k=10, nprobe=args.nprobe, filter=flt, strategy=strategy
                    )
                )
                best[name, strategy] = min(best.get((name, strategy), np.inf), seconds)
                outcome[name, strategy] = (recall(result.ids, truth), result.strategy)
    nq = len(queries)
    unfiltered = nq / best["none", "auto"]
    lines = [
        "## Filtered search",
        "",
        "recall@10 against the exact top-10 among the matching vectors; q/s for 1,000 queries in one batch.",
        "",
        "| filter | matching | auto: strategy | auto: recall@10 | auto: q/s | vs unfiltered "
        "| ivf forced: recall@10 | ivf: q/s | exact forced: q/s |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
        f"| none | {len(base):,} | ivf | {outcome['none', 'auto'][0]:.3f} | {unfiltered:,.0f} "
        "| 1.00 | - | - | - |",
    ]
    for name, _, match, _ in cases:
        auto_recall, strategy = outcome[name, "auto"]
        qps = nq / best[name, "auto"]
        lines.append(
            f"| {name} | {int(match.sum()):,} | {strategy} | {auto_recall:.3f} | {qps:,.0f} "
            f"| {qps / unfiltered:.2f} | {outcome[name, 'ivf'][0]:.3f} | {nq / best[name, 'ivf']:,.0f} "
            f"| {nq / best[name, 'exact']:,.0f} |"
        )
    return [*lines, ""]


def new_vectors(base, rng, count):
    picked = base[rng.integers(0, len(base), count)].astype(np.float32) + rng.normal(
        0, 0.02, (count, base.shape[1])
    )
    return (picked / np.linalg.norm(picked, axis=1, keepdims=True)).astype(np.float32)


def updates(index, base, queries, args, rng) -> list[str]:
    lines = ["## Updates through the Python API (one process; each call fsynced before it returns)", ""]
    lines += ["| operation | rows per call | calls | rows/s | ms per call |", "|---|---:|---:|---:|---:|"]
    next_id = 10_000_000
    for batch in (10, 1000):
        calls = 20 if batch == 10 else 10
        for kind in ("add", "upsert", "delete"):
            total = 0.0
            for _ in range(calls):
                if kind == "add":
                    ids = np.arange(next_id, next_id + batch)
                    next_id += batch
                    vectors = new_vectors(base, rng, batch)
                    seconds, _ = timed(lambda ids=ids, vectors=vectors: index.add(vectors, ids))
                elif kind == "upsert":
                    ids = rng.choice(len(base), batch, replace=False)
                    vectors = new_vectors(base, rng, batch)
                    seconds, _ = timed(lambda ids=ids, vectors=vectors: index.upsert(vectors, ids))
                else:
                    ids = rng.choice(next_id - 10_000_000, batch, replace=False) + 10_000_000
                    seconds, _ = timed(lambda ids=ids: index.delete(ids))
                total += seconds
            lines.append(
                f"| {kind} | {batch:,} | {calls} | {batch * calls / total:,.0f} "
                f"| {1000 * total / calls:.1f} |"
            )
    deltas = sum(len(index.segments(s)) - 1 for s in range(index.manifest.nshards))
    lines += [
        "",
        f"after these: update #{index.seq}, {index.ntotal:,} live vectors, "
        f"{deltas} delta segments over 4 shards",
        "",
    ]
    return lines


def service_under_updates(root: Path, base, queries, args, rng) -> list[str]:
    from hpcrag.search import DistributedIndex
    from hpcrag.search.client import SearchClient
    from hpcrag.search.service import SearchService, ServiceOptions

    token = "bench-token-0123456789abcdef"
    service = SearchService(DistributedIndex.open(root), ServiceOptions(port=0, token=token))
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    while not service._ready.is_set():
        time.sleep(0.05)
    period = 5.0
    searched = {"quiet": [0, 0.0], "updating": [0, 0.0]}
    applied = [0, 0.0]
    try:
        with (
            SearchClient(service.url, token=token) as searcher,
            SearchClient(service.url, token=token) as writer,
        ):
            for _ in range(args.repeat):
                for mode in ("quiet", "updating"):
                    stop = threading.Event()

                    def stream(stop: threading.Event = stop) -> None:
                        while not stop.is_set():
                            ids = rng.choice(len(base), 100, replace=False)
                            seconds, _ = timed(
                                lambda ids=ids: writer.upsert(new_vectors(base, rng, 100), ids)
                            )
                            applied[0] += 100
                            applied[1] += seconds

                    updater = threading.Thread(target=stream) if mode == "updating" else None
                    if updater:
                        updater.start()
                    deadline = time.perf_counter() + period
                    while time.perf_counter() < deadline:
                        batch = queries[rng.integers(0, len(queries), 100)]
                        seconds, _ = timed(
                            lambda batch=batch: searcher.search(batch, k=10, nprobe=args.nprobe)
                        )
                        searched[mode][0] += 100
                        searched[mode][1] += seconds
                    stop.set()
                    if updater:
                        updater.join()
    finally:
        service.stop()
        thread.join(timeout=30)
    quiet = searched["quiet"][0] / searched["quiet"][1]
    busy = searched["updating"][0] / searched["updating"][1]
    return [
        "## Search while updating (HTTP service in this process, 100-query requests)",
        "",
        "| period | search q/s | upserts/s alongside |",
        "|---|---:|---:|",
        f"| no updates | {quiet:,.0f} | 0 |",
        f"| upserts of 100 streaming | {busy:,.0f} ({busy / quiet:.2f}x) "
        f"| {applied[0] / max(applied[1], 1e-9):,.0f} |",
        "",
        f"{args.repeat} alternations of {period:.0f} s each; the service applies updates between batches.",
        "",
    ]


def compaction(index, root: Path, queries, args) -> list[str]:
    from hpcrag.search import DistributedIndex
    from hpcrag.search.compact import compact_index

    before = min(
        timed(lambda: index.search(queries, k=10, nprobe=args.nprobe))[0] for _ in range(args.repeat)
    )
    index.close()
    seconds, report = timed(lambda: compact_index(root))
    after_index = DistributedIndex.open(root)
    after = min(
        timed(lambda: after_index.search(queries, k=10, nprobe=args.nprobe))[0] for _ in range(args.repeat)
    )
    after_index.close()
    nq = len(queries)
    return [
        "## Compaction",
        "",
        f"- `compact_index` folded {report.rows_folded:,} added rows and dropped {report.rows_dropped:,} "
        f"in {seconds:.1f} s",
        f"- search before (deltas and tombstones) {nq / before:,.0f} q/s, after {nq / after:,.0f} q/s "
        "(not interleaved: the index changed)",
        f"- drift: {report.drift.reason}",
    ]


if __name__ == "__main__":
    main()
