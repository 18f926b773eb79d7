"""Helpers for search tests: small indexes, and comparing neighbour lists "except exact ties"."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hpcrag.search import BuildOptions, Metric, build_index, layout

TIE_TOLERANCE = 1e-4


def build_small(
    tmp_path: Path,
    base: np.ndarray,
    nlist: int = 16,
    nshards: int = 4,
    metric: str = "ip",
    dtype: str = "float32",
    name: str = "index",
) -> Path:
    source = tmp_path / f"{name}-base.npy"
    np.save(source, base)
    out = tmp_path / name
    build_index(source, out, BuildOptions(nlist=nlist, nshards=nshards, metric=Metric(metric), dtype=dtype))
    return out


def centroids_of(index_dir: Path) -> np.ndarray:
    return np.load(Path(index_dir) / layout.CENTROIDS)


def assert_same_neighbours(
    ids: np.ndarray, distances: np.ndarray, ref_ids: np.ndarray, ref_distances: np.ndarray
) -> None:
    """Same neighbours row by row, except ids whose distance ties (within tolerance) with the k-th."""
    assert ids.shape == ref_ids.shape
    for row in range(ids.shape[0]):
        found, expected = ids[row], ref_ids[row]
        assert ((found < 0) == (expected < 0)).all(), f"row {row}: {found} vs {expected}"
        valid = found >= 0
        np.testing.assert_allclose(
            distances[row][valid], ref_distances[row][valid], rtol=TIE_TOLERANCE, atol=TIE_TOLERANCE
        )
        differing = set(found[valid].tolist()) ^ set(expected[valid].tolist())
        if differing:
            boundary = distances[row][valid][-1]
            by_id = dict(zip(found.tolist(), distances[row].tolist(), strict=True))
            by_id.update(zip(expected.tolist(), ref_distances[row].tolist(), strict=True))
            for neighbour in differing:
                assert abs(by_id[neighbour] - boundary) <= TIE_TOLERANCE * max(1.0, abs(boundary)), (
                    f"row {row}: id {neighbour} differs and is not tied with the k-th distance"
                )
