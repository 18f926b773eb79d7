#!/usr/bin/env python3
"""Shard-local kinds and routing against faiss HNSW, interleaved in one MPI job (issue 15's goals).

    .venv/bin/python scripts/bench_search.py --suite kinds --dataset manpages [--repeat 5]

Builds hpcrag indexes (hnsw with 4 and 8 shards, plain and with boundary replication
(`--replicate`); on the man pages also 4-shard hnsw builds whose grouping spreads the searches of a
query log over the ranks (`--query-sample`: 2,000 held-out man-page descriptions, never the
benchmark's queries, `manpage_query_log.py`); ivf-flat and ivf-pq with 4; nlist 1024) with
`hpcrag index build` under mpirun,
then one `mpirun -n 2` job (one thread per rank) opens them all. Rank 0 also holds the peers: a
faiss IndexHNSWFlat over the whole set and faiss IndexShards over the very HNSW graphs of the plain
hpcrag shards (scatter-gather needs no copies; ids mapped back), queried scatter-gather both ways
faiss offers (a thread per shard; shard after shard, OpenMP inside each), each given both threads
while rank 1 sleeps; the ratios take the faster of the two. Every round runs every setting of every
method once; the first round warms up and is dropped; queries/s is the median over rounds of all
queries in one batch. Each ratio against a peer is also given round by round (the two settings'
times from the same round), its median and range.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
NLIST = {"manpages-minilm": 1024, "synthetic-clustered": 256}  # unless --nlist says otherwise
ROUTE_NPROBE = 16  # the lists the router ranks shards by, unless a setting says otherwise
GRAPH_NPROBES = {4: (4, 16), 8: (8, 16)}  # hnsw settings: few probes route as well, for less work
TARGET = 0.95
HNSW = {"M": 32, "ef_construction": 40}
SINGLE = ("float32", "float16")  # one faiss HNSW keeping float32 rows, or float16 as hpcrag's shards do
EFS = (10, 12, 16, 24, 32, 64)
REPLICATED = ((4, 0.3), (4, 0.5), (8, 0.3))  # (shards, --replicate) of the boundary-replicated builds
BALANCED = ((4, 0.0), (4, 0.3), (4, 0.5))  # (shards, --replicate) also built with --query-sample
QUERY_LOG = 2000  # held-out man-page descriptions the balanced builds learn from
CURVE_SHARES = (0.0, 0.3, 0.5)  # --replicate shares of the routing-alone curve


def hnsw_label(count: int, share: float = 0.0, balanced: bool = False) -> str:
    """The build's folder name."""
    return f"hnsw-{count}" + (f"-replicate-{share}" if share else "") + ("-balanced" if balanced else "")


def hnsw_method(count: int, share: float = 0.0, balanced: bool = False) -> str:
    return (
        f"hpcrag hnsw, {count} shards"
        + (f", {share:.0%} replicated" if share else "")
        + (", query-balanced" if balanced else "")
    )


def kinds_suite(args: argparse.Namespace) -> None:
    from bench_search import load_dataset, mpirun

    from hpcrag.search import Metric, reference
    from hpcrag.util.files import write_atomic

    base, queries, gt, name = load_dataset(args)
    nlist = args.nlist or NLIST.get(name, 1024)
    metric = Metric(args.metric)
    if gt is None:
        gt = reference.search(reference.exact(base, metric), queries, args.k, metric)[1]
    with tempfile.TemporaryDirectory(dir=args.workdir) as scratch:
        scratch = Path(scratch)
        for file, array in (("base.npy", base), ("queries.npy", queries), ("gt.npy", gt)):
            np.save(scratch / file, array)
        log = scratch / "query-log.npy" if name == "manpages-minilm" and write_query_log(scratch) else None
        builds = {}
        for label, kind, shards, extra in (
            ("hnsw-4", "hnsw", 4, []),
            ("hnsw-8", "hnsw", 8, []),
            ("ivf-flat-4", "ivf-flat", 4, []),
            ("ivf-pq-4", "ivf-pq", 4, []),
            *[
                (hnsw_label(count, share), "hnsw", count, ["--replicate", str(share)])
                for count, share in REPLICATED
            ],
            *[
                (hnsw_label(count, share, True), "hnsw", count,
                 ["--replicate", str(share), "--query-sample", str(log)])
                for count, share in (BALANCED if log else ())
            ],
        ):  # fmt: skip
            started = time.perf_counter()
            mpirun(2, args.threads, ["-m", "hpcrag", "index", "build", str(scratch / "base.npy"),
                   "--out", str(scratch / label), "--nlist", str(nlist), "--shards", str(shards),
                   "--metric", args.metric, "--local", kind, *extra])  # fmt: skip
            builds[label] = time.perf_counter() - started
        report = scratch / "report.json"
        job = [__file__, str(scratch), str(report), str(args.repeat), str(args.k), args.metric]
        job.append(str(log is not None))
        mpirun(2, args.threads, job)
        rows = json.loads(report.read_text())
        loads = shard_loads(scratch, queries, rows, bool(log))
    curve = fanout_curve(base, queries, gt, metric, args.k, nlist)
    text = render(name, base, queries, args, rows, builds, nlist) + render_loads(loads)
    text += render_curve(curve, args.k, nlist)
    print(text)
    out = REPO / "benchmarks" / f"search-kinds-{name}.md"
    out.write_text(text)
    print(f"saved {out.relative_to(REPO)}")
    if name == "manpages-minilm":
        calibration = REPO / "benchmarks" / "search-calibration.json"
        write_atomic(calibration, json.dumps(calibrate(rows, curve, base, args, nlist), indent=1) + "\n")
        print(f"saved {calibration.relative_to(REPO)}")


