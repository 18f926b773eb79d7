"""What the gateway adds to a request, against the backend alone and against the LiteLLM proxy.

One minimal OpenAI-compatible backend (hpcrag.devcluster.openai_stub: a fixed 8-token answer at
once, so the proxies are all that is measured) serves three targets in turn:
  direct    the backend itself
  hpcrag    `hpcrag gateway serve` routing `auto` to it through the registry (keys, budget, router,
            metrics and the usage ledger all on)
  litellm   `litellm --config` (PyPI litellm[proxy], in .venv-litellm, made by this script) with the
            backend as its one model, one worker
  hpcrag@REF with `--baseline REF`: the gateway as it was at git revision REF (a worktree of it, run
            on this virtualenv), e.g. to price a change such as the durable ledger commit
Each proxy runs as one process with one event loop. The load generator is its own process (aiohttp,
uvloop), non-streaming chat requests:
  closed    N clients each send the next request when the last is answered: maximum requests/s
  paced     N clients together send RATE requests/s (each at a fixed interval, random phase): latency
            when the proxy is not saturated, i.e. what it adds to one request
Overhead = proxy's latency minus direct latency at the same N and mode. With `--rounds R` every target
runs R times, the targets taking turns (direct, hpcrag, ..., direct, hpcrag, ...); the table gives the
median of the rounds, so every ratio comes from one run with the methods interleaved and repeated.

Usage: .venv/bin/python scripts/bench_gateway.py [--clients 1 10 100] [--seconds 10] [--rate 200]
       [--rounds 1] [--baseline REF] [--out benchmarks/gateway-overhead.md] [--skip-litellm]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
LITELLM_VENV = REPO / ".venv-litellm"
LITELLM = "litellm[proxy]==1.102.4"
BODY = {"model": "auto", "messages": [{"role": "user", "content": "What is 2+2?"}], "max_tokens": 8}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 120.0) -> None:
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} did not answer within {timeout:.0f} s")


def ensure_litellm() -> Path:
    """LiteLLM in its own virtualenv (its pins clash with hpcrag's), made once."""
    binary = LITELLM_VENV / "bin" / "litellm"
    if not binary.exists():
        subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
        subprocess.run([str(LITELLM_VENV / "bin" / "pip"), "install", "-q", LITELLM], check=True)
    return binary


# ---- load generator (runs in a child process: `bench_gateway.py --load URL ...`) ----


async def _load(url: str, key: str, clients: int, seconds: float, rate: float | None) -> dict[str, float]:
    import aiohttp

    payload = json.dumps(BODY).encode()
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> None:
            nonlocal errors
            t0 = time.perf_counter()
            async with session.post(url, data=payload, headers=headers) as response:
                await response.read()
                if response.status != 200:
                    errors += 1
                    return
            latencies.append(time.perf_counter() - t0)

        async def client(end: float, interval: float | None) -> None:
            if interval:
                await asyncio.sleep(random.uniform(0, interval))
            next_at = time.perf_counter()
            while time.perf_counter() < end:
                await one()
                if interval:
                    next_at += interval
                    await asyncio.sleep(max(0.0, next_at - time.perf_counter()))

        warm_end = time.perf_counter() + 1.0
        await asyncio.gather(*(client(warm_end, None) for _ in range(min(clients, 10))))
        latencies.clear()
        errors = 0
        interval = clients / rate if rate else None
        start = time.perf_counter()
        await asyncio.gather(*(client(start + seconds, interval) for _ in range(clients)))
        elapsed = time.perf_counter() - start
    ordered = sorted(latencies)
    return {
        "requests": len(ordered),
        "errors": errors,
        "rps": len(ordered) / elapsed,
        "p50_ms": 1000 * ordered[len(ordered) // 2],
        "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
        "mean_ms": 1000 * statistics.fmean(ordered),
    }


def run_load(
    url: str, key: str, clients: int, seconds: float, rate: float | None, cpus: set[int]
) -> dict[str, float]:
    args = [
        "taskset",
        "-c",
        ",".join(map(str, sorted(cpus))),
        PYTHON,
        __file__,
        "--load",
        url,
        "--key",
        key,
        "--n",
        str(clients),
        "--seconds",
        str(seconds),
    ]
    if rate:
        args += ["--pace", str(rate)]
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


# ---- the targets ----


def start(
    args: list[str], cpus: set[int], env: dict[str, str] | None = None, log: Path | None = None
) -> subprocess.Popen:
    handle = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 - lives as long as the process
    return subprocess.Popen(
        args,
        env={**os.environ, **(env or {})},
        stdout=handle,
        stderr=subprocess.STDOUT,
        preexec_fn=lambda: os.sched_setaffinity(0, cpus),
    )


def placement() -> tuple[set[int], set[int]]:
    """(CPUs of the proxy under test, CPUs of the load generator and the backend).

    The proxy gets a core of its own, as it would on its own node; the load generator and the backend
    share the rest in every run, the direct one included, so only the proxy's placement differs.
    """
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return set(cpus), set(cpus)
    return {cpus[-1]}, set(cpus[:-1])


def register_backend(registry: Path, url: str) -> None:
    from hpcrag.serve.registry import Endpoint, Registry

    # The stub has no supervisor to heartbeat: a row dated a day ahead stays fresh for the run.
    Registry(registry).add(
        Endpoint(
            provider="slurm",
            site="nyc",
            job_id="bench",
            tier="s",
            model="tiny-llama",
            served_name="stub-model",
            state="healthy",
            gpu_type="l40s",
            gpus=1,
            url=url,
            usd_per_hour=0.45,
            heartbeat_at=time.time() + 86400,
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 10, 100])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=200.0, help="Total requests/s of the paced runs.")
    parser.add_argument("--out", default=None)
    parser.add_argument("--skip-litellm", action="store_true")
    parser.add_argument("--rounds", type=int, default=1, help="Times each target runs, taking turns.")
    parser.add_argument("--baseline", default=None, help="Also run the gateway of this git revision.")
    parser.add_argument("--load", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--register", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--key", default="none", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--pace", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.register:
        register_backend(Path(os.environ["HPCRAG_REGISTRY"]), args.register)
        return
    if args.load:
        import uvloop

        print(json.dumps(uvloop.run(_load(args.load, args.key, args.n, args.seconds, args.pace))))
        return

    work = Path(tempfile.mkdtemp(prefix="hpcrag-bench-gateway-"))
    env = {
        "HPCRAG_REGISTRY": str(work / "registry.sqlite"),
        "HPCRAG_GATEWAY_DB": str(work / "gateway.sqlite"),
    }
    os.environ.update(env)
    backend_port, gateway_port, litellm_port = free_port(), free_port(), free_port()
    backend = f"http://127.0.0.1:{backend_port}"
    proxy_cpus, client_cpus = placement()
    processes = [
        start(
            [PYTHON, "-m", "hpcrag.devcluster.openai_stub", "--port", str(backend_port)],
            client_cpus,
            log=work / "stub.log",
        )
    ]
    try:
        wait_http(f"{backend}/health")
        register_backend(work / "registry.sqlite", backend)
        hpcrag = [str(REPO / ".venv" / "bin" / "hpcrag"), "gateway", "serve", "--port", str(gateway_port)]
        key = subprocess.run(
            [hpcrag[0], "gateway", "keys", "add", "bench"], check=True, capture_output=True, text=True
        ).stdout.strip()
        launchers = {"direct": None, "hpcrag": (hpcrag, {}, gateway_port, "/health")}
        if args.baseline:
            tree = work / "baseline"
            subprocess.run(
                ["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), args.baseline],
                check=True,
                capture_output=True,
            )
            # Its own registry, written by its own code: the schema may have changed since.
            baseline_env = {"PYTHONPATH": str(tree / "src"), "HPCRAG_REGISTRY": str(work / "baseline.sqlite")}
            subprocess.run(
                [PYTHON, __file__, "--register", backend], env={**os.environ, **baseline_env}, check=True
            )
            launchers[f"hpcrag@{args.baseline}"] = (hpcrag, baseline_env, gateway_port, "/health")
        if not args.skip_litellm:
            config = work / "litellm.yaml"
            config.write_text(
                "model_list:\n  - model_name: auto\n    litellm_params:\n      model: openai/stub-model\n"
                f"      api_base: {backend}/v1\n      api_key: none\n"
                "litellm_settings:\n  drop_params: true\n  turn_off_message_logging: true\n"
                "general_settings:\n  disable_spend_logs: true\n"
            )
            litellm = [str(ensure_litellm()), "--config", str(config), "--port", str(litellm_port)]
            # Its quietest settings: no cost-map download, errors only.
            quiet = {"LITELLM_LOG": "ERROR", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
            launchers["litellm"] = (
                [*litellm, "--num_workers", "1"],
                quiet,
                litellm_port,
                "/health/liveliness",
            )
        results: list[dict[str, object]] = []
        for _, (name, launcher) in ((r, item) for r in range(args.rounds) for item in launchers.items()):
            # One proxy runs at a time: an idle one's background work would share the measured one's core.
            proxy = None
            url = f"{backend}/v1/chat/completions"
            if launcher is not None:
                command, extra_env, port, health = launcher
                proxy = start(command, proxy_cpus, env=extra_env, log=work / f"{name}.log")
                wait_http(f"http://127.0.0.1:{port}{health}", timeout=300)
                url = f"http://127.0.0.1:{port}/v1/chat/completions"
            try:
                for clients in args.clients:
                    for mode, rate in (("closed", None), ("paced", args.rate)):
                        figures = run_load(url, key, clients, args.seconds, rate, client_cpus)
                        results.append({"target": name, "clients": clients, "mode": mode, **figures})
                        print(json.dumps(results[-1]), flush=True)
            finally:
                if proxy is not None:
                    proxy.terminate()
                    proxy.wait(timeout=30)
        report(median_of_rounds(results), args, proxy_cpus, client_cpus, list(launchers))
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=30)
        if args.baseline:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(work / "baseline")])


def median_of_rounds(results: list[dict[str, object]]) -> list[dict[str, object]]:
    groups: dict[tuple[object, ...], list[dict[str, object]]] = {}
    for r in results:
        groups.setdefault((r["target"], r["clients"], r["mode"]), []).append(r)
    merged = []
    for (target, clients, mode), runs in groups.items():
        figures = {
            k: statistics.median(float(r[k]) for r in runs)  # type: ignore[arg-type]
            for k in ("rps", "p50_ms", "p99_ms")
        }
        errors = sum(int(r["errors"]) for r in runs)  # type: ignore[call-overload]
        merged.append(
            {
                "target": target,
                "clients": clients,
                "mode": mode,
                "rounds": len(runs),
                **figures,
                "errors": errors,
            }
        )
    return merged


def report(
    results: list[dict[str, object]],
    args: argparse.Namespace,
    proxy_cpus: set[int],
    client_cpus: set[int],
    order: list[str],
) -> None:
    def find(target: str, clients: int, mode: str) -> dict[str, float] | None:
        for r in results:
            if r["target"] == target and r["clients"] == clients and r["mode"] == mode:
                return r  # type: ignore[return-value]
        return None

    lines = [
        "# Gateway overhead: hpcrag vs direct vs LiteLLM proxy",
        "",
        f"- command: `.venv/bin/python scripts/bench_gateway.py {' '.join(sys.argv[1:])}`",
        f"- machine: {platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"the proxy under test on CPU {sorted(proxy_cpus)}, load generator and backend on CPU "
        f"{sorted(client_cpus)} in every run (direct too)",
        f"- {args.seconds:.0f} s per run after 1 s of warm-up; non-streaming chat, 8-token answers; "
        f"paced runs at {args.rate:.0f} requests/s in total; {args.rounds} round(s), targets taking "
        "turns, medians of the rounds (errors summed)",
        "",
        "| clients | mode | target | req/s | p50 ms | p99 ms | overhead p50 ms | overhead p99 ms | errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(results, key=lambda r: (r["clients"], r["mode"], order.index(r["target"]))):
        base = find("direct", r["clients"], r["mode"])  # type: ignore[arg-type]
        over50 = r["p50_ms"] - base["p50_ms"] if base and r["target"] != "direct" else None  # type: ignore[operator]
        over99 = r["p99_ms"] - base["p99_ms"] if base and r["target"] != "direct" else None  # type: ignore[operator]
        lines.append(
            f"| {r['clients']} | {r['mode']} | {r['target']} | {r['rps']:.0f} | {r['p50_ms']:.2f} | "
            f"{r['p99_ms']:.2f} | {'' if over50 is None else f'{over50:.2f}'} | "
            f"{'' if over99 is None else f'{over99:.2f}'} | {r['errors']} |"
        )
    ratios = []
    for clients in args.clients:
        ours, theirs = find("hpcrag", clients, "closed"), find("litellm", clients, "closed")
        if ours and theirs:
            ratios.append(f"{clients} clients: {ours['rps'] / theirs['rps']:.2f}x")
    if ratios:
        lines += ["", f"hpcrag / LiteLLM maximum requests/s: {', '.join(ratios)}"]
    if args.baseline:
        costs = []
        for clients in args.clients:
            for mode in ("closed", "paced"):
                now, then = find("hpcrag", clients, mode), find(f"hpcrag@{args.baseline}", clients, mode)
                if now and then:
                    costs.append(
                        f"{clients} clients {mode}: p50 {now['p50_ms'] - then['p50_ms']:+.2f} ms, "
                        f"p99 {now['p99_ms'] - then['p99_ms']:+.2f} ms, req/s {now['rps'] / then['rps']:.2f}x"
                    )
        lines += ["", f"hpcrag now vs hpcrag@{args.baseline}:", *(f"- {c}" for c in costs)]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
