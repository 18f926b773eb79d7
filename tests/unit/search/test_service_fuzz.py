"""The search service's OpenAPI document, and thousands of generated requests against the real
service (one process, real HTTP, a tiny index), searches and updates mixed: never a 5xx, every 4xx of
an API route says why, never a traceback in the log, and the service still alive and answering
afterwards, in the state its log replays to."""

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

from hpcrag.search import DistributedIndex
from hpcrag.search.inputs import ROUTING_FIELDS
from hpcrag.search.openapi import openapi_document
from hpcrag.search.service import NPZ, SearchService, ServiceOptions
from hpcrag.search.synthetic import clustered
from tests.search_helpers import build_small
from tests.unit.search.service_helpers import AUTH, client, running_service

BASE, QUERIES = clustered(400, 10, 4, clusters=4, seed=3)
DIM = 4
FUZZ_SECONDS = 60
MAX_UPDATE_ROWS = 16
UPDATES = ("/add", "/upsert", "/delete")
API = {("POST", "/search"), *(("POST", path) for path in UPDATES), ("GET", "/metrics")}


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
    options = ServiceOptions(
        port=0,
        max_queries=64,
        max_body_bytes=256 * 1024,
        max_k=50,
        max_wait_s=0.0,
        max_update_rows=MAX_UPDATE_ROWS,
    )
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
    assert routes == {
        ("/search", "post"),
        ("/add", "post"),
        ("/upsert", "post"),
        ("/delete", "post"),
        ("/health", "get"),
        ("/metrics", "get"),
        ("/openapi.json", "get"),
    }
    search = document["paths"]["/search"]["post"]
    assert search["security"] == [{"bearer": []}]
    fields = search["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert fields["k"]["maximum"] == 50
    assert fields["strategy"]["enum"] == ["auto", "ivf", "exact"]
    assert (fields["min_seq"]["type"], fields["min_seq"]["minimum"]) == ("integer", 0)
    assert fields["filter"]["type"] == "object"
    npy_parameters = {"k", "nprobe", "filter", "strategy", "min_seq", *ROUTING_FIELDS}
    assert {p["name"] for p in search["parameters"]} == npy_parameters
    answer = search["responses"]["200"]["content"]["application/json"]["schema"]
    assert {"strategy", "seq"} <= set(answer["required"])
    assert set(search["responses"]) == {"200", "400", "401", "413", "503"}
    for path in UPDATES:
        update = document["paths"][path]["post"]
        assert update["security"] == [{"bearer": []}]
        assert set(update["requestBody"]["content"]) == {"application/json", "application/x-npz"}
        body = update["requestBody"]["content"]["application/json"]["schema"]
        assert body["properties"]["ids"]["maxItems"] == MAX_UPDATE_ROWS
        assert set(update["responses"]) == {"200", "400", "401", "413", "503"}
        answer = update["responses"]["200"]["content"]["application/json"]["schema"]
        assert set(answer["required"]) == {"seq", "added", "replaced", "deleted", "unknown_ids", "declared"}
    assert set(
        document["paths"]["/add"]["post"]["requestBody"]["content"]["application/json"]["schema"][
            "properties"
        ]
    ) == {"vectors", "ids", "attributes", "declare"}
    health = document["paths"]["/health"]["get"]["responses"]["200"]["content"]["application/json"]
    assert {"seq", "live_vectors", "attributes"} <= set(health["schema"]["properties"])


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
ATTRIBUTES = ["src", "n", "day", "nope", "and", "bad name", ""]
conditions = json_values | st.dictionaries(
    st.sampled_from(["eq", "ne", "in", "gt", "gte", "lt", "lte", "bogus"]),
    json_values | st.lists(st.integers(-3, 3) | st.text(max_size=4), max_size=4),
    max_size=2,
)
filters = st.recursive(
    st.dictionaries(st.sampled_from(ATTRIBUTES), conditions, max_size=2),
    lambda children: st.dictionaries(
        st.sampled_from(["and", "or", "not"]), st.lists(children, max_size=3) | children, max_size=2
    ),
    max_leaves=8,
)
near_valid_json = st.fixed_dictionaries(
    {"queries": st.one_of(st.lists(vectors, min_size=1, max_size=70), vectors, json_values)},
    optional={
        "k": st.one_of(st.integers(-5, 80), json_values),
        "nprobe": st.one_of(st.integers(-2, 6), json_values),
        "filter": filters | json_values,
        "strategy": st.sampled_from(["auto", "ivf", "exact", "EXACT", ""]) | json_values,
        "min_seq": st.integers(-2, 3) | json_values,
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
attribute_values = st.one_of(
    st.integers(-5, 5),
    st.sampled_from(["faq", "blog", "2024-01-01", "", "x" * 257, "\ud800"]),
    st.none(),
    json_values,
)
attribute_rows = st.none() | st.dictionaries(st.sampled_from(ATTRIBUTES), attribute_values, max_size=3)
declarations = st.dictionaries(
    st.sampled_from(ATTRIBUTES), st.sampled_from(["int", "str", "time", "float"]) | json_values, max_size=2
)
# Hypothesis favours small numbers: they become new ids here, and base ids (0..399) come later, so adds
# succeed first and collide later, upserts replace and deletes hit.
update_ids = st.integers(0, 600).map(lambda i: 600 - i)
finite_vectors = st.lists(st.floats(-100, 100, width=32), min_size=DIM, max_size=DIM)
# Hypothesis favours the first of sampled values: mostly the usual, sometimes the odd.
rarely = st.sampled_from([False, False, False, False, True])


def _damaged(draw: st.DrawFn, raw: bytes) -> bytes:
    """The bytes whole, or cut short, extended or with a few bytes overwritten."""
    cut = draw(st.sampled_from(["whole", "truncated", "extended", "mangled"]))
    if cut == "truncated":
        return raw[: draw(st.integers(0, len(raw)))]
    if cut == "extended":
        return raw + draw(st.binary(min_size=1, max_size=16))
    if cut == "mangled":
        at = draw(st.integers(0, len(raw) - 1))
        return raw[:at] + draw(st.binary(min_size=1, max_size=8)) + raw[at + 1 :]
    return raw


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
    return _damaged(draw, buffer.getvalue())


@st.composite
def update_json(draw: st.DrawFn, path: str) -> bytes:
    """A body of `path`, often valid (matching rows), else with a wrong or extra field."""
    rows = draw(st.integers(1, MAX_UPDATE_ROWS + 2))
    body: dict[str, Any] = {
        "ids": draw(st.lists(update_ids, min_size=rows, max_size=rows, unique=not draw(rarely)))
    }
    if path == "/delete":
        if draw(st.booleans()):
            body["strict"] = draw(st.booleans())
    else:
        rows_of = finite_vectors if not draw(rarely) else vectors
        body["vectors"] = draw(st.lists(rows_of, min_size=rows, max_size=rows))
        if draw(st.booleans()):
            body["attributes"] = draw(st.lists(attribute_rows, min_size=rows, max_size=rows))
        if draw(rarely):
            body["declare"] = draw(declarations)
    if draw(rarely):
        field = draw(st.sampled_from(["ids", "vectors", "attributes", "declare", "strict", "extra"]))
        body[field] = draw(json_values)
    return json.dumps(body).encode()


@st.composite
def update_npz(draw: st.DrawFn, path: str) -> tuple[bytes, list[tuple[str, str]]]:
    """An .npz body of `path` (often valid, else arrays of odd dtypes, shapes or names, or damaged
    bytes) and its query parameters."""
    rows = draw(st.integers(1, MAX_UPDATE_ROWS + 2)) if not draw(rarely) else 0
    ids = np.array(draw(st.lists(update_ids, min_size=rows, max_size=rows, unique=True)), dtype=np.int64)
    id_dtype = "<i8" if not draw(rarely) else draw(st.sampled_from(["<i4", "<u8", "<f8", "|b1", "<U3"]))
    if rows and draw(rarely):
        ids = -ids
    arrays: dict[str, np.ndarray] = {"ids": ids.astype(id_dtype)}
    if rows and draw(rarely):
        arrays["ids"] = arrays["ids"].reshape(-1, 1)
    if path != "/delete" or draw(rarely):
        shape = (rows, DIM) if not draw(rarely) else draw(st.sampled_from([(rows, DIM + 1), (DIM,)]))
        values = np.random.default_rng(draw(st.integers(0, 2**16))).normal(size=shape)
        if values.size and draw(rarely):
            values.flat[draw(st.integers(0, values.size - 1))] = draw(
                st.sampled_from([np.nan, np.inf, 1e30, 1e39])
            )
        dtype = "<f4" if not draw(rarely) else draw(st.sampled_from(["<f8", "<f2", "<i8", "<c8", "<U3"]))
        with np.errstate(over="ignore", invalid="ignore"):
            arrays["vectors"] = values.astype(dtype)
    if draw(rarely):
        listed = draw(st.lists(attribute_rows, min_size=rows, max_size=rows) | json_values)
        arrays["attributes"] = np.array(json.dumps(listed) if draw(st.booleans()) else "[{")
    if draw(rarely):
        arrays[draw(st.sampled_from(["extra", "vectors", "attributes"]))] = np.zeros(1)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    raw = buffer.getvalue() if not draw(rarely) else _damaged(draw, buffer.getvalue())
    params = (
        [] if not draw(rarely) else draw(st.sampled_from([[("strict", "1")], [("strict", "x")], [("z", "")]]))
    )
    return raw, params


query_parameters = st.lists(
    st.tuples(
        st.sampled_from(["k", "nprobe", "strategy", "min_seq", "z"]) | st.text(max_size=4),
        st.integers(-3, 60).map(str) | st.sampled_from(["exact", "ivf", "nope"]) | st.text(max_size=12),
    )
    | st.tuples(st.just("filter"), filters.map(json.dumps) | st.text(max_size=12)),
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
    st.sampled_from(["/health", "/metrics", "/openapi.json", "/search", *UPDATES, "/nope", "/search/x"]),
    auth_headers,
    st.binary(max_size=32),
)


def _check(response: httpx.Response, failures: list[str], statuses: Counter) -> None:
    """Count the status; a 5xx (but a 503 for a min_seq not reached yet) or a reasonless 4xx of an
    API route is a failure."""
    statuses[response.status_code] += 1
    request = response.request
    shown = f"{response.status_code} {request.method} {request.url}: {response.text[:300]}"
    if response.status_code == 503 and "Retry-After" in response.headers and "min_seq" in response.text:
        return
    if response.status_code >= 500:
        failures.append(shown)
    elif response.status_code >= 400 and (request.method, request.url.path) in API:
        try:
            reason = response.json()["error"]
        except (ValueError, KeyError, TypeError):
            reason = None
        if not isinstance(reason, str) or not reason.strip():
            failures.append(f"no reason: {shown}")


def _generated(case: Any) -> bytes:
    """A schemathesis case's body as JSON ("{}" for a body it left out)."""
    return json.dumps(case.body).encode() if isinstance(case.body, dict | list) else b"{}"


def test_thousands_of_generated_requests(service: tuple) -> None:
    running, thread, records = service
    schema = schemathesis.openapi.from_dict(openapi_document(running.options, 4))
    operation = schema["/search"]["POST"]
    update_cases = st.one_of(*(schema[path]["POST"].as_strategy() for path in UPDATES))
    update_bodies = st.sampled_from(UPDATES).flatmap(
        lambda path: st.tuples(st.just(path), update_json(path), update_npz(path))
    )
    failures: list[str] = []
    statuses: Counter = Counter()
    started = time.monotonic()
    http = client(running)

    @settings(
        max_examples=250,
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
        update_case=update_cases,
        update=update_bodies,
    )
    def fuzz(
        case: Any,
        body: bytes,
        npy: bytes,
        query: list,
        auth: dict,
        other: tuple,
        update_case: Any,
        update: tuple,
    ) -> None:
        if time.monotonic() - started > FUZZ_SECONDS:
            return
        json_type = {"Content-Type": "application/json"}
        npz_type = {"Content-Type": NPZ}
        path, update_body, (npz, npz_params) = update
        requests = [
            ("POST", "/search", {**json_type, **AUTH}, _generated(case), case.query or {}),
            ("POST", "/search", {**json_type, **auth}, body, {}),
            ("POST", "/search", {"Content-Type": "application/x-npy", **AUTH}, npy, query),
            (other[0], other[1], {**other[2]}, other[3], {}),
            (
                "POST",
                update_case.path,
                {**json_type, **AUTH},
                _generated(update_case),
                update_case.query or {},
            ),
            ("POST", path, {**json_type, **AUTH}, update_body, {}),
            ("POST", path, {**npz_type, **AUTH}, npz, npz_params),
        ]
        for method, route, headers, content, params in requests:
            response = http.request(method, route, headers={**headers}, content=content, params=params)
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
    assert sent >= 1500, f"only {sent} requests in {elapsed:.0f} s"
    assert statuses[200] >= 100 and statuses[400] >= 100 and statuses[401] >= 50, statuses
    assert thread.is_alive()
    with client(running) as checker:
        answer = checker.post("/search", json={"queries": QUERIES[:3].tolist(), "k": 5, "strategy": "exact"})
        assert answer.status_code == 200 and np.array(answer.json()["ids"]).shape == (3, 5)
        health = checker.get("/health").json()
    assert health["vectors"] == 400
    # Which bodies the strategies generate varies with the tests run before this one (37 to 67
    # updates accepted in the runs seen): the bound only catches updates almost all refused.
    assert health["seq"] >= 20, "the generated updates were almost all refused"
    # The state the service answers from is the one its update log replays to.
    replayed = DistributedIndex.open(running.index.root)
    try:
        assert (replayed.seq, replayed.ntotal) == (health["seq"], health["live_vectors"])
        expected = replayed.search(QUERIES[:3], k=5, strategy="exact")
    finally:
        replayed.close()
    assert answer.json()["seq"] == health["seq"]
    np.testing.assert_array_equal(np.array(answer.json()["ids"]), expected.ids)