def write_query_log(scratch: Path) -> bool:
    """The balanced builds' query sample in `scratch` (False, said why, where it cannot be made)."""
    from manpage_query_log import query_log

    from hpcrag.errors import HpcragError

    try:
        texts, vectors = query_log(QUERY_LOG)
    except (OSError, ValueError, ImportError, HpcragError) as exc:  # no man pages, dataset or model
        print(f"no query log, so no query-balanced builds: {exc}")
        return False
    if len(texts) < QUERY_LOG:
        print(f"no query-balanced builds: only {len(texts)} held-out man pages render here")
        return False
    np.save(scratch / "query-log.npy", vectors)
    return True


def settings(balanced: bool) -> list[tuple[str, str, dict]]:
    """(method, index label or peer, search keywords) for every setting a round runs."""
    four = [{"max_shards": 2}, {"max_shards": 2, "shard_margin": 0.3}, {"max_shards": 2, "shard_margin": 0.5}]
    eight = [{"max_shards": 3}, {"max_shards": 3, "shard_margin": 0.5}]
    eight.append({"max_shards": 4, "shard_margin": 0.5})
    lists = [{"nprobe": nprobe, **route} for nprobe in (32, 64) for route in (four[0], four[2])]
    near = [{"max_shards": 1}, *({"max_shards": 2, "shard_margin": m} for m in (0.1, 0.2, 0.3))]
    routes = {
        4: near + four[2:],
        8: near[:1] + [{"max_shards": 3, "shard_margin": m} for m in (0.2, 0.3, 0.5)],
    }
    graphs = [
        *[(4, 0.0, False, route) for route in four],
        *[(8, 0.0, False, route) for route in eight],
        *[(count, share, False, route) for count, share in REPLICATED for route in routes[count]],
        *[
            (count, share, True, route)
            for count, share in (BALANCED if balanced else ())
            for route in (routes[count] if share else four)
        ],
    ]
    hpcrag = [
        *[
            (
                hnsw_method(count, share, query_balanced),
                hnsw_label(count, share, query_balanced),
                {"nprobe": nprobe, **route, "ef": ef},
            )
            for count, share, query_balanced, route in graphs
            for nprobe in GRAPH_NPROBES[count]
            for ef in EFS
        ],
        *[("hpcrag ivf-flat, 4 shards", "ivf-flat-4", options) for options in lists],
        *[("hpcrag ivf-pq, 4 shards", "ivf-pq-4", {**options, "refine": 10}) for options in lists[2:]],
    ]
    peers = [
        *[(single_hnsw(storage), f"single-{storage}", {"ef": ef})
          for storage in SINGLE for ef in (*EFS, 128)],
        *[(scatter_gather(count, threaded), f"shards-{count}{'' if threaded else '-serial'}", {"ef": ef})
          for count in (4, 8) for threaded in (True, False) for ef in EFS],
    ]  # fmt: skip
    return hpcrag + peers


