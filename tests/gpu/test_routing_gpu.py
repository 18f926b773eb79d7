"""The router and top-k selection on CuPy arrays against their NumPy paths (which the unit tier
checks): the same probes, shards and order, on inputs with empty lists, ties and short rows."""

from __future__ import annotations

import os

import numpy as np
import pytest

from hpcrag.search.metric import Metric
from hpcrag.search.router import Router
from hpcrag.search.topk import select_topk

pytestmark = pytest.mark.gpu


def _rng() -> np.random.Generator:
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"seed {seed}")
    return np.random.default_rng(seed)


@pytest.mark.parametrize("metric", [Metric.L2, Metric.IP])
@pytest.mark.parametrize("route", [(None, None), (2, None), (None, 0.3), (2, 0.3)])
def test_the_device_router_routes_like_the_host_router(metric: Metric, route: tuple) -> None:
    """Scores both sides compute exactly (unit centroids, queries on a grid, distinct per query), so
    a difference in order is the code's, not float rounding's."""
    import cupy

    rng = _rng()
    nlist = 64
    centroids = np.eye(nlist, dtype=np.float32)
    list_shard = rng.integers(0, 4, size=nlist)
    held = rng.random(nlist) > 0.25  # a quarter of the lists never held a row
    queries = np.stack([rng.permutation(nlist) - nlist // 2 for _ in range(300)]).astype(np.float32) / 64
    max_shards, margin = route
    host = Router(centroids, metric, list_shard, np, held)
    device = Router(centroids, metric, list_shard, cupy, held)
    want = host.route(queries, 8, max_shards, margin)
    got = device.route(cupy.asarray(queries), 8, max_shards, margin)
    assert isinstance(got, cupy.ndarray)
    np.testing.assert_array_equal(cupy.asnumpy(got), want)
    assert held[want[want >= 0]].all() and (want >= 0).any()
    device.hold(np.flatnonzero(~held))  # rows arrive in every empty list: nothing is dropped now
    host.hold(np.flatnonzero(~held))
    np.testing.assert_array_equal(
        cupy.asnumpy(device.route(cupy.asarray(queries), 8, max_shards, margin)),
        host.route(queries, 8, max_shards, margin),
    )


@pytest.mark.parametrize("larger_is_better", [True, False])
@pytest.mark.parametrize("width", [5, 10, 40])
def test_device_select_topk_equals_the_host(larger_is_better: bool, width: int) -> None:
    """Narrower than k (padded), exactly k (rows in order returned as given), wider (selected), with
    ties at the k-th score and empty slots."""
    import cupy

    rng = _rng()
    k = 10
    worst = float("-inf") if larger_is_better else float("inf")
    scores = rng.standard_normal((500, width)).astype(np.float32).round(1)  # rounding makes ties
    ids = rng.integers(0, 10**6, size=(500, width))
    ids[rng.random((500, width)) < 0.1] = -1
    scores[ids < 0] = worst
    order = np.argsort(-scores if larger_is_better else scores, axis=1, kind="stable")[:250]
    scores[:250] = np.take_along_axis(scores[:250], order, axis=1)  # half the rows come in order
    ids[:250] = np.take_along_axis(ids[:250], order, axis=1)
    want = select_topk(scores.copy(), ids.copy(), k, larger_is_better, worst)
    got = select_topk(cupy.asarray(scores), cupy.asarray(ids), k, larger_is_better, worst)
    np.testing.assert_array_equal(cupy.asnumpy(got[1]), want[1])
    np.testing.assert_array_equal(cupy.asnumpy(got[0]), want[0])
