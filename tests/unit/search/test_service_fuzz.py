"""The search service's OpenAPI document, and thousands of generated requests against the real
service (one process, real HTTP, a tiny index): never a 5xx, never a traceback in the log, and the
service still alive and answering afterwards."""

from __future__ import annotations

import io
import json
import logging
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openapi_spec_validator import validate as validate_spec

from hpcrag.search.openapi import openapi_document
from hpcrag.search.service import SearchService, ServiceOptions
from hpcrag.search.synthetic import clustered
from tests.search_helpers import build_small
from tests.unit.search.service_helpers import AUTH, client, running_service

BASE, QUERIES = clustered(400, 10, 4, clusters=4, seed=3)
DIM = 4
FUZZ_SECONDS = 60


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SearchService, Any, _Records]]:
    index_dir = build_small(tmp_path_factory.mktemp("fuzz"), BASE, nlist=4, nshards=2)
    records = _Records()
    logging.getLogger().addHandler(records)
    options = ServiceOptions(port=0, max_queries=64, max_body_bytes=256 * 1024, max_k=50, max_wait_s=0.0)
    try:
        with running_service(index_dir, options) as (running, thread):
            yield running, thread, records
    finally:
        logging.getLogger().removeHandler(records)


def test_document_is_valid_openapi_and_describes_every_route(service: tuple) -> None:
    running, _, _ = service
    with client(running) as http:
        document = http.get("/openapi.json").json()
    validate_spec(document)
    assert document == json.loads(json.dumps(openapi_document(running.options, 4)))
    routes = {(path, method) for path, item in document["paths"].items() for method in item}
    assert routes == {("/search", "post"), ("/health", "get"), ("/metrics", "get"), ("/openapi.json", "get")}
    search = document["paths"]["/search"]["post"]
    assert search["security"] == [{"bearer": []}]
    assert search["requestBody"]["content"]["application/json"]["schema"]["properties"]["k"]["maximum"] == 50
    assert set(search["responses"]) == {"200", "400", "401", "413", "503"}


numbers = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([1e308, -1e308, 3.5e38, 1e-320]),
)
json_values = st.recursive(
    st.none() | st.booleans() | numbers | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=30,
)
vectors = st.lists(numbers, min_size=DIM, max_size=DIM)
near_valid_json = st.fixed_dictionaries(
    {"queries": st.one_of(st.lists(vectors, min_size=1, max_size=70), vectors, json_values)},
    optional={
        "k": st.one_of(st.integers(-5, 80), json_values),
        "nprobe": st.one_of(st.integers(-2, 6), json_values),
        "extra": json_values,
    },
)
raw_json = st.one_of(
    near_valid_json.map(lambda body: json.dumps(body).encode()),
    json_values.map(lambda value: json.dumps(value).encode()),
    st.binary(max_size=64),
    st.integers(1, 3000).map(lambda depth: b"[" * depth + b"]" * depth),
    st.sampled_from([b'{"queries": [[NaN, 1, 2, 3]]}', b'{"queries": [[1,2,3,4]], "k": Infinity}']),
)


@st.composite
def npy_bodies(draw: st.DrawFn) -> bytes:
    dtype = draw(st.sampled_from(["<f4", "<f2", "<f8", "<i8", "|u1", "|b1", "<c8", "<U3", ">f4"]))
    shape = draw(st.lists(st.integers(0, 70), min_size=0, max_size=3).map(tuple))
    if int(np.prod(shape)) * np.dtype(dtype).itemsize > 64 * 1024:
        shape = (1, DIM)
    array = np.zeros(shape, dtype=dtype)
    if array.size and array.dtype.kind == "f":
        with np.errstate(over="ignore"):
            array.flat[draw(st.integers(0, array.size - 1))] = draw(
                st.sampled_from([np.nan, np.inf, 7.0, 1e30])
            )
    buffer = io.BytesIO()
    np.save(buffer, array)
    raw = buffer.getvalue()
    cut = draw(st.sampled_from(["whole", "truncated", "extended", "mangled"]))
    if cut == "truncated":
        return raw[: draw(st.integers(0, len(raw)))]
    if cut == "extended":
        return raw + draw(st.binary(min_size=1, max_size=16))
    if cut == "mangled":
        at = draw(st.integers(0, len(raw) - 1))
        return raw[:at] + draw(st.binary(min_size=1, max_size=8)) + raw[at + 1 :]
    return raw


query_parameters = st.lists(
    st.tuples(
        st.sampled_from(["k", "nprobe", "z"]) | st.text(max_size=4),
        st.integers(-3, 60).map(str) | st.text(max_size=12),
    ),
    max_size=3,
)
auth_headers = st.sampled_from(
    [
        AUTH,
        {},
        {"Authorization": "Bearer nope"},
        {"Authorization": "bearer"},
        {"Authorization": "Bearer \u00e9".encode()},
    ]
)
other_requests = st.tuples(
    st.sampled_from(["GET", "POST", "PUT", "DELETE"]),
    st.sampled_from(["/health", "/metrics", "/openapi.json", "/search", "/nope", "/search/x"]),
    auth_headers,
    st.binary(max_size=32),
)


def _check(response: httpx.Response, failures: list[str], statuses: Counter) -> None:
    statuses[response.status_code] += 1
    if response.status_code >= 500:
        failures.append(
            f"{response.status_code} {response.request.method} {response.request.url}: {response.text}"
        )


def test_thousands_of_generated_requests(service: tuple) -> None:
    running, thread, records = service
    operation = schemathesis.openapi.from_dict(openapi_document(running.options, 4))["/search"]["POST"]
    failures: list[str] = []
    statuses: Counter = Counter()
    started = time.monotonic()
    http = client(running)

    @settings(
        max_examples=700,
        deadline=2000,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(
        case=operation.as_strategy(),
        body=raw_json,
        npy=npy_bodies(),
        query=query_parameters,
        auth=auth_headers,
        other=other_requests,
    )
    def fuzz(case: Any, body: bytes, npy: bytes, query: list, auth: dict, other: tuple) -> None:
        if time.monotonic() - started > FUZZ_SECONDS:
            return
        generated = json.dumps(case.body).encode() if isinstance(case.body, dict | list) else b"{}"
        requests = [
            ("POST", "/search", {"Content-Type": "application/json", **AUTH}, generated, case.query or {}),
            ("POST", "/search", {"Content-Type": "application/json", **auth}, body, {}),
            ("POST", "/search", {"Content-Type": "application/x-npy", **AUTH}, npy, query),
            (other[0], other[1], {**other[2]}, other[3], {}),
        ]
        for method, path, headers, content, params in requests:
            response = http.request(method, path, headers={**headers}, content=content, params=params)
            _check(response, failures, statuses)

    try:
        fuzz()
    finally:
        http.close()
    elapsed = time.monotonic() - started
    assert not failures, failures[:5]
    tracebacks = [r for r in records.records if r.exc_info or "Traceback" in r.getMessage()]
    assert not tracebacks, [logging.Formatter().format(r) for r in tracebacks[:3]]
    sent = sum(statuses.values())
    assert sent >= 2000, f"only {sent} requests in {elapsed:.0f} s"
    assert statuses[200] >= 100 and statuses[400] >= 100 and statuses[401] >= 100, statuses
    assert thread.is_alive()
    with client(running) as checker:
        answer = checker.post("/search", json={"queries": QUERIES[:3].tolist(), "k": 5, "nprobe": 4})
        assert answer.status_code == 200 and np.array(answer.json()["ids"]).shape == (3, 5)
        assert checker.get("/health").json()["vectors"] == 400
