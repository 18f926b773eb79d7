"""`hpcrag serve up|down|status|logs`: vLLM replicas as Slurm jobs, through submitit, per site and tier.

`up` validates and sizes everything first (site, tier, model, GPU fit, vLLM environment), then submits
one job per replica to the tier's partition with a typed GPU GRES, the partition's time limit, a
priority (QOS or nice) and submitit's time-limit signal, and registers each job as `submitted`. The
supervisor inside the job does the rest. `status` joins the registry with what Slurm says now, and
settles rows whose job is gone (with the Slurm state and the log path).
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from hpcrag.config import Config
from hpcrag.config.schema import UnknownNameError
from hpcrag.errors import HpcragError
from hpcrag.serve.registry import SUBMISSION, Endpoint, Registry, now
from hpcrag.serve.spec import LaunchSpec, build_spec
from hpcrag.serve.supervisor import PROVIDER, Supervisor
from hpcrag.slurm.batch import TERMINAL_STATES
from hpcrag.slurm.command import CommandError
from hpcrag.slurm.target import SlurmTarget, SlurmUnreachableError

UNREACHABLE = "UNREACHABLE"  # the site's Slurm did not answer: the row is shown as it is
PRIORITIES = ("production-critical", "production-standard", "batch-processing", "development")
_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


@dataclass(frozen=True)
class Row:
    """One registry row as `serve status` shows it."""

    endpoint: Endpoint
    slurm_state: str
    stale_after_s: float | None = None

    @property
    def problem(self) -> str | None:
        e = self.endpoint
        if e.state == "failed" or self.slurm_state in TERMINAL_STATES - {"COMPLETED", "CANCELLED"}:
            return f"job {e.job_id} on site {e.site} ended {self.slurm_state or e.state}; log: {e.log_path}"
        if e.state == "healthy" and e.provider == PROVIDER and self.stale_after_s and e.heartbeat_at:
            silent = now() - e.heartbeat_at
            if silent > self.stale_after_s:
                return (
                    f"no heartbeat from job {e.job_id} on site {e.site} for {silent:.0f} s; log: {e.log_path}"
                )
        return None


def registry_of(config: Config) -> Registry:
    return Registry(config.resolve_path(config.serving.registry), config.serving.registry_journal)


def log_folder(config: Config) -> Path:
    return config.resolve_path(config.serving.registry).parent / "serve-logs"


def partition_minutes(max_time: str) -> int | None:
    """Slurm's D-HH:MM:SS / HH:MM:SS / minutes as whole minutes; None for UNLIMITED."""
    if max_time == "UNLIMITED":
        return None
    match = _TIME.match(max_time)
    if match is None:
        raise HpcragError(f"cannot read Slurm time {max_time!r}")
    days, first, second, third = (int(x) if x else 0 for x in match.groups())
    if match.group(3) is None:  # plain minutes, or D-HH
        return days * 1440 + (first * 60 if match.group(1) else first)
    if match.group(4) is None:  # HH:MM or D-HH:MM
        return days * 1440 + first * 60 + second
    return days * 1440 + first * 60 + second + (1 if third else 0)


def priority_parameters(config: Config, priority: str) -> dict[str, object]:
    if priority not in PRIORITIES:
        raise UnknownNameError("priority", priority, list(PRIORITIES))
    mapping = config.serving.priorities.get(priority)  # type: ignore[call-overload]
    if not mapping:
        raise HpcragError(f"serving.priorities has no entry for {priority!r}; add a qos or nice value")
    if "qos" in mapping:
        return {"qos": str(mapping["qos"])}
    return {"additional_parameters": {"nice": int(mapping["nice"])}}


