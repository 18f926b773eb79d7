"""Reading and checking what users hand in: vectors (.npy float32/float16 or .fvecs), ids, queries,
and the bodies and parameters of search requests.

Vectors are opened memory-mapped so a build reads only the rows it needs; every problem is an
HpcragError naming the file (or the request field) and the fix (shape, dtype, dimension, NaN/inf with
the row number). Request bodies are checked strictly and within stated limits: an integer field takes
only an integer (not a boolean, a float or a string), a .npy body is sized from its header before it
is loaded, and a request beyond a limit is a `RequestTooLarge` naming the limit.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hpcrag.errors import HpcragError
from hpcrag.search.arrays import array_module
from hpcrag.util.npy_headers import HEADER_LOCK

VECTOR_DTYPES = (np.float32, np.float16)
NPY_MAGIC = b"\x93NUMPY"  # the first bytes of every .npy file (numpy.lib.format)
FLOAT16_MAX = float(np.finfo(np.float16).max)
FLOAT32_MAX = float(np.finfo(np.float32).max)


def open_vectors(path: Path, role: str = "vectors") -> np.ndarray:
    """A read-only (n, d) view of a .npy (float32/float16) or .fvecs file, memory-mapped; `role`
    names the file in errors (vectors, queries)."""
    path = Path(path)
    if path.is_dir():
        raise HpcragError(f"{path} is a directory, not a {role} file (.npy or .fvecs)")
    if not path.is_file():
        raise HpcragError(f"{role} file not found: {path}")
    if path.suffix == ".npy":
        array = _load_npy(path, mmap_mode="r")
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


def _load_npy(path: Path, mmap_mode: str | None = None) -> np.ndarray:
    """A .npy file's array, or an error that says why not (never numpy's advice to unpickle)."""
    with path.open("rb") as head:
        if head.read(len(NPY_MAGIC)) != NPY_MAGIC:
            raise HpcragError(f"{path}: not a .npy file (no NumPy header); write arrays with numpy.save")
    try:
        return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except (ValueError, OSError) as exc:
        if "allow_pickle" in str(exc) or "Python objects" in str(exc):  # numpy's words for object arrays
            raise HpcragError(
                f"{path}: holds Python objects (an object-dtype array), not numbers; save a numeric array "
                "(vectors float32 or float16, ids int64) with numpy.save"
            ) from None
        raise HpcragError(f"{path}: not a readable .npy file ({exc})") from None


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


def load_ids(path: Path, count: int | None, unique: bool = True) -> np.ndarray:
    """User ids for `count` vectors (None: any number): int64, non-negative (-1 means "no neighbour"),
    and unique unless told otherwise (an upsert keeps the last of repeated ids)."""
    path = Path(path)
    if not path.is_file():
        raise HpcragError(f"ids file not found: {path}")
    ids = _load_npy(path)
    if ids.ndim != 1 or (count is not None and ids.shape[0] != count):
        expected = "a 1-D array" if count is None else f"{count} ids (one per vector)"
        raise HpcragError(f"{path}: expected {expected}, found shape {ids.shape}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise HpcragError(f"{path}: ids must be integers, found {ids.dtype}")
    ids = ids.astype(np.int64)
    if ids.size and ids.min() < 0:
        raise HpcragError(f"{path}: ids must be >= 0 (-1 marks an empty result slot)")
    if unique and np.unique(ids).size != ids.size:
        raise HpcragError(f"{path}: ids must be unique")
    return ids


def check_ids(ids: Any) -> np.ndarray:
    """Ids given to an update: a non-empty 1-D list or array of integers >= 0, as int64."""
    if ids is None:
        raise HpcragError("no ids given: give one int64 id per vector (or per row to delete)")
    array = np.asarray(ids)
    if array.ndim == 0:
        array = array[None]
    if array.ndim != 1 or array.size == 0:
        raise HpcragError(f"ids: expected a non-empty list of integers, found shape {array.shape}")
    if array.dtype == bool or not np.issubdtype(array.dtype, np.integer):
        raise HpcragError(f"ids must be integers, found {array.dtype}")
    if array.min() < 0 or (array.dtype == np.uint64 and array.max() > np.iinfo(np.int64).max):
        raise HpcragError("ids must be between 0 and 2**63-1 (-1 marks an empty result slot)")
    return array.astype(np.int64)


def check_storable(rows: Any, dtype: str, first_row: int = 0) -> None:
    """Refuse rows that the index's storage dtype cannot hold (float16 overflows at 65504)."""
    if dtype != "float16" or rows.shape[0] == 0:
        return
    xp = array_module(rows)
    big = xp.flatnonzero(xp.abs(rows).max(axis=1) > FLOAT16_MAX)
    if big.size:
        raise HpcragError(
            f"vectors row {first_row + int(big[0])} exceeds the float16 range (|x| > {FLOAT16_MAX:g}) "
            "this index stores; scale the vectors, or build the index with --dtype float32"
        )


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
    with np.errstate(over="ignore"):  # a value beyond float32 becomes inf, which check_finite names
        queries = queries.astype(xp.float32)
    check_finite(queries, what)
    # A row whose squared norm overflows float32 cannot be scored (its distances would be inf).
    # The largest value bounds every norm: rows are summed in float64 only where it cannot rule that out.
    largest = float(xp.abs(queries).max())
    if largest * largest * dim <= FLOAT32_MAX:
        return queries
    huge = xp.flatnonzero((queries.astype(xp.float64) ** 2).sum(axis=1) > FLOAT32_MAX)
    if huge.size:
        raise HpcragError(
            f"{what} row {int(huge[0])} is too large to score: its squared norm exceeds the float32 range "
            f"({FLOAT32_MAX:.3g}); scale the vectors down"
        )
    return queries


