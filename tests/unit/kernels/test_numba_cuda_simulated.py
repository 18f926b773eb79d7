"""The Numba CUDA SIMT kernel's logic, checked on the CPU by Numba's CUDA simulator."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO


def test_simt_kernel_equals_the_cpu_kernel_under_the_simulator() -> None:
    script = Path(__file__).with_name("simulated_scan.py")
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "simulated SIMT kernel equals the CPU kernel" in done.stdout


def test_simt_kernel_refuses_k_it_cannot_hold() -> None:
    from hpcrag.kernels import numba_cuda
    from hpcrag.search.backends import SIMT_MAX_K

    assert SIMT_MAX_K == numba_cuda.MAX_K
    with pytest.raises(ValueError, match="k <= 64"):
        numba_cuda.scan_lists(None, None, None, None, None, None, 65, False)