def single_hnsw(storage: str) -> str:
    return f"faiss HNSW, one index ({storage} rows)"


def scatter_gather(count: int, threaded: bool) -> str:
    how = "a thread per shard" if threaded else "one shard at a time, 2 OpenMP threads"
    return f"faiss IndexShards of the {count} HNSW shards ({how})"


def worker(scratch: Path, report: Path, repeat: int, k: int, metric_name: str, balanced: bool) -> None:
    import faiss

    from hpcrag.search import DistributedIndex, Metric, make_comm, reference
    from hpcrag.search.metric import prepare

    comm = make_comm()
    metric = Metric(metric_name)
    peer_names = ("single", "shards-")
    labels = {target for _, target, _ in settings(balanced) if not target.startswith(peer_names)}
    # Opening is collective: every rank opens the same indexes in the same order.
    indexes = {label: DistributedIndex.open(scratch / label, comm) for label in sorted(labels)}
    queries = gt = None
    peers: dict = {}
    if comm.rank == 0:
        queries, gt = np.load(scratch / "queries.npy"), np.load(scratch / "gt.npy")
        peers = build_peers(scratch, metric)
    times: dict[int, list[float]] = {}
    found: dict[int, tuple[float, float]] = {}
    for round_ in range(repeat + 1):
        for number, (_, target, options) in enumerate(settings(balanced)):
            if target in indexes:
                options = {"nprobe": ROUTE_NPROBE, **options}
                started = time.perf_counter()
                result = indexes[target].search(queries, k=k, **options)
                seconds = time.perf_counter() - started
                if result is None:
                    continue
                outcome = (reference.recall_at(result.ids, gt, k), result.mean_shards_touched)
            elif comm.rank == 0:
                peer, graphs, labels = peers[target]
                for graph in graphs:
                    graph.hnsw.efSearch = options["ef"]
                faiss.omp_set_num_threads(comm.size)  # the peers get every core the ranks share
                prepared = prepare(queries, metric, "queries")
                started = time.perf_counter()
                ids = peer.search(prepared, k)[1]
                ids = ids if labels is None else np.where(ids >= 0, labels[np.maximum(ids, 0)], -1)
                seconds = time.perf_counter() - started
                faiss.omp_set_num_threads(1)
                outcome = (reference.recall_at(ids, gt, k), float(len(graphs)) if len(graphs) > 1 else 1.0)
            else:
                continue
            found[number] = outcome
            if round_:
                times.setdefault(number, []).append(seconds)
    for index in indexes.values():
        index.close()
    if comm.rank == 0:
        rows = []
        for number, (method, target, options) in enumerate(settings(balanced)):
            recall, touched = found[number]
            qps = len(queries) / statistics.median(times[number])
            rows.append({"method": method, "target": target, "options": options, "recall": recall,
                         "qps": qps, "touched": touched, "seconds": times[number]})  # fmt: skip
        report.write_text(json.dumps(rows))


def build_peers(scratch: Path, metric) -> dict:
    """faiss HNSW over the whole base, and IndexShards over the hpcrag shards' own graphs."""
    import faiss

    from hpcrag.search.local_kinds import hnsw_graph
    from hpcrag.search.metric import prepare

    base = prepare(np.load(scratch / "base.npy"), metric, "base")
    peers = {}
    faiss.omp_set_num_threads(2)
    for storage in SINGLE:
        single = hnsw_graph(base.shape[1], HNSW["M"], metric, np.dtype(storage))
        single.hnsw.efConstruction = HNSW["ef_construction"]
        single.train(base)
        single.add(base)
        peers[f"single-{storage}"] = (single, [single], None)
    faiss.omp_set_num_threads(1)
    for count in (4, 8):
        # Scatter-gather, a thread per shard (faiss's way across devices) or shard after shard with
        # OpenMP inside each (faster on a few cores); successive ids: shard s's labels come offset by
        # the rows before it, which one lookup in the shards' concatenated ids maps back (timed).
        graphs, ids = [], []
        for shard in range(count):
            folder = scratch / f"hnsw-{count}" / f"shard-{shard:04d}"
            graphs.append(faiss.read_index(str(folder / "hnsw.faiss")))
            ids.append(np.load(folder / "ids.npy"))
        for threaded in (True, False):
            sharded = faiss.IndexShards(base.shape[1], threaded, True)
            for graph in graphs:
                sharded.add_shard(graph)
            key = f"shards-{count}{'' if threaded else '-serial'}"
            peers[key] = (sharded, graphs, np.concatenate(ids))  # shards are not owned: kept
    return peers


