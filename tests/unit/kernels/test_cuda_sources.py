"""Every kernels/*.cu compiles with nvcc for Turing, Ampere and Hopper, and the WMMA scan's SASS holds
tensor-core instructions (HMMA), so a silent fall-back to scalar code fails here."""

from __future__ import annotations

import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import REPO

ARCHS = ("sm_75", "sm_80", "sm_90")
# Representative compile-time parameters of each kernel (the loader passes the same -D names).
PARAMETERS = {
    "ivf_scan_wmma": [{"D_PAD": 112, "K": 10, "METRIC": 1}, {"D_PAD": 1536, "K": 256, "METRIC": 0}],
    "topk_merge": [{"K": 10, "LARGER_IS_BETTER": 1}, {"K": 1024, "LARGER_IS_BETTER": 0}],
}


def _nvcc() -> str:
    found = shutil.which("nvcc") or next(
        (p for p in ("/usr/local/bin/nvcc", "/usr/local/cuda/bin/nvcc") if Path(p).exists()), None
    )
    if found is None:
        pytest.skip("nvcc is not installed on this machine (CUDA toolkit); the .cu sources were not compiled")
    return found


def _cuobjdump() -> str:
    import nvidia

    for root in nvidia.__path__:
        for candidate in Path(root).glob("cu*/bin/cuobjdump"):
            return str(candidate)
    pytest.fail("cuobjdump not found: pip install nvidia-cuda-cuobjdump (scripts/setup installs it)")


def _compile(nvcc: str, source: Path, arch: str, defines: dict[str, int], out: Path) -> Path:
    flags = [f"-D{key}={value}" for key, value in defines.items()]
    done = subprocess.run(
        [
            nvcc,
            "-cubin",
            f"-arch={arch}",
            "-std=c++17",
            "-Werror",
            "all-warnings",
            *flags,
            "-o",
            str(out),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"{source.name} for {arch} {defines}:\n{done.stderr}"
    return out


def test_every_kernel_source_has_parameters_here() -> None:
    assert {p.stem for p in (REPO / "kernels").glob("*.cu")} == set(PARAMETERS)


def test_sources_compile_for_every_architecture_and_wmma_uses_tensor_cores(tmp_path: Path) -> None:
    nvcc = _nvcc()
    jobs = [
        (name, arch, defines, tmp_path / f"{name}-{arch}-{i}.cubin")
        for name, sets in PARAMETERS.items()
        for i, defines in enumerate(sets)
        for arch in ARCHS
    ]
    with ThreadPoolExecutor(max_workers=2) as pool:
        cubins = list(
            pool.map(
                lambda job: _compile(nvcc, REPO / "kernels" / f"{job[0]}.cu", job[1], job[2], job[3]), jobs
            )
        )
    cuobjdump = _cuobjdump()
    for (name, arch, defines, _), cubin in zip(jobs, cubins, strict=True):
        sass = subprocess.run(
            [cuobjdump, "-sass", str(cubin)], capture_output=True, text=True, check=True
        ).stdout
        assert "Function" in sass and f"{name}" in sass
        if name == "ivf_scan_wmma":
            assert "HMMA" in sass, f"no tensor-core instruction in ivf_scan_wmma for {arch} {defines}"
