"""Bad input gets a clear error naming the problem, and a failed build leaves nothing behind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hpcrag.errors import HpcragError
from hpcrag.search import BuildOptions, DistributedIndex, Metric, build_index
from hpcrag.search.synthetic import clustered
from tests.search_helpers import build_small

BASE, QUERIES = clustered(800, 10, 8, clusters=4, seed=9)


def _build(tmp_path: Path, base: np.ndarray, **options) -> Path:
    source = tmp_path / "base.npy"
    np.save(source, base)
    out = tmp_path / "out"
    build_index(source, out, BuildOptions(**{"nlist": 8, "nshards": 2, **options}))
    return out


def _assert_nothing_left(tmp_path: Path) -> None:
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.*")), "a half-written build was left behind"


@pytest.mark.parametrize(
    ("bad_value", "message"),
    [(np.nan, r"row 123 holds NaN or inf"), (np.inf, r"row 123 holds NaN or inf")],
)
def test_nan_or_inf_in_vectors(tmp_path: Path, bad_value: float, message: str) -> None:
    base = BASE.copy()
    base[123, 3] = bad_value
    with pytest.raises(HpcragError, match=message):
        _build(tmp_path, base)
    _assert_nothing_left(tmp_path)


def test_values_beyond_float16(tmp_path: Path) -> None:
    base = BASE.copy()
    base[5, 0] = 1e6
    with pytest.raises(HpcragError, match=r"row 5 exceeds the float16 range.*--dtype float32"):
        _build(tmp_path, base, metric=Metric.L2)
    _assert_nothing_left(tmp_path)


def test_zero_row_under_cosine(tmp_path: Path) -> None:
    base = BASE.copy()
    base[7] = 0
    with pytest.raises(HpcragError, match="row 7 is all zeros"):
        _build(tmp_path, base, metric=Metric.COSINE)
    _assert_nothing_left(tmp_path)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"nlist": 900}, "fewer than --nlist 900"),
        ({"nlist": 2, "nshards": 3}, "--nlist 2 < --shards 3"),
        ({"nshards": 0}, "must be >= 1"),
        ({"dtype": "int8"}, "unknown storage dtype"),
    ],
)
def test_bad_build_options(tmp_path: Path, options: dict, message: str) -> None:
    with pytest.raises(HpcragError, match=message):
        _build(tmp_path, BASE, **options)
    _assert_nothing_left(tmp_path)


def test_bad_vector_files(tmp_path: Path) -> None:
    options = BuildOptions(nlist=4, nshards=1)
    with pytest.raises(HpcragError, match="vectors file not found"):
        build_index(tmp_path / "nope.npy", tmp_path / "out", options)
    np.save(tmp_path / "ints.npy", np.arange(10).reshape(5, 2))
    with pytest.raises(HpcragError, match="must be float32 or float16, found int64"):
        build_index(tmp_path / "ints.npy", tmp_path / "out", options)
    (tmp_path / "v.csv").write_text("1,2\n")
    with pytest.raises(HpcragError, match=r"unsupported vectors format '\.csv'"):
        build_index(tmp_path / "v.csv", tmp_path / "out", options)
    np.save(tmp_path / "ids.npy", np.zeros(800, dtype=np.int64))
    np.save(tmp_path / "base.npy", BASE)
    with pytest.raises(HpcragError, match="ids must be unique"):
        build_index(tmp_path / "base.npy", tmp_path / "out", options, tmp_path / "ids.npy")
    _assert_nothing_left(tmp_path)


def test_existing_output_is_kept_unless_overwrite(tmp_path: Path) -> None:
    out = _build(tmp_path, BASE)
    before = (out / "manifest.json").read_text()
    with pytest.raises(HpcragError, match="already exists; choose another --out or pass --overwrite"):
        _build(tmp_path, BASE)
    assert (out / "manifest.json").read_text() == before
    _build(tmp_path, BASE, overwrite=True, seed=7)
    assert (out / "manifest.json").read_text() != before
    assert not list(tmp_path.glob(".out.*"))


@pytest.fixture(scope="module")
def opened(tmp_path_factory: pytest.TempPathFactory) -> DistributedIndex:
    return DistributedIndex.open(build_small(tmp_path_factory.mktemp("bad"), BASE, nlist=8, nshards=2))


@pytest.mark.parametrize(
    ("queries", "k", "nprobe", "message"),
    [
        (np.zeros((3, 7), np.float32), 5, 2, "dimension 7 does not match the index dimension 8"),
        (np.full((2, 8), np.nan, np.float32), 5, 2, "queries row 0 holds NaN or inf"),
        (np.ones((2, 8), np.float32), 0, 2, "k must be >= 1, got 0"),
        (np.ones((2, 8), np.float32), -3, 2, "k must be >= 1, got -3"),
        (np.ones((2, 8), np.float32), 5, 9, r"nprobe must be between 1 and nlist \(8\), got 9"),
        (np.ones((2, 8), np.float32), 5, 0, r"nprobe must be between 1 and nlist \(8\), got 0"),
        (np.ones((0, 8), np.float32), 5, 2, r"expected a non-empty \(nq, 8\) array"),
    ],
)
def test_bad_searches(opened: DistributedIndex, queries, k: int, nprobe: int, message: str) -> None:
    with pytest.raises(HpcragError, match=message):
        opened.search(queries, k=k, nprobe=nprobe)