def best_at_target(rows: list[dict], method: str) -> dict | None:
    eligible = [r for r in rows if r["method"] == method and r["recall"] >= TARGET]
    return max(eligible, key=lambda r: r["qps"]) if eligible else None


def render(name, base, queries, args, rows, builds, nlist: int) -> str:
    lines = [
        f"# Shard-local kinds and routing: {name}",
        "",
        f"- data: {base.shape[0]:,} x {base.shape[1]}, {len(queries):,} queries in one batch, metric "
        f"{args.metric}, recall@{args.k} against exact",
        f"- hpcrag: nlist {nlist}, routing nprobe as each setting says (else {ROUTE_NPROBE}), 2 MPI ranks "
        f"x 1 thread; hnsw M {HNSW['M']}, efConstruction {HNSW['ef_construction']}, rows kept as float16 "
        "(the index's storage dtype); peers: 2 threads, the same graphs (one faiss HNSW: float32 or "
        "float16 rows)",
        f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; date "
        f"{time.strftime('%Y-%m-%d')}; {args.repeat} interleaved rounds (median), one run",
        f"- builds (2 ranks): {', '.join(f'{label} {seconds:.0f} s' for label, seconds in builds.items())}",
        *(
            [
                f"- query-balanced builds: `--query-sample` of {QUERY_LOG:,} man-page descriptions held out "
                "from the benchmark's queries (`scripts/manpage_query_log.py`), spread over 2 ranks"
            ]
            if any(label.endswith("-balanced") for label in builds)
            else []
        ),
        f"- command: `{' '.join(['scripts/bench_search.py', *sys.argv[1:]])}`",
        "",
        f"| method | setting | recall@{args.k} | queries/s | shards touched |",
        "|---|---|---:|---:|---:|",
    ]
    for r in rows:
        setting = ", ".join(f"{key} {value}" for key, value in r["options"].items())
        figures = f"{r['recall']:.3f} | {r['qps']:,.0f} | {r['touched']:.2f}"
        lines.append(f"| {r['method']} | {setting} | {figures} |")
    lines += ["", f"Fastest setting at recall@{args.k} >= {TARGET}:", ""]
    best = {method: best_at_target(rows, method) for method in dict.fromkeys(r["method"] for r in rows)}
    for method, r in best.items():
        lines.append(f"- {method}: " + ("none reaches it" if r is None else f"{r['qps']:,.0f} q/s "
                     f"(recall {r['recall']:.3f}, {r['touched']:.2f} shards)"))  # fmt: skip
    ours_all = [(count, 0.0, False) for count in (4, 8)] + [(c, s, False) for c, s in REPLICATED]
    ours_all += [(count, share, True) for count, share in BALANCED]
    for count, share, balanced in sorted(ours_all):
        ours = best.get(hnsw_method(count, share, balanced))
        peers = [best.get(scatter_gather(count, threaded)) for threaded in (True, False)]
        singles = [r for r in (best.get(single_hnsw(storage)) for storage in SINGLE) if r]
        if ours and all(peers) and singles:
            scatter = max(peers, key=lambda r: r["qps"])  # the faster way of the two
            single = max(singles, key=lambda r: r["qps"])  # and the faster storage
            lines.append(
                f"- {hnsw_method(count, share, balanced)}: hpcrag / the faster IndexShards scatter-gather "
                f"({scatter['method']}) = {ours['qps'] / scatter['qps']:.2f}x {paired(ours, scatter)}; "
                f"hpcrag / the faster one faiss HNSW ({single['method']}) = "
                f"{ours['qps'] / single['qps']:.2f}x {paired(ours, single)}"
            )
    return "\n".join(lines) + "\n"


def paired(ours: dict, peer: dict) -> str:
    """The ratio round by round: one round runs every setting within seconds, so a drift of the shared
    machine's speed from round to round cancels out of each round's ratio."""
    ratios = sorted(p / o for o, p in zip(ours["seconds"], peer["seconds"], strict=True))
    return (
        f"(per round: median {statistics.median(ratios):.2f}x, "
        f"{ratios[0]:.2f}-{ratios[-1]:.2f}x over {len(ratios)} rounds)"
    )


