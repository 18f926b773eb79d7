"""Real MPI: mpi4py ranks under `srun --mpi=pmix` (one and two nodes) and under `mpirun`."""

from __future__ import annotations

import json
import os
import sys

import pytest

from hpcrag.slurm.command import run_command
from hpcrag.slurm.target import SlurmTarget


def report(text: str) -> dict:
    return json.loads(next(line for line in text.splitlines() if line.startswith("{")))


@pytest.mark.parametrize(("nodes", "ranks"), [(1, 2), (2, 4)])
def test_srun_pmix(nyc: SlurmTarget, nodes: int, ranks: int) -> None:
    out = run_command(
        [
            "srun",
            "--partition=tier-s",
            "--mpi=pmix",
            f"--nodes={nodes}",
            f"--ntasks={ranks}",
            "--gres=gpu:l40s:1",
            sys.executable,
            "-m",
            "hpcrag.slurm.mpi_check",
        ],
        env=nyc.env,
        timeout=120,
    ).stdout
    result = report(out)
    assert result["cluster"] == "nyc" and result["partition"] == "tier-s"
    assert result["size"] == ranks
    assert result["allreduce"] == result["expected"] == ranks * (ranks + 1) // 2
    assert len({r["node"] for r in result["ranks"]}) == nodes
    assert {r["cuda_visible_devices"] for r in result["ranks"]} == {"0"}
    assert "Open MPI" in result["mpi"]


def test_mpirun_outside_slurm() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "PMIX_", "OMPI_"))}
    env["OMPI_MCA_plm"] = "isolated"  # launch locally, never through an ambient resource manager
    out = run_command(
        [
            "env",
            "-i",
            *(f"{k}={v}" for k, v in env.items()),
            "mpirun",
            "--allow-run-as-root",
            "--oversubscribe",
            "-n",
            "3",
            sys.executable,
            "-m",
            "hpcrag.slurm.mpi_check",
        ],
        timeout=120,
    ).stdout
    result = report(out)
    assert result["size"] == 3 and result["allreduce"] == 6 and result["ok"]
