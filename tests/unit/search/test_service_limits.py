"""Issue 12 item 6, each defect as a regression test: the search service is closed by default, reads
no more than its limits, refuses every malformed field with a 400 naming it, and a large request does
not hold up a small one."""

from __future__ import annotations

import io
import json
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from hpcrag.search.service import MIB, SearchService, ServiceOptions
from hpcrag.search.synthetic import clustered
from tests.search_helpers import build_small
from tests.unit.search.service_helpers import AUTH, client, running_service

BASE, QUERIES = clustered(2000, 40, 16, clusters=8, seed=21)
ONE = QUERIES[0].tolist()


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_small(tmp_path_factory.mktemp("limits"), BASE, nlist=16, nshards=2)


@pytest.fixture(scope="module")
def service(index_dir: Path) -> Iterator[SearchService]:
    options = ServiceOptions(port=0, max_queries=100, max_body_bytes=MIB, max_k=64)
    with running_service(index_dir, options) as (running, _):
        yield running


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def npy_header(shape: tuple[int, ...]) -> bytes:
    """Only the header of a float32 .npy of `shape`: what a liar sends."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def test_the_default_is_localhost_only() -> None:
    assert ServiceOptions().host == "127.0.0.1"


@pytest.mark.parametrize("path", ["/search", "/metrics"])
@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": "Basic dXNlcjpwYXNz"}],
)
def test_search_and_metrics_need_the_token(service: SearchService, path: str, headers: dict) -> None:
    method = "POST" if path == "/search" else "GET"
    response = httpx.request(method, service.url + path, json={"queries": [ONE]}, headers=headers)
    assert response.status_code == 401
    assert "Authorization: Bearer TOKEN" in response.json()["error"]
    assert "endpoint file" in response.json()["error"]
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_the_scheme_is_case_insensitive(service: SearchService) -> None:
    token = AUTH["Authorization"].split()[1]
    response = httpx.post(
        f"{service.url}/search", json={"queries": [ONE]}, headers={"Authorization": f"bearer {token}"}
    )
    assert response.status_code == 200


def test_health_without_the_token_reveals_nothing(service: SearchService) -> None:
    assert httpx.get(f"{service.url}/health").json() == {"status": "ok"}
    with client(service) as http:
        assert http.get("/health").json()["vectors"] == 2000


def test_public_metrics_option(index_dir: Path) -> None:
    with running_service(index_dir, ServiceOptions(port=0, public_metrics=True)) as (running, _):
        assert httpx.get(f"{running.url}/metrics").status_code == 200
        assert httpx.post(f"{running.url}/search", json={"queries": [ONE]}).status_code == 401


def test_a_declared_oversized_body_is_refused_before_it_is_sent(service: SearchService) -> None:
    """Headers announcing 10 GB and no body at all: the 413 comes at once, nothing was read."""
    host, port = service.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(
            b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-npy\r\n"
            + f"Authorization: {AUTH['Authorization']}\r\nContent-Length: {10 * 1024**3}\r\n\r\n".encode()
        )
        answer = sock.recv(65536).decode()  # no body was sent: the answer came from the headers alone
    assert answer.startswith("HTTP/1.1 413")
    assert f"limit of {MIB} bytes (--max-body-mb)" in answer


def raw_exchange(service: SearchService, request: bytes) -> bytes:
    host, port = service.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):  # until the service closes (the request says Connection: close)
            answer += chunk
    return answer


@pytest.mark.parametrize(
    "request_line",
    [b"GET /health HTTP/1.1", b"GET /openapi.json HTTP/1.1", b"POST /search HTTP/1.1"],
)
@pytest.mark.parametrize("expect", [b"\xff\xfe", b"nonsense", b"100-continue"])
def test_any_expect_header_is_not_a_500(
    service: SearchService, request_line: bytes, expect: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """aiohttp's own Expect handling answered a non-UTF-8 value with a 500 and a UnicodeEncodeError
    traceback; an unknown expectation is now ignored (RFC 9110 allows it)."""
    body = json.dumps({"queries": [ONE]}).encode() if request_line.startswith(b"POST") else b""
    headers = f"Authorization: {AUTH['Authorization']}\r\nContent-Type: application/json\r\n"
    if body:
        headers += f"Content-Length: {len(body)}\r\n"
    answer = raw_exchange(
        service,
        request_line
        + b"\r\nHost: x\r\nExpect: "
        + expect
        + f"\r\n{headers}Connection: close\r\n\r\n".encode()
        + body,
    )
    if answer.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"):
        answer = answer.removeprefix(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
    assert "Traceback" not in caplog.text and "UnicodeEncodeError" not in caplog.text


def test_a_chunked_body_is_cut_off_at_the_limit(service: SearchService) -> None:
    sent = 0

    def chunks() -> Iterator[bytes]:
        nonlocal sent
        for _ in range(64):  # 4 MiB offered against a 1 MiB limit
            sent += 65536
            yield b"0" * 65536

    with client(service) as http:
        response = http.post("/search", content=chunks(), headers={"Content-Type": "application/x-npy"})
    assert response.status_code == 413
    assert "limit of 1048576 bytes" in response.json()["error"]


@pytest.mark.parametrize("form", ["json", "npy"])
def test_queries_per_request_are_capped(service: SearchService, form: str) -> None:
    many = np.repeat(QUERIES[:1], 101, axis=0)
    with client(service) as http:
        if form == "json":
            response = http.post("/search", json={"queries": many.tolist()})
        else:
            response = http.post("/search", content=npy(many), headers={"Content-Type": "application/x-npy"})
        assert response.status_code == 413
        assert "more than the limit of 100 per request (--max-queries)" in response.json()["error"]
        assert http.post("/search", json={"queries": many[:100].tolist()}).status_code == 200


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"queries": [[0]], "k": 1e999}', '"k" must be an integer (like 10), got Infinity'),
        (b'{"queries": [[0]], "k": 2.7}', '"k" must be an integer (like 10), got 2.7'),
        (b'{"queries": [[0]], "k": true}', '"k" must be an integer (like 10), got true'),
        (b'{"queries": [[0]], "k": "5"}', '"k" must be an integer (like 10), got "5"'),
        (b'{"queries": [[0]], "nprobe": "2"}', '"nprobe" must be an integer (like 10), got "2"'),
        (b'{"queries": [[0]], "nprobe": null}', '"nprobe" must be an integer (like 10), got null'),
        (b'{"queries": [[0]], "k": NaN}', "NaN is not a JSON number"),
        (b'{"queries": [["1.5"]]}', 'row 0 holds "1.5": vectors hold numbers only'),
        (b'{"queries": [[true]]}', "row 0 holds true: vectors hold numbers only"),
        (b'{"queries": [[0], [1e999' + b", 0" * 15 + b"]]}", "rows differ in length"),
        (b'{"queries": [[1e999' + b", 0" * 15 + b"]]}", "queries row 0 holds NaN or inf"),
        (b'{"queries": [[1e39' + b", 0" * 15 + b"]]}", "queries row 0 holds NaN or inf"),
        (b'{"queries": [[1' + b"0" * 400 + b"]]}", "beyond the float range"),
        (b'{"queries": [[0]], "kk": 3}', 'unknown field "kk"; valid fields: queries, k, nprobe'),
        (b"[" * 100_000 + b"]" * 100_000, "nests JSON too deeply"),
        (b'{"queries": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nests JSON too deeply"),
        (b"\xff\xfe", "not valid JSON"),
        (b'{"queries": [[1, 2], [3]]}', "rows differ in length"),
    ],
)
def test_malformed_json_fields_are_400_naming_the_field(
    service: SearchService, body: bytes, message: str
) -> None:
    with client(service) as http:
        response = http.post("/search", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("k=1e999", 'k must be a positive integer (like k=10), got "1e999"'),
        ("k=2.7", 'got "2.7"'),
        ("k=true", 'got "true"'),
        ("k=", 'got ""'),
        ("k=-3", 'got "-3"'),
        ("nprobe=99999999999999999999", "nprobe must be a positive integer"),
        ("k=3&k=4", "k is given more than once"),
        ("kk=3", 'unknown query parameter "kk"; valid: k, nprobe'),
        ("k=0", "k must be >= 1"),
        ("k=65", "k 65 exceeds this service's limit of 64 (--max-k)"),
        ("nprobe=17", "nprobe must be between 1 and nlist (16)"),
    ],
)
def test_bad_query_parameters_are_400(service: SearchService, query: str, message: str) -> None:
    with client(service) as http:
        response = http.post(
            f"/search?{query}", content=npy(QUERIES[:2]), headers={"Content-Type": "application/x-npy"}
        )
    assert response.status_code == 400
    assert message in response.json()["error"]


def test_query_parameters_on_a_json_body_are_refused(service: SearchService) -> None:
    with client(service) as http:
        response = http.post("/search?k=3", json={"queries": [ONE]})
    assert response.status_code == 400
    assert "put k and nprobe in the JSON body" in response.json()["error"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (npy(QUERIES[:2])[:-5], "the .npy body is damaged"),
        (npy(QUERIES[:2]) + b"extra", "the .npy body is damaged"),
        (npy_header((10**11, 16)), "more than the limit of 100"),
        (npy_header((1, 10**11)), "the .npy body is damaged"),
        (b"\x93NUMPY\x01\x00\x46\x00{'descr': '<f4', 'shape': (1, 16), }\n", "not a .npy array"),
        (npy(np.array([[True] * 16])), "expected numbers"),
        (npy(np.zeros((1, 16), dtype=np.complex64)), "expected numbers"),
        (npy(np.zeros((1, 1, 16), dtype=np.float32)), "expected a (nq, dim) array"),
        (b"not an array", "not a .npy array"),
    ],
)  # fmt: skip
def test_bad_npy_bodies_are_400_before_any_allocation(
    service: SearchService, body: bytes, message: str
) -> None:
    with client(service) as http:
        response = http.post("/search", content=body, headers={"Content-Type": "application/x-npy"})
    assert response.status_code in (400, 413)
    assert message in response.json()["error"]


def test_a_small_request_is_answered_while_a_large_one_runs(index_dir: Path) -> None:
    """Before fair batching a 50k-query request delayed a 1-query request by 11.9 s."""
    big = np.repeat(QUERIES, 1250, axis=0)  # 50,000 queries
    options = ServiceOptions(port=0, max_queries=60_000, max_body_bytes=64 * MIB, max_batch=256)
    with (
        running_service(index_dir, options) as (running, _),
        ThreadPoolExecutor(2) as pool,
        client(running) as http,
    ):
        started = time.monotonic()
        large = pool.submit(
            http.post,
            "/search?k=10&nprobe=16",
            content=npy(big),
            headers={"Content-Type": "application/x-npy"},
        )
        while running.metrics.queries._value.get() < 2000:  # the large one is being searched
            assert not large.done(), "the large request ended before the small one could be timed"
            time.sleep(0.005)
        small_started = time.monotonic()
        small = http.post("/search", json={"queries": [ONE], "k": 10, "nprobe": 16})
        small_seconds = time.monotonic() - small_started
        assert small.status_code == 200
        assert not large.done(), "the small request should have finished while the large one ran"
        answer = large.result(timeout=120)
        large_seconds = time.monotonic() - started
    assert answer.status_code == 200
    ids = np.load(io.BytesIO(answer.content))["ids"]
    assert ids.shape == (50_000, 10)
    np.testing.assert_array_equal(ids[:40], ids[40:80])  # chunks reassembled in order
    assert small.json()["ids"][0] == ids[0].tolist()
    print(f"1-query request {small_seconds:.2f} s while a 50,000-query one took {large_seconds:.2f} s")


def test_bodies_held_at_once_are_bounded_over_all_requests(index_dir: Path) -> None:
    """A body still arriving holds its declared bytes: a second one that would pass the total waits
    outside (503 with Retry-After); once the first is answered its bytes are free again."""
    options = ServiceOptions(port=0, max_body_bytes=MIB, max_inflight_body_bytes=MIB)
    with running_service(index_dir, options) as (running, _):
        host, port = running.url.removeprefix("http://").rsplit(":", 1)
        body = json.dumps({"queries": [ONE], "k": 3}).encode()
        head = (
            b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: {AUTH['Authorization']}\r\nContent-Length: {MIB}\r\n\r\n".encode()
        )
        with socket.create_connection((host, int(port)), timeout=5) as slow:
            slow.sendall(head + body[:10])  # most of its declared bytes never come: it stays held
            time.sleep(0.3)
            second = httpx.post(f"{running.url}/search", json={"queries": [ONE], "k": 3}, headers=AUTH)
            assert second.status_code == 503 and second.headers["Retry-After"] == "1"
            assert "--max-inflight-mb" in second.json()["error"]
        deadline = time.monotonic() + 5  # the slow client hung up: its bytes come back
        while time.monotonic() < deadline:
            answer = httpx.post(f"{running.url}/search", json={"queries": [ONE], "k": 3}, headers=AUTH)
            if answer.status_code == 200:
                break
            time.sleep(0.1)
        assert answer.status_code == 200
