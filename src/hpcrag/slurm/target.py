"""SlurmTarget: how client commands reach one site's cluster, and the Slurm client tools on it.

A site is reached either through its own slurm.conf (`SLURM_CONF`, as the dev clusters are) or
through a multi-cluster name (`--clusters`). Each client tool has one helper here.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

from hpcrag.config import Site
from hpcrag.errors import HpcragError
from hpcrag.slurm.command import CommandError, CommandResult, run_command

_UNREACHABLE = re.compile(
    r"Unable to contact slurm controller|Connection refused|Zero Bytes were transmitted|"
    r"Could not establish a configuration source|Unable to establish controller|"
    r"Socket timed out|No such file or directory.*slurm\.conf|Problem talking to the database|"
    r"Could not locate|slurmdbd: Connection",
    re.IGNORECASE,
)


class SlurmUnreachableError(HpcragError):
    """The site's Slurm controller (or its accounting daemon) does not answer."""


@dataclass(frozen=True)
class SlurmTarget:
    site: str
    cluster: str
    slurm_conf: str | None = None
    via_clusters_flag: bool = False

    @classmethod
    def for_site(cls, site: Site) -> SlurmTarget:
        access = site.slurm.access
        return cls(
            site=site.name,
            cluster=site.slurm.cluster_name,
            slurm_conf=access.slurm_conf,
            via_clusters_flag=access.clusters is not None,
        )

    @property
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": self.slurm_conf} if self.slurm_conf else {}

    @property
    def cluster_args(self) -> list[str]:
        return [f"--clusters={self.cluster}"] if self.via_clusters_flag else []

    def call(self, tool: str, args: Sequence[str], *, timeout: float = 30.0) -> CommandResult:
        """Run a Slurm client tool against this site; an unreachable cluster is a clear error."""
        if self.slurm_conf and not os.path.isfile(self.slurm_conf):
            # Slurm's clients would retry a missing slurm.conf for a minute before failing.
            raise SlurmUnreachableError(
                f"site {self.site}: Slurm not reachable: {self.slurm_conf} does not exist "
                "(start the local clusters: scripts/dev-cluster up)"
            )
        try:
            return run_command([tool, *self.cluster_args, *args], env=self.env, timeout=timeout)
        except CommandError as exc:
            text = f"{exc.stderr}\n{exc.stdout}"
            if exc.returncode is None and "not installed" in str(exc):
                raise SlurmUnreachableError(
                    f"site {self.site}: Slurm client '{tool}' is not installed on this host "
                    "(install slurm-client, or run make setup)"
                ) from None
            if _UNREACHABLE.search(text) or exc.returncode is None:
                how = f"SLURM_CONF={self.slurm_conf}" if self.slurm_conf else f"--clusters={self.cluster}"
                hint = " (start the local clusters: scripts/dev-cluster up)" if self.slurm_conf else ""
                raise SlurmUnreachableError(
                    f"site {self.site}: Slurm not reachable through {how}{hint}\n  {exc}"
                ) from None
            raise

    def sinfo(self, *args: str) -> str:
        return self.call("sinfo", args).stdout

    def squeue(self, *args: str) -> str:
        return self.call("squeue", args).stdout

    def sacct(self, *args: str) -> str:
        return self.call("sacct", args).stdout

    def scontrol(self, *args: str) -> str:
        return self.call("scontrol", args).stdout

    def scancel(self, *args: str) -> str:
        return self.call("scancel", args).stdout

    def sbatch(self, *args: str) -> str:
        return self.call("sbatch", args).stdout