def load_queries(path: Path, dim: int) -> np.ndarray:
    """Queries from a .npy or .fvecs file, checked against the index dimension."""
    return check_queries(np.asarray(open_vectors(path, "queries")), dim, what=str(path))


def cli_flag(name: str) -> str:
    """A search parameter as the command line spells it (max_shards: --max-shards)."""
    return "--" + name.replace("_", "-")


def check_search_params(k: int, nprobe: int, nlist: int) -> None:
    if k <= 0:
        raise HpcragError(f"k must be >= 1, got {k}")
    if not 1 <= nprobe <= nlist:
        raise HpcragError(f"nprobe must be between 1 and nlist ({nlist}), got {nprobe}")


ROUTING_FIELDS = ("max_shards", "shard_margin", "ef", "refine")
SEARCH_FIELDS = ("queries", "k", "nprobe", "filter", "strategy", "min_seq", *ROUTING_FIELDS)
_DECIMAL = re.compile(r"[0-9]{1,9}")
_PLAIN_NUMBER = re.compile(r"[0-9]{1,9}(\.[0-9]{1,9})?")


class RequestTooLarge(HpcragError):
    """A request beyond one of the service's limits (answered with 413)."""


def shown(value: Any) -> str:
    """A value as a message may quote it: short, whatever the caller sent."""
    text = (
        json.dumps(value)
        if isinstance(value, (str, int, float, bool)) or value is None
        else type(value).__name__
    )
    return text if len(text) <= 40 else text[:37] + "..."


def refuse_constant(name: str) -> Any:
    raise HpcragError(
        f"the request body is not valid JSON ({name} is not a JSON number); send finite numbers"
    )


@dataclass(frozen=True)
class SearchRequest:
    queries: np.ndarray
    k: int = 10
    nprobe: int = 1
    filter: Any = None  # a filter spec (filters.py), compiled against the index's attributes later
    strategy: str = "auto"
    min_seq: int = 0  # answer only from a state that includes this update (read your writes)
    routing: Mapping[str, Any] = field(default_factory=dict)  # the routing fields the caller gave


def parse_search_json(raw: bytes, max_queries: int) -> SearchRequest:
    """A search from a JSON body {"queries": [[...], ...], "k": 10, "nprobe": 1, "filter": {...},
    "strategy": "auto", "min_seq": 0, "max_shards": 2, "shard_margin": 0.5, "ef": 32, "refine": 10}."""
    try:
        body = json.loads(raw, parse_constant=refuse_constant)
    except RecursionError:
        raise HpcragError('the request body nests JSON too deeply; send {"queries": [[...]], ...}') from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an integer with too many digits
        raise HpcragError(f"the request body is not valid JSON ({first_line(exc)})") from None
    if not isinstance(body, dict) or "queries" not in body:
        raise HpcragError('expected a JSON object {"queries": [[...]], "k": 10, "nprobe": 8}')
    unknown = sorted(set(body) - set(SEARCH_FIELDS))
    if unknown:
        raise HpcragError(f"unknown field {shown(unknown[0])}; valid fields: {', '.join(SEARCH_FIELDS)}")
    strategy = body.get("strategy", "auto")
    if not isinstance(strategy, str):
        raise HpcragError(f'"strategy" must be "auto", "ivf" or "exact", got {shown(strategy)}')
    min_seq = _json_int(body, "min_seq", 0)
    if min_seq < 0:
        raise HpcragError(f'"min_seq" must be an update number >= 0, got {min_seq}')
    return SearchRequest(
        json_vectors(body["queries"], max_queries),
        _json_int(body, "k", 10),
        _json_int(body, "nprobe", 1),
        body.get("filter"),
        strategy,
        min_seq,
        _json_routing(body),
    )


