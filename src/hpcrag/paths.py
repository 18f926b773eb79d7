"""Where the repository's data folders are: site-configs/, the sbatch templates in slurm/, kernels/."""

from __future__ import annotations

import os
from pathlib import Path


def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def slurm_templates_dir() -> Path:
    """`$HPCRAG_SLURM_TEMPLATES`, else the repository's `slurm/`."""
    return Path(os.environ.get("HPCRAG_SLURM_TEMPLATES") or repo_root() / "slurm")


def kernels_dir() -> Path:
    """The CUDA C++ sources (`kernels/*.cu`) that CuPy compiles at run time."""
    return repo_root() / "kernels"
