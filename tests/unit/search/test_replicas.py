"""ReplicaSet over two real services (threads of this process, real HTTP) of one index directory:
spreading, failover without a failed query, the circuit opening and closing again, read-your-writes
through the shared update log, and a refused request not retried."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from hpcrag.search import DistributedIndex
from hpcrag.search.client import RequestRefused, ServiceUnavailable
from hpcrag.search.replicas import ReplicaRegistration, ReplicaSet
from hpcrag.search.service import ServiceOptions
from hpcrag.search.synthetic import clustered
from hpcrag.serve.registry import INDEX_TIER, Endpoint, Registry
from hpcrag.serve.supervisor import free_port
from tests.integration.helpers import eventually
from tests.search_helpers import build_small
from tests.unit.search.service_helpers import TOKEN, running_service

BASE, QUERIES = clustered(1500, 20, 16, clusters=8, seed=4)


def row(name: str, url: str) -> Endpoint:
    return Endpoint("slurm", "nyc", name, INDEX_TIER, "idx", "g", "healthy", url=url, secret=TOKEN)


@pytest.fixture
def two_replicas(tmp_path: Path):
    root = build_small(tmp_path, BASE, metric="l2")
    options = ServiceOptions(port=0, max_wait_s=0.0)
    with running_service(root, options) as (first, _), running_service(root, replace(options)) as (second, _):
        yield root, first, second


def test_spreads_fails_over_without_a_failed_query_and_closes_the_circuit_again(two_replicas) -> None:
    root, first, second = two_replicas
    rows = [row("a", first.url), row("b", second.url)]
    expected = DistributedIndex.open(root).search(QUERIES, k=5, nprobe=16)
    front = ReplicaSet(lambda: rows, "g", failures_to_open=1, open_s=0.2, refresh_s=0.0, timeout=5)
    for _ in range(4):
        np.testing.assert_array_equal(front.search(QUERIES, k=5, nprobe=16).ids, expected.ids)
    assert [r.answered for r in front.replicas()] == [2, 2], "round robin over both"

    first.stop()
    answers = [front.search(QUERIES, k=5, nprobe=16) for _ in range(6)]
    assert all((a.ids == expected.ids).all() for a in answers), "no query failed while one replica was down"
    assert front.stats.failed == 0 and front.stats.circuits_opened == 1
    dead = next(r for r in front.replicas() if r.url == first.url)
    assert dead.circuit.is_open and dead.failed == 1

    # A requeued replica comes back on a port of its own: its circuit is open until a probe succeeds.
    port = free_port()
    rows[0] = row("a", f"http://127.0.0.1:{port}")
    front.search(QUERIES, k=5, nprobe=16)
    back = next(r for r in front.replicas() if r.name == "nyc/a")
    assert back.circuit.is_open and front.stats.failed == 0
    with running_service(root, ServiceOptions(port=port, max_wait_s=0.0)):
        eventually(lambda: front.search(QUERIES, k=5, nprobe=16) and not back.circuit.is_open)
        answered = back.answered
        for _ in range(4):
            np.testing.assert_array_equal(front.search(QUERIES, k=5, nprobe=16).ids, expected.ids)
        assert back.answered == answered + 2, "the replica that came back takes its share again"
    assert any("closed" in event for event in front.stats.events)
    front.close()


def test_updates_through_one_replica_are_read_from_the_other(two_replicas) -> None:
    _, first, second = two_replicas
    front = ReplicaSet(lambda: [row("a", first.url), row("b", second.url)], "g", refresh_s=0.0, timeout=5)
    vector = QUERIES[:1] + 0.001
    written = front.add(vector, [90_001])
    assert written.seq == 1 and front.written_seq == 1
    for _ in range(4):  # each replica in turn; the one that did not write reads the shared log first
        result = front.search(vector, k=1, nprobe=16)
        assert result.ids[0, 0] == 90_001 and result.seq >= 1
    deleted = front.delete([90_001])
    assert deleted.deleted == 1 and deleted.seq == 2
    assert all(front.search(vector, k=1, nprobe=16).ids[0, 0] != 90_001 for _ in range(4))
    front.close()


def test_a_refused_request_is_not_retried_and_no_replica_is_a_clear_error(two_replicas) -> None:
    _, first, second = two_replicas
    front = ReplicaSet(lambda: [row("a", first.url), row("b", second.url)], "g", refresh_s=0.0)
    with pytest.raises(RequestRefused, match="dimension 3 does not match"):
        front.search(np.ones((1, 3)), k=1)
    assert front.stats.retries == 0 and all(not r.circuit.is_open for r in front.replicas())
    empty = ReplicaSet(list, "nobody")
    with pytest.raises(ServiceUnavailable, match=r"no replica of index group 'nobody'.*none registered"):
        empty.search(QUERIES[:1])
    front.close()


def test_a_registered_replica_is_found_through_the_registry_and_leaves_it(
    tmp_path: Path, two_replicas
) -> None:
    root, first, _ = two_replicas
    registry = Registry(tmp_path / "registry.sqlite")
    registration = ReplicaRegistration(registry, "docs", "sf", root, first.url, first.token, ranks=1)
    front = ReplicaSet.from_registry(tmp_path / "registry.sqlite", "docs", refresh_s=0.0)
    assert [r.url for r in front.replicas()] == [first.url]
    assert front.search(QUERIES[:2], k=3, nprobe=4).ids.shape == (2, 3)
    registration.close()
    assert front.replicas() == []
    (stopped,) = registry.find(tier=INDEX_TIER)
    assert stopped.state == "stopped" and stopped.secret is None
    front.close()