def _json_routing(body: Mapping[str, Any]) -> dict[str, Any]:
    """The routing fields given (null counts as not given); ranges are the index's to check."""
    integers = ("max_shards", "ef", "refine")
    given: dict[str, Any] = {n: _json_int(body, n, 0) for n in integers if body.get(n) is not None}
    margin = body.get("shard_margin")
    if margin is not None:
        if type(margin) not in (int, float):
            raise HpcragError(f'"shard_margin" must be a number (like 0.5), got {shown(margin)}')
        given["shard_margin"] = float(margin)
    return given


def parse_margin_param(text: str) -> float:
    """The shard_margin query parameter: a plain decimal (0.5), nothing float() would also take."""
    if not _PLAIN_NUMBER.fullmatch(text):
        raise HpcragError(f"query parameter shard_margin must be a number like 0.5, got {shown(text)}")
    return float(text)


def first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


def _json_int(body: Mapping[str, Any], name: str, default: int) -> int:
    value = body.get(name, default)
    if type(value) is not int:  # bool is an int to Python, not to a caller
        raise HpcragError(f'"{name}" must be an integer (like 10), got {shown(value)}')
    return value


def json_vectors(queries: Any, max_queries: int, name: str = "queries") -> np.ndarray:
    """A JSON list of vectors (or one vector) as float32 rows, at most `max_queries` of them."""
    if not isinstance(queries, list) or not queries:
        raise HpcragError(
            f'"{name}" must be a non-empty list of vectors (lists of numbers), got {shown(queries)}'
        )
    rows = queries if isinstance(queries[0], list) else [queries]
    if len(rows) > max_queries:
        raise RequestTooLarge(
            f'"{name}" holds {len(rows)} vectors, more than the limit of {max_queries} per request'
            f"{' (--max-queries)' if name == 'queries' else ''}; split them over several requests"
        )
    for number, row in enumerate(rows):
        if type(row) is not list:
            raise HpcragError(f'"{name}" row {number} must be a list of numbers, got {shown(row)}')
        if not set(map(type, row)) <= {int, float}:  # bool is an int to Python: it fails here too
            bad = next(x for x in row if type(x) not in (int, float))
            raise HpcragError(
                f'"{name}" row {number} holds {shown(bad)}: vectors hold numbers only '
                "(not strings, booleans or null)"
            )
    try:
        array = np.array(rows, dtype=np.float64)
    except OverflowError:
        raise HpcragError(f'"{name}" holds an integer beyond the float range; send finite numbers') from None
    except ValueError:
        raise HpcragError(f'"{name}" rows differ in length: every vector needs the index dimension') from None
    with np.errstate(over="ignore"):  # beyond float32 becomes inf, which check_queries names by row
        return array.astype(np.float32)


def parse_search_npy(raw: bytes, max_queries: int) -> np.ndarray:
    """The queries of a .npy body, sized from its header before any array is allocated."""
    from numpy.lib import format as npy

    stream = io.BytesIO(raw)
    try:
        version = npy.read_magic(stream)
        with HEADER_LOCK:
            if version == (1, 0):
                shape, _, dtype = npy.read_array_header_1_0(stream)
            elif version == (2, 0):
                shape, _, dtype = npy.read_array_header_2_0(stream)
            else:
                raise ValueError(f".npy format version {version} is not read here; save with numpy.save")
    except Exception as exc:  # numpy's header parser lets tokenize and syntax errors through too
        raise HpcragError(f"the request body is not a .npy array ({first_line(exc)})") from None
    if dtype.hasobject or dtype.kind not in "fiu":
        raise HpcragError(f"queries: expected numbers (float32 best), found {dtype}")
    if len(shape) not in (1, 2):
        raise HpcragError(f"queries: expected a (nq, dim) array, found shape {shape}")
    rows = shape[0] if len(shape) == 2 else 1
    if rows > max_queries:
        raise RequestTooLarge(
            f"the body holds {rows} queries, more than the limit of {max_queries} per request "
            "(--max-queries); split them over several requests"
        )
    expected = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if len(raw) - stream.tell() != expected:
        raise HpcragError(
            f"the .npy body is damaged: its header says shape {shape} of {dtype} ({expected} bytes) "
            f"but {len(raw) - stream.tell()} bytes follow"
        )
    with HEADER_LOCK:
        return np.load(io.BytesIO(raw), allow_pickle=False)


def parse_query_params(
    pairs: Iterable[tuple[str, str]], defaults: Mapping[str, int | None]
) -> dict[str, int | None]:
    """Integer query parameters (?k=10&nprobe=4): known names only, decimal digits only, each once
    (a default of None: not given)."""
    values, seen = dict(defaults), set()
    for name, text in pairs:
        if name not in defaults:
            raise HpcragError(f"unknown query parameter {shown(name)}; valid: {', '.join(defaults)}")
        if name in seen:
            raise HpcragError(f"query parameter {name} is given more than once; give it once")
        if not _DECIMAL.fullmatch(text):
            raise HpcragError(
                f"query parameter {name} must be a positive integer (like {name}=10), got {shown(text)}"
            )
        seen.add(name)
        values[name] = int(text)
    return values
