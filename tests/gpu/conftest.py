"""GPU tests run only where CuPy sees an NVIDIA GPU; elsewhere each is skipped with the reason."""

from __future__ import annotations

import pytest


def gpu_missing_reason() -> str | None:
    try:
        import cupy
    except ImportError:
        return "no GPU stack: CuPy is not installed (pip install -e '.[cuda12]' on a GPU node)"
    try:
        if cupy.cuda.runtime.getDeviceCount() == 0:
            return "no NVIDIA GPU visible"
    except cupy.cuda.runtime.CUDARuntimeError as exc:
        return f"no usable NVIDIA GPU ({exc})"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = gpu_missing_reason()
    if reason is None:
        return
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=reason))