def up(
    config: Config,
    site: str,
    tier: str,
    *,
    model: str | None = None,
    replicas: int = 1,
    priority: str = "production-standard",
    precision: str = "auto",
    gpu_type: str | None = None,
    max_model_len: int | None = None,
) -> list[Endpoint]:
    """Submit `replicas` servers; nothing is submitted unless every check passes."""
    from hpcrag.slurm.executor import site_executor

    if replicas < 1:
        raise HpcragError(f"replicas must be >= 1, got {replicas}")
    spec = build_spec(config, site, tier, model, precision, gpu_type, max_model_len)
    priority_params = priority_parameters(config, priority)
    registry = registry_of(config)
    partition = config.site(site).partition(spec.partition)
    parameters: dict[str, object] = {
        "job_name": f"hpcrag-vllm-{spec.tier}",
        "signal_delay_s": config.serving.signal_delay_s,
        "stderr_to_stdout": True,
        **priority_params,
    }
    minutes = partition_minutes(partition.max_time)
    if minutes is not None:
        parameters["time"] = minutes
    executor = site_executor(
        site,
        spec.partition,
        spec.gpu_type,
        spec.gpus,
        folder=log_folder(config) / "%j",
        config=config,
        **parameters,
    )
    supervisor = supervisor_for(config, spec)
    endpoints = []
    for _ in range(replicas):
        job = executor.submit(supervisor)
        endpoints.append(
            registry.add(
                Endpoint(
                    provider=PROVIDER,
                    site=site,
                    job_id=str(job.job_id),
                    tier=spec.tier,
                    model=spec.model,
                    served_name=spec.served_name,
                    state="submitted",
                    gpu_type=spec.gpu_type,
                    gpus=spec.gpus,
                    usd_per_hour=spec.usd_per_hour,
                    log_path=str(job.paths.stdout),
                    submitted_at=now(),
                    details=_details(spec, priority),
                ),
                update=SUBMISSION,
            )
        )
    return endpoints


def supervisor_for(config: Config, spec: LaunchSpec) -> Supervisor:
    serving = config.serving
    registry = str(config.resolve_path(serving.registry))
    return Supervisor(spec, registry, serving.heartbeat_s, serving.health_timeout_s, serving.registry_journal)


def _details(spec: LaunchSpec, priority: str) -> dict[str, object]:
    return {
        "partition": spec.partition,
        "precision": spec.precision,
        "tp": spec.tp,
        "max_model_len": spec.max_model_len,
        "priority": priority,
        "argv": spec.argv,
    }


def select_endpoints(
    registry: Registry, ids: list[int], site: str | None, tier: str | None, everything: bool
) -> list[Endpoint]:
    if ids:
        return [registry.get(i) for i in ids]
    if site is None and tier is None and not everything:
        raise HpcragError("name endpoints by id, or use --site/--tier, or --all")
    return registry.find(site=site, tier=tier.lower() if tier else None, live_only=True)


def down(config: Config, endpoints: list[Endpoint]) -> list[Endpoint]:
    """Cancel each live server's job (or cloud instance) and deregister it; ended ones are skipped."""
    from hpcrag.serve.burst.registry import adapter_for

    registry = registry_of(config)
    stopped = []
    for endpoint in endpoints:
        if not endpoint.live:
            continue
        if endpoint.provider == PROVIDER:
            SlurmTarget.for_site(config.site(endpoint.site)).scancel(endpoint.job_id)
        else:
            adapter_for(config, endpoint.provider).terminate(endpoint)
        stopped.append(
            registry.update(
                endpoint.provider,
                endpoint.site,
                endpoint.job_id,
                state="stopped",
                stopped_at=now(),
                url=None,
                message="stopped by hpcrag serve down",
            )
        )
    return stopped


def status(config: Config, *, everything: bool = False, site: str | None = None) -> list[Row]:
    """Registry rows joined with Slurm's state; live rows whose job has ended are settled."""
    registry = registry_of(config)
    return joined_rows(config, registry, registry.find(site=site, live_only=not everything))


