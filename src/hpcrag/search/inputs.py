"""Reading and checking what users hand in: vectors (.npy float32/float16 or .fvecs), ids, queries.

Vectors are opened memory-mapped so a build reads only the rows it needs; every problem is an
HpcragError naming the file and the fix (shape, dtype, dimension, NaN/inf with the row number).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from hpcrag.errors import HpcragError
from hpcrag.search.arrays import array_module

VECTOR_DTYPES = (np.float32, np.float16)


def open_vectors(path: Path) -> np.ndarray:
    """A read-only (n, d) view of a .npy (float32/float16) or .fvecs file, memory-mapped."""
    path = Path(path)
    if not path.is_file():
        raise HpcragError(f"vectors file not found: {path}")
    if path.suffix == ".npy":
        try:
            array = np.load(path, mmap_mode="r")
        except (ValueError, OSError) as exc:
            raise HpcragError(f"{path}: not a readable .npy file ({exc})") from None
    elif path.suffix == ".fvecs":
        array = _open_fvecs(path)
    else:
        raise HpcragError(f"{path}: unsupported vectors format {path.suffix!r}; use .npy or .fvecs")
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise HpcragError(f"{path}: expected a non-empty 2-D array (n, d), found shape {array.shape}")
    if array.dtype not in VECTOR_DTYPES:
        raise HpcragError(
            f"{path}: vectors must be float32 or float16, found {array.dtype}; convert with "
            "numpy.load(...).astype('float32')"
        )
    return array


def _open_fvecs(path: Path) -> np.ndarray:
    raw = np.memmap(path, dtype=np.int32, mode="r")
    if raw.size == 0:
        raise HpcragError(f"{path}: empty .fvecs file")
    dim = int(raw[0])
    if dim <= 0 or raw.size % (dim + 1):
        raise HpcragError(f"{path}: not a .fvecs file (size does not match the header dimension {dim})")
    rows = raw.reshape(-1, dim + 1)
    if not (rows[:, 0] == dim).all():
        raise HpcragError(f"{path}: .fvecs rows disagree on the dimension (first row says {dim})")
    return rows[:, 1:].view(np.float32)


def load_ids(path: Path, count: int) -> np.ndarray:
    """User ids for `count` vectors: int64, unique, non-negative (-1 means "no neighbour")."""
    path = Path(path)
    if not path.is_file():
        raise HpcragError(f"ids file not found: {path}")
    try:
        ids = np.load(path)
    except (ValueError, OSError) as exc:
        raise HpcragError(f"{path}: not a readable .npy file ({exc})") from None
    if ids.ndim != 1 or ids.shape[0] != count:
        raise HpcragError(f"{path}: expected {count} ids (one per vector), found shape {ids.shape}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise HpcragError(f"{path}: ids must be integers, found {ids.dtype}")
    ids = ids.astype(np.int64)
    if ids.size and ids.min() < 0:
        raise HpcragError(f"{path}: ids must be >= 0 (-1 marks an empty result slot)")
    if np.unique(ids).size != ids.size:
        raise HpcragError(f"{path}: ids must be unique")
    return ids


def check_finite(rows: Any, what: str, first_row: int = 0) -> None:
    """Refuse NaN or inf, naming the first bad row."""
    xp = array_module(rows)
    bad = xp.flatnonzero(~xp.isfinite(rows).all(axis=1))
    if bad.size:
        row = first_row + int(bad[0])
        raise HpcragError(f"{what} row {row} holds NaN or inf; clean or drop it")


def check_queries(queries: Any, dim: int, what: str = "queries") -> Any:
    """A (nq, dim) float32 batch from anything array-like, or an HpcragError saying what is wrong."""
    xp = array_module(queries)
    queries = xp.asarray(queries)
    if queries.ndim == 1:
        queries = queries[None, :]
    if queries.ndim != 2 or queries.shape[0] == 0:
        raise HpcragError(f"{what}: expected a non-empty (nq, {dim}) array, found shape {queries.shape}")
    if queries.shape[1] != dim:
        raise HpcragError(f"{what}: dimension {queries.shape[1]} does not match the index dimension {dim}")
    if queries.dtype.kind not in "fiu":
        raise HpcragError(f"{what}: expected numbers, found {queries.dtype}")
    queries = queries.astype(xp.float32)
    check_finite(queries, what)
    return queries


def load_queries(path: Path, dim: int) -> np.ndarray:
    """Queries from a .npy or .fvecs file, checked against the index dimension."""
    return check_queries(np.asarray(open_vectors(path)), dim, what=str(path))


def check_search_params(k: int, nprobe: int, nlist: int) -> None:
    if k <= 0:
        raise HpcragError(f"k must be >= 1, got {k}")
    if not 1 <= nprobe <= nlist:
        raise HpcragError(f"nprobe must be between 1 and nlist ({nlist}), got {nprobe}")
