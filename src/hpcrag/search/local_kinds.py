"""Shard-local index kinds: how one shard answers the queries routed to it.

- `ivf-flat` (default): the shard's inverted lists, read by hpcrag's scans (`backends.py`);
- `hnsw`: a faiss HNSW graph over the shard's rows, kept at the index's storage dtype (CPU);
- `ivf-pq`: a faiss IndexIVFPQ over the shard's lists, sharing the global coarse centroids and one
  set of PQ codebooks trained at build; its candidates are re-ranked against the full vectors
  (`refine` x k of them), which stay memory-mapped on disk;
- `cagra`: a cuVS CAGRA graph on the GPU.

Routing, the top-k reduction and the on-disk layout are the same for every kind: a kind adds one
file to each shard folder (checksummed in the manifest) whose labels are row positions in the
shard, mapped back to ids through `ids.npy`.

Updates and filters (`LIVE_KINDS`): rows added since the build sit in delta segments that every
kind scans through their lists, as ivf-flat does, and a deleted, replaced or filtered-out base row
is hidden from the shard's own index by a faiss selector over row positions (HNSW still walks
through it, so the graph stays connected); `compact` rebuilds the shard indexes with the updates
folded in. `cagra` takes none of these (hpcrag has not run cuVS's filtered search), and says so:
`DistributedIndex` refuses on rank 0 before any rank works.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from hpcrag.errors import HpcragError
from hpcrag.search.inputs import cli_flag
from hpcrag.search.metric import Metric

KINDS = ("ivf-flat", "hnsw", "cagra", "ivf-pq")
LIVE_KINDS = ("ivf-flat", "hnsw", "ivf-pq")  # kinds that take updates, filters and exact scans
FILES = {"hnsw": "hnsw.faiss", "ivf-pq": "ivfpq.faiss", "cagra": "cagra.bin"}
BUILD_PARAMS = {
    "ivf-flat": {},
    "hnsw": {"M": 32, "ef_construction": 40},
    "ivf-pq": {"pq_m": None, "nbits": 8},  # pq_m None: the largest divisor of dim up to dim / 8
    "cagra": {"graph_degree": 64, "intermediate_graph_degree": 128},
}
SEARCH_DEFAULTS = {"ef": 64, "refine": 10}  # hnsw efSearch / cagra itopk_size; ivf-pq re-rank factor
FLAGS = {"M": "--hnsw-m", "ef_construction": "--ef-construction", "pq_m": "--pq-m",
         "graph_degree": "--graph-degree"}  # fmt: skip
FAISS_PRECOMPUTED_TABLE_MAX_BYTES = 2**31  # faiss's default (faiss.cvar.precomputed_table_max_bytes)
MIN_PQ_TRAINING = 256  # 2**nbits codebook entries need at least as many training rows


def local_spec(kind: str, params: Mapping[str, Any], dim: int, on_gpu: bool) -> dict[str, Any]:
    """The manifest's `local` entry for a kind: checked before any work, defaults filled in."""
    if kind not in KINDS:
        raise HpcragError(f"unknown local index kind {kind!r}; use one of: {', '.join(KINDS)}")
    unknown = set(params) - set(BUILD_PARAMS[kind])
    if unknown:
        valid = ", ".join(BUILD_PARAMS[kind]) or "none"
        raise HpcragError(f"--local {kind} takes no parameter {sorted(unknown)}; its parameters: {valid}")
    spec: dict[str, Any] = {"kind": kind, **BUILD_PARAMS[kind]}
    spec.update({name: value for name, value in params.items() if value is not None})
    if kind == "hnsw":
        _check_range(spec, "M", 4, 256)
        if params.get("ef_construction") is None:  # the default effort must not be below M
            spec["ef_construction"] = max(spec["ef_construction"], spec["M"])
        _check_range(spec, "ef_construction", spec["M"], 4096)
    elif kind == "ivf-pq":
        if spec["pq_m"] is None:  # the largest divisor of dim that codes at least 8 dims per byte
            spec["pq_m"] = max(m for m in range(1, max(1, dim // 8) + 1) if dim % m == 0)
        _check_range(spec, "pq_m", 1, dim)
        if dim % spec["pq_m"]:
            divisors = [m for m in (dim // 16, dim // 8, dim // 4, dim // 2) if m and dim % m == 0]
            raise HpcragError(
                f"ivf-pq: --pq-m {spec['pq_m']} does not divide the dimension {dim}; each sub-quantizer "
                f"codes dim/pq_m dimensions: choose a divisor of {dim}, such as {divisors or [dim]}"
            )
        if spec["nbits"] != 8:
            raise HpcragError(f"ivf-pq: nbits {spec['nbits']} is not supported; use 8")
    elif kind == "cagra":
        _check_range(spec, "graph_degree", 8, 1024)
        if params.get("intermediate_graph_degree") is None:
            spec["intermediate_graph_degree"] = max(spec["intermediate_graph_degree"], spec["graph_degree"])
        _check_range(spec, "intermediate_graph_degree", spec["graph_degree"], 4096)
        why = cagra_unavailable(on_gpu)
        if why:
            raise HpcragError(
                f"--local cagra needs a GPU with cuVS, and {why}; on a GPU node install the GPU extra "
                "(pip install -e '.[cuda12]' or '.[cuda13]', which brings cuVS), or use --local hnsw on CPUs"
            )
    return spec


def _check_range(spec: dict[str, Any], name: str, low: int, high: int) -> None:
    value = spec[name]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise HpcragError(
            f"--local {spec['kind']}: {FLAGS.get(name, name)} must be an integer in [{low}, {high}], "
            f"got {value!r}"
        )


def cagra_unavailable(on_gpu: bool) -> str | None:
    """Why CAGRA cannot run here, or None."""
    if not on_gpu:
        return "no CUDA GPU is in use here"
    if importlib.util.find_spec("cuvs") is None:
        return "cuVS is not installed"
    return None


def check_search_effort(
    kind: str, ef: int | None, refine: int | None, spell: Callable[[str], str] = cli_flag
) -> None:
    """Refuse search knobs that do not fit the kind, or values out of range; `spell` names a knob as
    the caller gave it (a command-line flag, or a request field)."""
    if ef is not None and kind not in ("hnsw", "cagra"):
        raise HpcragError(
            f"{spell('ef')} sets the graph search effort of hnsw and cagra; this index is {kind}"
        )
    if refine is not None and kind != "ivf-pq":
        raise HpcragError(f"{spell('refine')} re-ranks ivf-pq candidates; this index is {kind}")
    if ef is not None and (not _is_int(ef) or not 1 <= ef <= 4096):
        raise HpcragError(f"{spell('ef')} must be an integer in [1, 4096], got {ef!r}")
    if refine is not None and (not _is_int(refine) or not 1 <= refine <= 1000):
        raise HpcragError(f"{spell('refine')} must be an integer in [1, 1000], got {refine!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def train_template(spec: Mapping[str, Any], centroids: np.ndarray, sample: np.ndarray, metric: Metric) -> Any:
    """What every shard's build shares (ivf-pq: the codebooks, trained once on rank 0), or None."""
    if spec["kind"] != "ivf-pq":
        return None
    import faiss

    nlist, dim = centroids.shape
    quantizer = faiss.IndexFlat(dim, metric.faiss_metric())
    quantizer.add(np.ascontiguousarray(centroids, dtype=np.float32))
    index = faiss.IndexIVFPQ(quantizer, dim, nlist, spec["pq_m"], spec["nbits"], metric.faiss_metric())
    index.pq.cp.min_points_per_centroid = 1  # the build refuses < 256 rows; spare faiss's warning
    index.train(np.ascontiguousarray(sample, dtype=np.float32))  # the quantizer is full: PQ only
    return faiss.serialize_index(index)


def build_local(
    spec: Mapping[str, Any], vectors: np.ndarray, lists: np.ndarray, metric: Metric, template: Any
) -> np.ndarray:
    """One shard's index over its rows in stored order (labels = row positions), as bytes."""
    import faiss

    rows = np.ascontiguousarray(vectors, dtype=np.float32)
    kind = spec["kind"]
    if kind == "hnsw":
        index = hnsw_graph(rows.shape[1], spec["M"], metric, vectors.dtype)
        index.hnsw.efConstruction = spec["ef_construction"]
        index.train(rows)
        index.add(rows)
        return faiss.serialize_index(index)
    if kind == "ivf-pq":
        index = faiss.deserialize_index(template)
        labels = np.arange(rows.shape[0], dtype=np.int64)
        assigned = np.ascontiguousarray(lists, dtype=np.int64)
        index.add_core(rows.shape[0], faiss.swig_ptr(rows), faiss.swig_ptr(labels), faiss.swig_ptr(assigned))
        return faiss.serialize_index(index)
    if kind == "cagra":
        return _build_cagra(spec, rows, metric)
    raise HpcragError(f"--local {kind} keeps no file of its own")


def hnsw_graph(dim: int, M: int, metric: Metric, stored: np.dtype) -> Any:
    """An empty faiss HNSW index that keeps the rows as the shard stores them. float16 rows stay
    float16 (faiss's fp16 scalar quantizer holds those very values in half the bytes of a float32
    copy, and scores them as IndexHNSWFlat would): a walk reads a vector at each step, so halving
    the bytes made searching a graph of 33,000 man-page rows 35% faster (35 ms against 54 ms for
    1,000 queries at ef 12, one thread, equal recall)."""
    import faiss

    if np.dtype(stored) == np.float16:
        return faiss.IndexHNSWSQ(dim, faiss.ScalarQuantizer.QT_fp16, M, metric.faiss_metric())
    return faiss.IndexHNSWFlat(dim, M, metric.faiss_metric())


def rebuild_template(spec: Mapping[str, Any], built: Any) -> Any:
    """What rebuilding shards shares with their first build (ivf-pq: the trained codebooks, taken
    from one of its shard indexes emptied), or None: `compact` builds no codebooks anew."""
    if spec["kind"] != "ivf-pq":
        return None
    import faiss

    empty = faiss.clone_index(built)
    empty.reset()
    return faiss.serialize_index(empty)


def _build_cagra(spec: Mapping[str, Any], rows: np.ndarray, metric: Metric) -> np.ndarray:
    import os
    import tempfile

    import cupy
    from cuvs.neighbors import cagra

    params = cagra.IndexParams(
        metric="sqeuclidean" if metric is Metric.L2 else "inner_product",
        graph_degree=spec["graph_degree"],
        intermediate_graph_degree=spec["intermediate_graph_degree"],
    )
    index = cagra.build(params, cupy.asarray(rows))
    handle, path = tempfile.mkstemp(suffix=".cagra")
    os.close(handle)
    try:
        cagra.save(path, index, include_dataset=True)
        return np.fromfile(path, dtype=np.uint8)
    finally:
        os.unlink(path)


def load_local(spec: Mapping[str, Any], path: Any) -> Any:
    """A shard's index object from its checked file."""
    if spec["kind"] == "cagra":
        from cuvs.neighbors import cagra

        return cagra.load(str(path))
    import faiss

    return faiss.read_index(str(path))


def memory_per_shard(spec: Mapping[str, Any], nlist: int, dim: int, metric: Metric) -> int:
    """Bytes each shard holds whatever its size: ivf-pq keeps its own copy of the centroids and, for
    l2, faiss's precomputed table of centroid-codeword terms (nlist x pq_m x 2^nbits floats), which
    faiss builds only up to its `precomputed_table_max_bytes`."""
    if spec["kind"] != "ivf-pq":
        return 0
    table = nlist * spec["pq_m"] * 2 ** spec["nbits"] * 4
    built = metric is Metric.L2 and table <= FAISS_PRECOMPUTED_TABLE_MAX_BYTES
    return nlist * dim * 4 + (table if built else 0)


def memory_per_vector(spec: Mapping[str, Any], dim: int, dtype_bytes: int) -> float:
    """Bytes per vector a shard holds in memory for searching (what it keeps on disk is measured
    from the manifest's file sizes instead)."""
    kind = spec["kind"]
    if kind == "hnsw":  # a copy at the stored dtype + level-0 links (2M), +10% for the upper levels'
        return dim * dtype_bytes + 2 * spec["M"] * 4 * 1.1 + 8
    if kind == "ivf-pq":  # codes + ids in the lists; full vectors only read to re-rank (mmap)
        return spec["pq_m"] * spec["nbits"] / 8 + 8
    if kind == "cagra":
        return dim * 4 + spec["graph_degree"] * 4
    return dim * dtype_bytes + 8 + 4  # vectors, ids, squared norms (the shard's arrays)
