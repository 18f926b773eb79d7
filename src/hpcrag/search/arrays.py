"""One array API for both paths: NumPy on the CPU, CuPy on the GPU, chosen from the array itself."""

from __future__ import annotations

from typing import Any


def array_module(array: Any) -> Any:
    """`cupy` for a CuPy array, else `numpy`; never imports CuPy for a NumPy array."""
    if type(array).__module__.startswith("cupy"):
        import cupy

        return cupy
    import numpy

    return numpy


def to_numpy(array: Any) -> Any:
    """A NumPy array with the same values (a device-to-host copy for CuPy arrays)."""
    if type(array).__module__.startswith("cupy"):
        return array.get()
    return array
