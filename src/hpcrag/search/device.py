"""Where arrays live: the CPU (NumPy) or a CUDA GPU (CuPy), with a clear message when CuPy is absent."""

from __future__ import annotations

from typing import Any

from hpcrag.errors import HpcragError

DEVICES = ("cpu", "cuda")


def require_cupy() -> Any:
    """CuPy with a usable GPU, or an HpcragError that says what is missing and how to get it."""
    try:
        import cupy
    except ImportError:
        raise HpcragError(
            "--device cuda needs CuPy: pip install 'hpcrag[cuda12]' (or [cuda13]) on a GPU node"
        ) from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except cupy.cuda.runtime.CUDARuntimeError as exc:
        raise HpcragError(f"--device cuda: no usable CUDA GPU ({exc}); use --device cpu") from None
    if count == 0:
        raise HpcragError("--device cuda: no CUDA GPU visible; use --device cpu")
    return cupy


def array_module_for(device: str) -> Any:
    if device not in DEVICES:
        raise HpcragError(f"unknown device {device!r}; use one of: {', '.join(DEVICES)}")
    if device == "cuda":
        return require_cupy()
    import numpy

    return numpy