def fanout_curve(
    base: np.ndarray, queries: np.ndarray, gt: np.ndarray, metric, k: int, nlist: int
) -> list[dict]:
    """Routing alone, at more shards than 2 cores can serve: hpcrag's grouping of `nlist` lists into S
    shards (its build's k-means and `group_lists`), queries ranking shards by their best centroid;
    recall@k if each chosen shard answered exactly, for 1, 2, ... shards per query; plain, and with
    boundary replication at each share of CURVE_SHARES (a neighbour counts in either shard holding it)."""
    import faiss

    from hpcrag.search.grouping import group_lists
    from hpcrag.search.metric import prepare
    from hpcrag.search.replication import boundary_ratios, threshold_for
    from hpcrag.search.router import Router

    rows = prepare(base, metric, "base")
    kmeans = faiss.Kmeans(rows.shape[1], nlist, niter=20, seed=1234, spherical=metric.larger_is_better,
                          min_points_per_centroid=1, max_points_per_centroid=256)  # fmt: skip
    kmeans.train(rows)
    quantizer = faiss.IndexFlat(rows.shape[1], metric.faiss_metric())
    quantizer.add(kmeans.centroids)
    lists = quantizer.search(rows, 1)[1][:, 0]
    counts = np.bincount(lists, minlength=nlist)
    sample = quantizer.search(rows[:20000], nlist // 16)[1]
    ranked = quantizer.search(prepare(queries, metric, "queries"), nlist)[1]  # every list, best first
    curve = []
    for nshards in (4, 8, 16, 32, 64, 100):
        list_shard = group_lists(kmeans.centroids, counts, nshards, 1234, sample)
        owner = list_shard[ranked]
        order = np.full((len(queries), nshards), nlist)
        np.minimum.at(order, (np.arange(len(queries))[:, None].repeat(nlist, 1), owner), np.arange(nlist))
        shard_rank = order.argsort(axis=1).argsort(axis=1)  # 0 = the shard of the best centroid
        truth_rank = np.take_along_axis(shard_rank, list_shard[lists[gt[:, :k]]], axis=1)
        router = Router(kmeans.centroids, metric, list_shard, np)
        ratio, second = boundary_ratios(router, rows, lists)
        for share in CURVE_SHARES:
            ranks = truth_rank
            if share:
                copied = ratio <= threshold_for(ratio[:20000], share)  # the build's rule and sample
                other = np.where(copied, list_shard[np.maximum(second, 0)], -1)[gt[:, :k]]
                copy_rank = np.take_along_axis(shard_rank, np.maximum(other, 0), axis=1)
                ranks = np.where(other >= 0, np.minimum(truth_rank, copy_rank), truth_rank)
            recalls = [float((ranks < s).mean()) for s in range(1, nshards + 1)]
            needed = next(s for s, r in enumerate(recalls, 1) if r >= TARGET)
            curve.append({"nshards": nshards, "replicate": share, "recalls": recalls[:12],
                          "shards_for_target": needed, "recall": recalls[needed - 1]})  # fmt: skip
    return curve


def shard_loads(scratch: Path, queries: np.ndarray, rows: list[dict], balanced: bool) -> list[dict]:
    """For hpcrag's fastest 4-shard settings at the target: how many of the queries each shard
    searches (routing alone, one process), and the share the busier of 2 ranks (shards 0, 2 and
    1, 3) carries: a rank waits for the other, so a skewed query set costs throughput."""
    from hpcrag.search import DistributedIndex

    loads = []
    builds = [(4, 0.0, False), *((c, s, False) for c, s in REPLICATED if c == 4)]
    builds += [(count, share, True) for count, share in (BALANCED if balanced else ())]
    for count, share, query_balanced in builds:
        best = best_at_target(rows, hnsw_method(count, share, query_balanced))
        if best is None:
            continue
        target = hnsw_label(count, share, query_balanced)
        index = DistributedIndex.open(scratch / target)
        options = best["options"]
        nprobe = options.get("nprobe", ROUTE_NPROBE)
        probes = index.router.route(queries, nprobe, options["max_shards"], options.get("shard_margin"))
        per_shard = index.router.shard_load(probes)[1].tolist()
        index.close()
        per_rank = [sum(per_shard[rank::2]) for rank in range(2)]
        loads.append({"method": best["method"], "options": options, "per_shard": per_shard,
                      "busier_rank_share": max(per_rank) / max(sum(per_rank), 1)})  # fmt: skip
    return loads


def render_loads(loads: list[dict]) -> str:
    lines = [
        "",
        "Shard load of those settings (queries each shard searches; routing alone, one process):",
        "",
    ]
    for load in loads:
        setting = ", ".join(f"{key} {value}" for key, value in load["options"].items())
        lines.append(f"- {load['method']} ({setting}): {load['per_shard']}; the busier of 2 ranks "
                     f"searches {load['busier_rank_share']:.0%} of the shard searches")  # fmt: skip
    return "\n".join(lines) + "\n"


def render_curve(curve: list[dict], k: int, nlist: int) -> str:
    lines = [
        "",
        f"Routing alone (nlist {nlist}, exact search inside each chosen shard): recall@{k} when a query "
        "visits its best 1, 2, 3, ... shards, and the shards it needs for recall >= "
        f"{TARGET}; with --replicate, a neighbour counts in either shard that holds it:",
        "",
        "| shards | replicate | best 1 | best 2 | best 3 | best 4 | best 6 | best 8 | needed |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for point in curve:
        cells = [point["recalls"][s - 1] if s <= len(point["recalls"]) else None for s in (1, 2, 3, 4, 6, 8)]
        shown = " | ".join("-" if c is None else f"{c:.3f}" for c in cells)
        lines.append(
            f"| {point['nshards']} | {point['replicate']:g} | {shown} | {point['shards_for_target']} |"
        )
    return "\n".join(lines) + "\n"


def calibrate(
    rows: list[dict], curve: list[dict], base: np.ndarray, args: argparse.Namespace, nlist: int
) -> dict:
    """The measured fan-out and per-shard costs `hpcrag plan search` scales from."""
    fanout, local = [], {}
    for count, share in ((4, 0.0), (8, 0.0), *REPLICATED):
        r = best_at_target(rows, hnsw_method(count, share))
        if r:
            fanout.append({"nshards": count, "replicate": share, "nlist": nlist,
                           "max_shards": r["options"]["max_shards"], "recall": round(r["recall"], 4),
                           "nprobe": r["options"]["nprobe"],
                           **({"shard_margin": r["options"]["shard_margin"]}
                              if "shard_margin" in r["options"] else {}),
                           "basis": "measured search, hnsw shards",
                           "mean_shards_touched": round(r["touched"], 3)})  # fmt: skip
    for point in curve:
        if point["nshards"] > 8:
            needed = point["shards_for_target"]
            fanout.append({"nshards": point["nshards"], "replicate": point["replicate"], "nlist": nlist,
                           "max_shards": needed, "recall": round(point["recall"], 4),
                           "basis": "routing alone, exact within shards",
                           "mean_shards_touched": needed})  # fmt: skip
    cores = 2
    for kind, method in (("hnsw", "hpcrag hnsw, 4 shards"), ("ivf-flat", "hpcrag ivf-flat, 4 shards"),
                         ("ivf-pq", "hpcrag ivf-pq, 4 shards")):  # fmt: skip
        candidates = [x for x in rows if x["method"] == method]
        r = best_at_target(rows, method) or max(candidates, key=lambda x: x["recall"])
        entry = {
            "recall": round(r["recall"], 4),
            "cpu_seconds_per_query_per_shard": cores / (r["qps"] * r["touched"]),
            "shard_vectors": base.shape[0] // 4,
        }
        if kind == "hnsw":
            entry["ef_search"] = r["options"]["ef"]
            entry["nprobe"] = r["options"]["nprobe"]
        else:
            entry["scanned_share"] = r["options"]["nprobe"] / nlist  # of the collection, probed per query
        if kind == "ivf-pq":
            entry.update(pq_m=base.shape[1] // 8, refine=r["options"]["refine"])
        local[kind] = entry
    return {"dataset": "manpages-minilm", "vectors": int(base.shape[0]), "dim": int(base.shape[1]),
            "k": args.k, "command": "scripts/bench_search.py " + " ".join(sys.argv[1:]),
            "date": time.strftime("%Y-%m-%d"), "fanout": fanout, "local": local}  # fmt: skip


if __name__ == "__main__":
    worker(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5],
           sys.argv[6] == "True")  # fmt: skip
