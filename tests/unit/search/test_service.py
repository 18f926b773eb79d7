"""The search service in one process over real HTTP: JSON and .npy forms, batching, errors, metrics."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from hpcrag.errors import HpcragError
from hpcrag.search.client import SearchClient
from hpcrag.search.service import SearchService, ServiceOptions
from hpcrag.search.synthetic import clustered
from tests.search_helpers import build_small
from tests.unit.search.service_helpers import AUTH, TOKEN, running_service

BASE, QUERIES = clustered(2000, 40, 16, clusters=8, seed=21)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SearchService]:
    index_dir = build_small(tmp_path_factory.mktemp("svc"), BASE, nlist=16, nshards=2)
    endpoint = tmp_path_factory.mktemp("endpoint") / "endpoint.json"
    options = ServiceOptions(port=0, max_batch=64, max_wait_s=0.05, max_k=4096, endpoint_file=endpoint)
    with running_service(index_dir, options) as (running, _):
        yield running


def test_json_and_binary_answers_equal_the_direct_search(service: SearchService) -> None:
    direct = service.index.search(QUERIES, k=7, nprobe=4)
    response = httpx.post(
        f"{service.url}/search", json={"queries": QUERIES.tolist(), "k": 7, "nprobe": 4}, headers=AUTH
    )
    assert response.status_code == 200
    assert np.array(response.json()["ids"]).tolist() == direct.ids.tolist()
    np.testing.assert_allclose(np.array(response.json()["distances"]), direct.distances, rtol=1e-6)
    with SearchClient(service.url, token=TOKEN) as client:
        binary = client.search(QUERIES, k=7, nprobe=4)
        assert client.health()["vectors"] == 2000
    np.testing.assert_array_equal(binary.ids, direct.ids)
    np.testing.assert_array_equal(binary.distances, direct.distances)
    np.testing.assert_array_equal(binary.shards_touched, direct.shards_touched)


def test_missing_neighbours_are_null_in_json(service: SearchService) -> None:
    response = httpx.post(
        f"{service.url}/search",
        json={"queries": [QUERIES[0].tolist()], "k": 2500, "nprobe": 16},
        headers=AUTH,
    )
    body = response.json()
    assert body["ids"][0][-1] == -1 and body["distances"][0][-1] is None
    assert sum(1 for i in body["ids"][0] if i >= 0) == 2000


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"queries": [[1.0, 2.0]], "k": 3, "nprobe": 1}, "dimension 2 does not match the index dimension 16"),
        ({"queries": [[1.0] * 16], "k": 0, "nprobe": 1}, "k must be >= 1"),
        ({"queries": [[1.0] * 16], "k": 3, "nprobe": 17}, "nprobe must be between 1 and nlist"),
        ({"queries": [[1.0] * 16], "k": 5000, "nprobe": 1}, "exceeds this service's limit of 4096"),
        ({"queries": [[1.0] * 15 + ["x"]], "k": 3}, 'row 0 holds "x": vectors hold numbers only'),
        ({"k": 3}, "expected a JSON object"),
    ],
)
def test_bad_requests_are_400_with_the_reason(service: SearchService, payload: dict, message: str) -> None:
    response = httpx.post(f"{service.url}/search", json=payload, headers=AUTH)
    assert response.status_code == 400
    assert message in response.json()["error"]


def test_nan_in_binary_queries_is_refused_by_the_client(service: SearchService) -> None:
    queries = QUERIES[:2].copy()
    queries[1, 0] = np.nan
    with (
        SearchClient(service.url, token=TOKEN) as client,
        pytest.raises(HpcragError, match="400: queries row 1 holds NaN"),
    ):
        client.search(queries, k=3, nprobe=2)


def test_concurrent_requests_share_batches_and_metrics_count_them(service: SearchService) -> None:
    before = service.metrics.batch_size.collect()[0]
    batches_before = next(s.value for s in before.samples if s.name.endswith("_count"))
    with SearchClient(service.url, token=TOKEN) as client, ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda i: client.search(QUERIES[i], k=5, nprobe=4), range(32)))
    direct = service.index.search(QUERIES[:32], k=5, nprobe=4)
    assert [r.ids[0].tolist() for r in results] == direct.ids.tolist()
    after = service.metrics.batch_size.collect()[0]
    batches = next(s.value for s in after.samples if s.name.endswith("_count")) - batches_before
    assert 1 <= batches < 32, "32 concurrent one-query requests should have been batched"
    text = httpx.get(f"{service.url}/metrics", headers=AUTH).text
    assert 'hpcrag_search_requests_total{format="npy",status="200"}' in text
    assert "hpcrag_index_vectors 2000.0" in text


def test_metrics_count_the_queries_each_shard_searched(service: SearchService) -> None:
    def per_shard() -> dict[str, float]:
        family = service.metrics.shard_queries.collect()[0]
        return {s.labels["shard"]: s.value for s in family.samples if s.name.endswith("_total")}

    before = per_shard()
    with SearchClient(service.url, token=TOKEN) as client:
        client.search(QUERIES, k=5, nprobe=8)
    direct = service.index.search(QUERIES, k=5, nprobe=8)
    after = per_shard()
    counted = [after.get(str(shard), 0.0) - before.get(str(shard), 0.0) for shard in range(2)]
    assert counted == direct.shard_queries.tolist()
    assert sum(counted) == direct.shards_touched.sum() > 0


def test_endpoint_file_names_the_url_and_token_for_its_owner_only(service: SearchService) -> None:
    import json

    endpoint = Path(service.options.endpoint_file)
    assert json.loads(endpoint.read_text()) == {"url": service.url, "token": TOKEN}
    assert endpoint.stat().st_mode & 0o777 == 0o600
    with SearchClient.from_endpoint_file(endpoint) as client:
        assert client.health()["vectors"] == 2000