def joined_rows(config: Config, registry: Registry, endpoints: list[Endpoint]) -> list[Row]:
    """`endpoints` with Slurm's state now; a live row whose job has ended is settled in the registry."""
    states = slurm_states(config, [e for e in endpoints if e.provider == PROVIDER])
    rows = []
    for endpoint in endpoints:
        slurm_state = states.get((endpoint.site, endpoint.job_id), "")
        if endpoint.live and slurm_state in TERMINAL_STATES:
            settled = "stopped" if slurm_state in ("COMPLETED", "CANCELLED") else "failed"
            message = endpoint.message or f"job ended {slurm_state}; log: {endpoint.log_path}"
            endpoint = registry.update(
                endpoint.provider,
                endpoint.site,
                endpoint.job_id,
                state=settled,
                stopped_at=now(),
                message=message,
            )
        # Three missed heartbeats: the supervisor (or its node) has stopped answering.
        rows.append(Row(endpoint, slurm_state, stale_after_s=config.serving.stale_after_s))
    return rows


def slurm_states(config: Config, endpoints: list[Endpoint]) -> dict[tuple[str, str], str]:
    """(site, job id) -> Slurm state: squeue for jobs the controller still holds (a requeued job is
    PENDING there, whatever its last run's accounting record says), sacct for older ones."""
    by_site: dict[str, list[str]] = defaultdict(list)
    for endpoint in endpoints:
        by_site[endpoint.site].append(endpoint.job_id)
    states: dict[tuple[str, str], str] = {}
    for site, job_ids in by_site.items():
        target = SlurmTarget.for_site(config.site(site))
        try:
            out = target.squeue("-h", "-t", "all", "-o", "%i|%T", f"--jobs={','.join(job_ids)}")
        except SlurmUnreachableError:
            states.update({(site, job_id): UNREACHABLE for job_id in job_ids})
            continue
        except CommandError:  # squeue refuses a list in which no job is still known
            out = ""
        found = _parse_states(out)
        missing = [j for j in job_ids if j not in found]
        if missing:
            found.update(
                _parse_states(
                    target.sacct("-X", "-n", "-P", "-o", "JobID,State", f"--jobs={','.join(missing)}")
                )
            )
        states.update({(site, job_id): state for job_id, state in found.items()})
    return states


def _parse_states(text: str) -> dict[str, str]:
    states = {}
    for line in text.splitlines():
        job_id, _, state = line.strip().partition("|")
        if job_id:
            states[job_id] = state.split()[0] if state else ""
    return states


def wait_healthy(
    config: Config, endpoints: list[Endpoint], timeout: float, poll_s: float = 1.0
) -> list[Endpoint]:
    """Poll until every server is healthy; a server that failed or whose job ended is an error."""
    registry = registry_of(config)
    deadline = time.monotonic() + timeout
    pending = {(e.provider, e.site, e.job_id) for e in endpoints}
    while True:
        # Only these servers' rows and jobs are read, not the registry's whole history.
        fresh = [registry.get(e.id) for e in endpoints if e.id is not None]
        rows = {
            (r.endpoint.provider, r.endpoint.site, r.endpoint.job_id): r
            for r in joined_rows(config, registry, fresh)
        }
        for key in sorted(pending):
            row = rows[key]
            if row.endpoint.state == "healthy":
                pending.discard(key)
            elif not row.endpoint.live:
                raise HpcragError(
                    f"{row.endpoint.tier} server, job {row.endpoint.job_id} on site {row.endpoint.site}, "
                    f"ended {row.slurm_state or row.endpoint.state}: {row.endpoint.message}; "
                    f"log: {row.endpoint.log_path}"
                )
        if not pending:
            return [rows[(e.provider, e.site, e.job_id)].endpoint for e in endpoints]
        if time.monotonic() > deadline:
            waiting = ", ".join(f"job {job} on {site}" for _, site, job in sorted(pending))
            raise HpcragError(f"not healthy after {timeout:.0f} s: {waiting}; see `hpcrag serve status`")
        time.sleep(poll_s)


def log_text(endpoint: Endpoint, lines: int) -> str:
    if not endpoint.log_path:
        raise HpcragError(f"endpoint {endpoint.id} has no log (provider {endpoint.provider})")
    path = Path(endpoint.log_path)
    if not path.is_file():
        raise HpcragError(f"log {path} does not exist yet (job {endpoint.job_id} may still be pending)")
    text = path.read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:]) if lines > 0 else "\n".join(text)
