"""submitit executors bound to one site, partition and GPU type, on any of several clusters.

submitit's stock watcher polls job states with a bare `sacct -j ID`, which asks the default cluster
only; here the watcher remembers each job's site and asks that cluster. Unknown partitions and GPU
types are refused with the valid ones listed, before anything reaches Slurm.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from submitit.core import core, utils
from submitit.slurm.slurm import SlurmExecutor, SlurmInfoWatcher, SlurmJob

from hpcrag.config import Config, load_config
from hpcrag.config.schema import UnknownNameError
from hpcrag.errors import HpcragError
from hpcrag.slurm.command import run_command
from hpcrag.slurm.target import SlurmTarget

log = logging.getLogger(__name__)
SACCT_FIELDS = ("-o", "JobID,State,NodeList", "--parsable2")


class SiteInfoWatcher(SlurmInfoWatcher):
    """Polls each registered job's own cluster; one sacct call per cluster per refresh."""

    def __init__(self, delay_s: int = 60) -> None:
        super().__init__(delay_s=delay_s)
        self._targets: dict[str, SlurmTarget] = {}

    def bind(self, job_id: str, target: SlurmTarget) -> None:
        self._targets[job_id.split("_")[0]] = target

    def target_of(self, job_id: str) -> SlurmTarget | None:
        return self._targets.get(job_id.split("_")[0])

    def update(self) -> None:
        pending = sorted({x.split("_")[0] for x in self._registered - self._finished})
        if not pending:
            return
        by_target: dict[SlurmTarget | None, list[str]] = defaultdict(list)
        for job_id in pending:
            by_target[self._targets.get(job_id)].append(job_id)
        self._num_calls += 1
        for target, job_ids in by_target.items():
            selectors = [f"--jobs={','.join(job_ids)}"]
            try:
                if target is None:
                    out = run_command(["sacct", *SACCT_FIELDS, *selectors]).stdout
                else:
                    out = target.sacct(*SACCT_FIELDS, *selectors)
            except HpcragError as exc:
                log.warning("job states of %s may be stale: %s", ",".join(job_ids), exc)
                continue
            self._info_dict.update(self.read_info(out))
        self._last_status_check = time.time()
        for job_id in self._registered - self._finished:
            if self.is_done(job_id, mode="cache"):
                self._finished.add(job_id)


class SiteSlurmJob(SlurmJob[core.R]):
    watcher = SiteInfoWatcher(delay_s=60)

    @property
    def target(self) -> SlurmTarget | None:
        return self.watcher.target_of(self.job_id)

    def cancel(self, check: bool = True) -> None:
        target = self.target
        if target is None:
            super().cancel(check=check)
            return
        try:
            target.scancel(self.job_id)
        except HpcragError:
            if check:
                raise


class SiteExecutor(SlurmExecutor):
    """A SlurmExecutor whose sbatch, sacct and scancel all reach one site's cluster."""

    job_class = SiteSlurmJob

    def __init__(self, folder: str | Path, target: SlurmTarget, max_num_timeout: int = 3) -> None:
        super().__init__(folder=folder, max_num_timeout=max_num_timeout)
        self.target = target

    def _make_submission_command(self, submission_file_path: Path) -> list[str]:
        # submitit runs this list itself; `env` sets the site's SLURM_CONF for sbatch alone.
        prefix = ["env", *(f"{k}={v}" for k, v in self.target.env.items())] if self.target.env else []
        return [*prefix, "sbatch", *self.target.cluster_args, str(submission_file_path)]

    def _submit_command(self, command: str) -> core.Job[Any]:
        job = super()._submit_command(command)
        SiteSlurmJob.watcher.bind(job.job_id, self.target)
        return job

    def _internal_process_submissions(
        self, delayed_submissions: list[utils.DelayedSubmission]
    ) -> list[core.Job[Any]]:
        # submitit's array path builds plain SlurmJobs that would poll the wrong cluster, so
        # each submission of a batch goes in as its own job.
        jobs: list[core.Job[Any]] = []
        for delayed in delayed_submissions:
            jobs.extend(super()._internal_process_submissions([delayed]))
        return jobs


def site_executor(
    site: str,
    partition: str,
    gpu_type: str | None = None,
    gpus: int = 0,
    *,
    folder: str | Path,
    config: Config | None = None,
    **parameters: Any,
) -> SiteExecutor:
    """An executor for `gpus` GPUs of `gpu_type` on `partition` at `site`, validated against the YAML.

    Extra `parameters` go to `SlurmExecutor.update_parameters` (e.g. `time=10`, `ntasks_per_node=2`);
    submitit rejects unknown ones with the list of valid ones.
    """
    config = config or load_config()
    site_config = config.site(site)
    site_config.partition(partition)
    types = site_config.partition_gpu_types(partition)
    if gpus < 0:
        raise HpcragError(f"gpus must be >= 0, got {gpus}")
    if gpus and gpu_type is None:
        raise HpcragError(
            f"name the GPU type for {gpus} GPUs on {site}/{partition}; valid: {', '.join(types)}"
        )
    if gpu_type is not None and gpu_type not in types:
        raise UnknownNameError("GPU type", gpu_type, types, f"on partition {site}/{partition}")
    if gpu_type is not None:
        per_node = max(g.gpus_per_node for g in site_config.node_groups if g.gpu_type == gpu_type)
        if gpus > per_node:
            raise HpcragError(
                f"{gpus} {gpu_type} GPUs asked for, but a {site} node has at most {per_node}; "
                "ask for at most that many per node (use several nodes for more)"
            )
    executor = SiteExecutor(folder=folder, target=SlurmTarget.for_site(site_config))
    params: dict[str, Any] = {"partition": partition, **parameters}
    if gpus and gpu_type:
        params["gres"] = f"gpu:{gpu_type}:{gpus}"
    if executor.target.via_clusters_flag:
        extra = dict(params.pop("additional_parameters", {}) or {})
        extra["clusters"] = executor.target.cluster
        params["additional_parameters"] = extra
    try:
        executor.update_parameters(**params)
    except ValueError as exc:
        raise HpcragError(f"bad executor parameters: {exc}") from None
    return executor
