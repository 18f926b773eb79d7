"""The search service's updates over real HTTP: /add, /upsert and /delete (JSON and .npz) leave the
state that the update log replays to; filtered searches answer as the index does; bad updates are
refused with a reason and change nothing; min_seq reads one's writes; another writer's updates are
picked up; and under concurrent updates every search answer is exactly the brute force over the
state its `seq` names.
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from hpcrag.search import DistributedIndex
from hpcrag.search.client import SearchClient, ServiceUnavailable
from hpcrag.search.service import SearchService, ServiceOptions
from hpcrag.search.synthetic import clustered
from tests.search_helpers import assert_same_neighbours, build_small
from tests.unit.search.service_helpers import TOKEN, client, running_service

DIM, NLIST, K = 8, 8, 5
BASE, QUERIES = clustered(400, 12, DIM, clusters=6, spread=0.5, seed=13)
NEW = 10_000  # ids the tests add start here
MAX_ROWS = 32
DEADLINE_S = 10.0
NPZ = {"Content-Type": "application/x-npz"}
NPY = {"Content-Type": "application/x-npy"}

Model = dict[int, np.ndarray]


@pytest.fixture
def index_dir(tmp_path: Path) -> Path:
    return build_small(tmp_path, BASE, nlist=NLIST, nshards=2, metric="l2")


@contextmanager
def opened(root: Path) -> Iterator[DistributedIndex]:
    """An index opened in this process (replaying the update log), closed afterwards."""
    index = DistributedIndex.open(root)
    try:
        yield index
    finally:
        index.close()


@contextmanager
def serving(root: Path) -> Iterator[tuple[SearchService, httpx.Client, SearchClient]]:
    """A running service over `root`, with an HTTP client and a SearchClient of it."""
    with (
        running_service(root, ServiceOptions(port=0)) as (service, _),
        client(service) as http,
        SearchClient(service.url, token=TOKEN) as sdk,
    ):
        yield service, http, sdk


def npz(**arrays: Any) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def near(rng: np.random.Generator, rows: int) -> np.ndarray:
    """New vectors close to base rows (no exact ties with them)."""
    picked = BASE[rng.integers(0, len(BASE), rows)]
    return (picked + rng.normal(0, 0.1, picked.shape)).astype(np.float32)


def seq_of(http: httpx.Client) -> int:
    return http.get("/health").json()["seq"]


def brute_force(model: Model, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(squared l2 distances, ids) of the k nearest live rows, in float64."""
    ids = np.array(sorted(model), dtype=np.int64)
    rows = np.stack([model[i] for i in ids.tolist()]).astype(np.float64)
    distances = ((queries.astype(np.float64)[:, None, :] - rows[None, :, :]) ** 2).sum(axis=2)
    order = np.argsort(distances, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(distances, order, axis=1), ids[order]


def answer_arrays(answer: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    ids = np.array(answer["ids"], dtype=np.int64)
    distances = np.array([[np.inf if d is None else d for d in row] for row in answer["distances"]])
    return ids, distances


# -- updates, and searches equal to the replayed index ---------------------------------------------


def test_updates_over_json_and_the_client_equal_the_replayed_index(index_dir: Path) -> None:
    rng = np.random.default_rng(1)
    model: Model = dict(enumerate(BASE))
    added, more = near(rng, 6), near(rng, 4)
    replacing, replacing_too = near(rng, 4), near(rng, 3)
    with serving(index_dir) as (_, http, sdk):
        answers = [
            http.post("/add", json={"vectors": added.tolist(), "ids": list(range(NEW, NEW + 6))}).json(),
            vars(sdk.add(more, np.arange(NEW + 6, NEW + 10))),
            http.post("/upsert", json={"vectors": replacing.tolist(), "ids": [3, 7, NEW, NEW + 100]}).json(),
            vars(sdk.upsert(replacing_too, [11, NEW + 1, NEW + 200])),
            http.post("/delete", json={"ids": [0, 5, NEW + 2, 999_999]}).json(),
            vars(sdk.delete([1, NEW + 3, 888_888])),
        ]
        model.update(zip(range(NEW, NEW + 10), [*added, *more], strict=True))
        model.update(
            zip([3, 7, NEW, NEW + 100, 11, NEW + 1, NEW + 200], [*replacing, *replacing_too], strict=True)
        )
        for gone in (0, 5, NEW + 2, 1, NEW + 3):
            del model[gone]
        health = http.get("/health").json()
        served = {
            nprobe: http.post("/search", json={"queries": QUERIES.tolist(), "k": K, "nprobe": nprobe}).json()
            for nprobe in (1, 3, NLIST)
        }
        exact = http.post("/search", json={"queries": QUERIES.tolist(), "k": K, "strategy": "exact"}).json()
        binary = sdk.search(QUERIES, k=K, nprobe=3)
    changes = [(a["seq"], a["added"], a["replaced"], a["deleted"], list(a["unknown_ids"])) for a in answers]
    assert changes == [
        (1, 6, 0, 0, []),
        (2, 4, 0, 0, []),
        (3, 1, 3, 0, []),
        (4, 1, 2, 0, []),
        (5, 0, 0, 3, [999_999]),
        (6, 0, 0, 2, [888_888]),
    ]
    assert (health["seq"], health["live_vectors"], health["vectors"]) == (6, len(model), len(BASE))
    with opened(index_dir) as reference:
        assert (reference.seq, reference.ntotal) == (6, len(model))
        for nprobe, answer in served.items():
            expected = reference.search(QUERIES, k=K, nprobe=nprobe)
            assert (answer["seq"], answer["strategy"]) == (6, "ivf")
            np.testing.assert_array_equal(np.array(answer["ids"]), expected.ids)
            np.testing.assert_allclose(np.array(answer["distances"]), expected.distances, rtol=1e-6)
        expected = reference.search(QUERIES, k=K, strategy="exact")
        np.testing.assert_array_equal(np.array(exact["ids"]), expected.ids)
        expected = reference.search(QUERIES, k=K, nprobe=3)
        np.testing.assert_array_equal(binary.ids, expected.ids)
        assert (binary.seq, binary.strategy) == (6, "ivf")
    truth_distances, truth = brute_force(model, QUERIES, K)
    assert_same_neighbours(*answer_arrays(exact), truth, truth_distances)
    assert exact["strategy"] == "exact"


# -- filtered search --------------------------------------------------------------------------------

TENANTS = ("a", "b", "c", "d")
K_FILTERED, NPROBE_FILTERED = 3, 4

Row = dict[str, Any] | None


def attributes_of(ident: int) -> dict[str, Any]:
    return {"tenant": TENANTS[ident % 4], "n": ident % 100, "day": f"2024-{ident % 12 + 1:02d}-15"}


def has(row: Row, name: str, test: Any) -> bool:
    """Whether the row holds `name` and its value passes `test` (a missing value matches nothing)."""
    return row is not None and name in row and test(row[name])


# Each filter with the same condition in Python. With k=3 and nprobe=4 of 8, "auto" scans exactly
# below 300 matching rows (of 440) and probes lists above: "not a" (about 355) goes to IVF.
FILTERS = {
    "tenant a": ({"tenant": "a"}, lambda row: has(row, "tenant", lambda t: t == "a")),
    "n < 3": ({"n": {"lt": 3}}, lambda row: has(row, "n", lambda n: n < 3)),
    "or": (
        {"or": [{"tenant": "b"}, {"n": {"gte": 95}}]},
        lambda row: has(row, "tenant", lambda t: t == "b") or has(row, "n", lambda n: n >= 95),
    ),
    "not a": ({"not": {"tenant": "a"}}, lambda row: not has(row, "tenant", lambda t: t == "a")),
    "time and in": (
        {"day": {"gte": "2024-06-01"}, "tenant": {"in": ["c", "d"]}},
        lambda row: has(row, "day", lambda d: d >= "2024-06-01") and has(row, "tenant", lambda t: t in "cd"),
    ),
}


@pytest.mark.parametrize("strategy", ["auto", "ivf", "exact"])
def test_filtered_search_over_http_equals_the_index(index_dir: Path, strategy: str) -> None:
    rng = np.random.default_rng(2)
    tagged = list(range(300))  # the other base rows keep no attributes
    new = near(rng, 40)
    rows: dict[int, Row] = {i: attributes_of(i) for i in tagged}
    rows.update({NEW + i: attributes_of(NEW + i) for i in range(40)})
    with serving(index_dir) as (_, http, sdk):
        declared = http.post(
            "/upsert",
            json={
                "vectors": BASE[tagged].tolist(),
                "ids": tagged,
                "attributes": [rows[i] for i in tagged],
                "declare": {"day": "time"},
            },
        ).json()
        added = http.post(
            "/add",
            json={
                "vectors": new.tolist(),
                "ids": list(range(NEW, NEW + 40)),
                "attributes": [rows[NEW + i] for i in range(40)],
            },
        ).json()
        assert http.get("/health").json()["attributes"] == {"day": "time", "tenant": "str", "n": "int"}
        served = []
        search = {"k": K_FILTERED, "nprobe": NPROBE_FILTERED, "strategy": strategy}
        for spec, test in FILTERS.values():
            as_json = http.post("/search", json={"queries": QUERIES.tolist(), "filter": spec, **search})
            params = {**search, "filter": json.dumps(spec)}
            raw = http.post("/search", params=params, content=npy(QUERIES), headers=NPY)
            with np.load(io.BytesIO(raw.content)) as arrays:
                as_npy = {name: arrays[name] for name in arrays.files}
            via_client = sdk.search(QUERIES, filter=spec, **search)
            served.append((spec, test, as_json.json(), as_npy, via_client))
    assert (declared["seq"], declared["replaced"], declared["declared"]) == (
        1,
        300,
        {"day": "time", "tenant": "str", "n": "int"},
    )
    assert (added["seq"], added["added"], added["declared"]) == (2, 40, None)
    model: Model = {i: BASE[i] for i in range(len(BASE))} | {NEW + i: new[i] for i in range(40)}
    strategies = set()
    with opened(index_dir) as reference:
        for spec, test, as_json, as_npy, via_client in served:
            expected = reference.search(QUERIES, filter=spec, **search)
            strategies.add(expected.strategy)
            assert as_json["strategy"] == expected.strategy == str(as_npy["strategy"]) == via_client.strategy
            if strategy != "auto":
                assert expected.strategy == strategy
            assert as_json["seq"] == int(as_npy["seq"]) == via_client.seq == 2
            for ids in (np.array(as_json["ids"]), as_npy["ids"], via_client.ids):
                np.testing.assert_array_equal(ids, expected.ids, err_msg=f"filter {spec}")
            if expected.strategy == "exact":  # and it means what it says
                kept = {i: v for i, v in model.items() if test(rows.get(i))}
                truth_distances, truth = brute_force(kept, QUERIES, K_FILTERED)
                assert_same_neighbours(*answer_arrays(as_json), truth, truth_distances)
    if strategy == "auto":
        assert strategies == {"ivf", "exact"}, "auto should choose both ways over these selectivities"


# -- bad input --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def strict_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SearchService]:
    """A service over an index with one attribute (src: str), one update applied."""
    root = build_small(tmp_path_factory.mktemp("refusals"), BASE, nlist=NLIST, nshards=2, metric="l2")
    with running_service(root, ServiceOptions(port=0, max_update_rows=MAX_ROWS)) as (service, _):
        with client(service) as http:
            first = http.post(
                "/add", json={"vectors": [BASE[0].tolist()], "ids": [NEW], "attributes": [{"src": "faq"}]}
            )
            assert first.json()["seq"] == 1
        yield service


ONE = BASE[:1]
NAN = BASE[:2].copy()
NAN[1, 3] = np.nan
INF = BASE[:1].copy()
INF[0, 0] = np.inf
TOO_MANY = np.repeat(BASE[:1], MAX_ROWS + 1, axis=0)
# A valid .npz whose central directory marks `ids.npy` encrypted (flag bit 0).
_ZIP = npz(ids=np.array([NEW + 1]), vectors=ONE)
_CD = _ZIP.find(b"PK\x01\x02")
ENCRYPTED_ZIP = _ZIP[: _CD + 8] + b"\x01\x00" + _ZIP[_CD + 10 :]

# (route, body, status, words the reason must hold); a body is a JSON object, JSON text, or (bytes,
# query parameters) sent as .npy to /search and as .npz to the update routes.
REFUSALS = {
    "wrong dimension (json)": (
        "/add",
        {"vectors": [[0.5] * (DIM - 1)], "ids": [NEW + 1]},
        400,
        ["dimension 7", "8"],
    ),
    "wrong dimension (npz)": (
        "/upsert",
        (npz(ids=np.array([3]), vectors=BASE[:1, :5]), {}),
        400,
        ["dimension 5"],
    ),
    "NaN (npz)": ("/add", (npz(ids=np.array([NEW + 1, NEW + 2]), vectors=NAN), {}), 400, ["row 1", "NaN"]),
    "inf (npz)": ("/upsert", (npz(ids=np.array([2]), vectors=INF), {}), 400, ["row 0", "inf"]),
    "string id (json)": (
        "/add",
        {"vectors": ONE.tolist(), "ids": ["12"]},
        400,
        ['"ids" holds "12"', "integers"],
    ),
    "negative id (json)": ("/upsert", {"vectors": ONE.tolist(), "ids": [-4]}, 400, ["between 0 and 2**63-1"]),
    "boolean id (json)": ("/delete", {"ids": [True]}, 400, ['"ids" holds true']),
    "float id (json)": ("/delete", {"ids": [3.0]}, 400, ['"ids" holds 3.0']),
    "string id (npz)": ("/add", (npz(ids=np.array(["12"]), vectors=ONE), {}), 400, ["ids must be integers"]),
    "negative id (npz)": ("/delete", (npz(ids=np.array([-1])), {}), 400, ["between 0 and 2**63-1"]),
    "boolean id (npz)": ("/upsert", (npz(ids=np.array([True]), vectors=ONE), {}), 400, ["found bool"]),
    "null id (json)": pytest.param("/delete", {"ids": [None]}, 400, ['"ids" holds null']),
    "duplicate ids in /add": (
        "/add",
        {"vectors": BASE[:2].tolist(), "ids": [NEW + 5, NEW + 5]},
        400,
        [f"id {NEW + 5} appears more than once", "unique"],
    ),
    "existing id in /add": (
        "/add",
        {"vectors": BASE[:2].tolist(), "ids": [NEW + 6, 17]},
        400,
        ["already in the index", "[17]", "upsert"],
    ),
    "more ids than vectors": (
        "/upsert",
        {"vectors": ONE.tolist(), "ids": [1, 2]},
        400,
        ["1 vectors but 2 ids"],
    ),
    "unknown attribute in a filter": (
        "/search",
        {"queries": QUERIES[:1].tolist(), "filter": {"tenant": "a"}},
        400,
        ['unknown attribute "tenant"', "src"],
    ),
    "unknown attribute in ?filter=": (
        "/search",
        (npy(QUERIES[:2]), {"filter": json.dumps({"colour": "red"})}),
        400,
        ['unknown attribute "colour"'],
    ),
    "wrong filter type": (
        "/search",
        {"queries": QUERIES[:1].tolist(), "filter": {"src": 5}},
        400,
        ["filter on 'src' must be a string"],
    ),
    "filter not an object": (
        "/search",
        {"queries": QUERIES[:1].tolist(), "filter": ["src"]},
        400,
        ["a filter is an object"],
    ),
    "?filter= not JSON": (
        "/search",
        (npy(QUERIES[:2]), {"filter": "src=faq"}),
        400,
        ["filter must be a JSON object"],
    ),
    "unknown strategy": (
        "/search",
        {"queries": QUERIES[:1].tolist(), "strategy": "fast"},
        400,
        ["'fast'", "auto, ivf, exact"],
    ),
    "unknown ?strategy=": (
        "/search",
        (npy(QUERIES[:2]), {"strategy": "fast"}),
        400,
        ["'fast'", "auto, ivf, exact"],
    ),
    "strategy not a string": (
        "/search",
        {"queries": QUERIES[:1].tolist(), "strategy": 1},
        400,
        ['"strategy" must be'],
    ),
    "min_seq not an integer": (
        "/search",
        {"queries": QUERIES[:1].tolist(), "min_seq": "3"},
        400,
        ['"min_seq" must be an integer'],
    ),
    "negative ?min_seq=": (
        "/search",
        (npy(QUERIES[:2]), {"min_seq": "-1"}),
        400,
        ["min_seq must be a positive integer"],
    ),
    "negative min_seq (json)": pytest.param(
        "/search", {"queries": QUERIES[:1].tolist(), "min_seq": -1}, 400, ["min_seq"]
    ),
    "attribute string over 256 bytes": (
        "/add",
        {"vectors": ONE.tolist(), "ids": [NEW + 7], "attributes": [{"src": "é" * 129}]},
        400,
        ["'src' of row 0 is 258 bytes", "at most 256"],
    ),
    "attribute of the wrong type": (
        "/upsert",
        {"vectors": ONE.tolist(), "ids": [4], "attributes": [{"src": 4}]},
        400,
        ["'src' of row 0 must be a string"],
    ),
    "unknown attribute type": (
        "/add",
        {"vectors": ONE.tolist(), "ids": [NEW + 8], "declare": {"score": "float"}},
        400,
        ["unknown type", "int, str, time"],
    ),
    "unknown field in /add": (
        "/add",
        {"vectors": ONE.tolist(), "ids": [NEW + 9], "id": 1},
        400,
        ['unknown field "id"'],
    ),
    "unknown field in /delete": (
        "/delete",
        {"ids": [3], "vectors": ONE.tolist()},
        400,
        ['unknown field "vectors"'],
    ),
    "unknown field in /search": (
        "/search",
        {"queries": QUERIES[:1].tolist(), "top_k": 3},
        400,
        ['unknown field "top_k"'],
    ),
    "unknown array in the npz": (
        "/add",
        (npz(ids=np.array([NEW + 10]), vectors=ONE, extra=ONE), {}),
        400,
        ["'extra'"],
    ),
    "unknown ?param for /delete": ("/delete", (npz(ids=np.array([3])), {"force": "1"}), 400, ["strict=0|1"]),
    "strict delete of an unknown id": (
        "/delete",
        {"ids": [3, 777_777], "strict": True},
        400,
        ["[777777]", "nothing was deleted"],
    ),
    "not JSON": ("/upsert", '{"vectors": [[1, 2]], "ids": [1]', 400, ["not valid JSON"]),
    "not an npz": ("/add", (b"PK\x03\x04 not a zip", {}), 400, ["not an .npz archive"]),
    "empty npz body": pytest.param("/add", (b"", {}), 400, ["not an .npz archive"]),
    "npz entry flagged encrypted": pytest.param("/add", (ENCRYPTED_ZIP, {}), 400, ["not an .npz archive"]),
    "too many rows (json)": (
        "/add",
        {"vectors": TOO_MANY.tolist(), "ids": list(range(NEW, NEW + MAX_ROWS + 1))},
        413,
        [f"{MAX_ROWS + 1} rows", f"limit of {MAX_ROWS}", "--max-update-rows"],
    ),
    "too many rows (npz)": (
        "/upsert",
        (npz(ids=np.arange(MAX_ROWS + 1), vectors=TOO_MANY), {}),
        413,
        [f"limit of {MAX_ROWS}"],
    ),
    "too many ids to delete": ("/delete", {"ids": list(range(MAX_ROWS + 1))}, 413, [f"limit of {MAX_ROWS}"]),
}


@pytest.mark.parametrize(("route", "body", "status", "words"), list(REFUSALS.values()), ids=list(REFUSALS))
def test_bad_input_is_refused_and_changes_nothing(
    strict_service: SearchService, route: str, body: Any, status: int, words: list[str]
) -> None:
    with client(strict_service) as http:
        before = http.get("/health").json()
        if isinstance(body, dict):
            response = http.post(route, json=body)
        elif isinstance(body, str):
            response = http.post(route, content=body, headers={"Content-Type": "application/json"})
        else:
            content, params = body
            headers = NPY if route == "/search" else NPZ
            response = http.post(route, content=content, params=params, headers=headers)
        after = http.get("/health").json()
    assert response.status_code == status, response.text
    reason = response.json()["error"]
    for word in words:
        assert word in reason, reason
    assert (after["seq"], after["live_vectors"], after["attributes"]) == (
        before["seq"],
        before["live_vectors"],
        before["attributes"],
    )


@pytest.mark.parametrize("route", ["/add", "/upsert", "/delete"])
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-token-0123456789"}])
def test_updates_need_the_token(strict_service: SearchService, route: str, headers: dict) -> None:
    body = {"ids": [NEW + 20]} if route == "/delete" else {"vectors": ONE.tolist(), "ids": [NEW + 20]}
    with client(strict_service) as http:
        before = seq_of(http)
    response = httpx.post(strict_service.url + route, json=body, headers=headers)
    assert response.status_code == 401
    assert "Authorization: Bearer TOKEN" in response.json()["error"]
    with client(strict_service) as http:
        assert seq_of(http) == before
        answer = http.post("/search", json={"queries": [ONE[0].tolist()], "k": 1, "strategy": "exact"}).json()
    assert NEW + 20 not in answer["ids"][0]


# -- read your writes, and other writers --------------------------------------------------------------


def test_min_seq_reads_ones_writes_and_refuses_a_state_not_reached(index_dir: Path) -> None:
    vector = near(np.random.default_rng(3), 1)
    query = {"queries": vector.tolist(), "k": 1, "strategy": "exact"}
    with serving(index_dir) as (_, http, sdk):
        ahead = http.post("/search", json={**query, "min_seq": 1})
        with pytest.raises(ServiceUnavailable, match=r"503.*min_seq"):
            sdk.search(vector, k=1, min_seq=1)
        written = http.post("/add", json={"vectors": vector.tolist(), "ids": [NEW]}).json()
        seen = http.post("/search", json={**query, "min_seq": written["seq"]})
        seen_binary = sdk.search(vector, k=1, min_seq=written["seq"], strategy="exact")
        still_ahead = http.post("/search", json={**query, "min_seq": written["seq"] + 1})
    assert ahead.status_code == 503 and ahead.headers["Retry-After"] == "1"
    assert "min_seq" in ahead.json()["error"] and "#0" in ahead.json()["error"]
    assert written["seq"] == 1
    assert seen.status_code == 200
    assert seen.json()["seq"] >= 1 and seen.json()["ids"] == [[NEW]]
    assert seen_binary.seq >= 1 and seen_binary.ids.tolist() == [[NEW]]
    assert still_ahead.status_code == 503 and "Retry-After" in still_ahead.headers


def poll(check: Any, what: str) -> Any:
    """check() until it returns something true, for up to DEADLINE_S."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} did not happen within {DEADLINE_S} s"
        time.sleep(0.02)


def test_a_writer_in_another_process_is_picked_up(index_dir: Path) -> None:
    vector = near(np.random.default_rng(4), 1)
    exact = {"k": 1, "strategy": "exact"}
    with running_service(index_dir, ServiceOptions(port=0)) as (service, _), client(service) as http:
        http.post("/upsert", json={"vectors": BASE[:1].tolist(), "ids": [0]}).raise_for_status()
        with opened(index_dir) as other:
            assert other.seq == 1  # it replayed the service's update
            written = other.add(vector, [NEW])
            assert written.seq == 2
            poll(lambda: seq_of(http) >= written.seq, "the service applying the other writer's add")
            found = http.post("/search", json={"queries": vector.tolist(), **exact}).json()
            assert (found["ids"], found["seq"]) == ([[NEW]], 2)

            deleted = other.delete([7])
            assert (deleted.seq, deleted.deleted) == (3, 1)
            poll(lambda: seq_of(http) >= deleted.seq, "the service applying the other writer's delete")
            gone = http.post("/search", json={"queries": [BASE[7].tolist()], **exact}).json()
            assert gone["ids"][0] != [7]

            # The service's next write comes after the other writer's, in the same log.
            mine = http.post("/add", json={"vectors": (vector + 0.5).tolist(), "ids": [NEW + 1]}).json()
            assert mine["seq"] == 4
            assert other.refresh() == 4
            assert other.ntotal == http.get("/health").json()["live_vectors"] == len(BASE) + 1
            clash = http.post("/add", json={"vectors": vector.tolist(), "ids": [NEW]})
            assert clash.status_code == 400 and "already in the index" in clash.json()["error"]


# -- concurrency ------------------------------------------------------------------------------------

UPDATES_SENT = 60


def write_randomly(service: SearchService, seen: list[int], seed: int) -> list[tuple[int, str, list, Any]]:
    """Send UPDATES_SENT random updates, each changing something, as JSON or through the client
    (.npz); returns them as acknowledged: (seq, kind, ids, vectors). Every tenth waits until a search
    has seen it, so that the searches surely interleave with the updates."""
    rng = np.random.default_rng(seed)
    live, fresh = set(range(len(BASE))), NEW
    done = []
    with client(service) as http, SearchClient(service.url, token=TOKEN) as sdk:
        for number in range(UPDATES_SENT):
            kind = str(rng.choice(["add", "upsert", "delete"]))
            vectors = None
            if kind == "delete":
                ids = rng.choice(sorted(live), int(rng.integers(1, 4)), replace=False).tolist()
                body: dict[str, Any] = {"ids": [*ids, 999_999]}
                expected = (0, 0, len(ids))
            else:
                replaced = int(rng.integers(0, 3)) if kind == "upsert" else 0
                old = rng.choice(sorted(live), replaced, replace=False).tolist()
                new = list(range(fresh, fresh + int(rng.integers(1, 4))))
                fresh += len(new)
                ids = [*old, *new]
                vectors = near(rng, len(ids))
                body = {"vectors": vectors, "ids": ids}
                expected = (len(new), replaced, 0)
            if rng.random() < 0.5:
                result = vars(getattr(sdk, kind)(**body))
            else:
                as_json = {name: np.asarray(value).tolist() for name, value in body.items()}
                response = http.post(f"/{kind}", json=as_json)
                assert response.status_code == 200, response.text
                result = response.json()
            assert (result["added"], result["replaced"], result["deleted"]) == expected
            live = live - set(ids) if kind == "delete" else live | set(ids)
            done.append((result["seq"], kind, ids, vectors))
            if number % 10 == 9:
                poll(lambda seq=result["seq"]: seen and seen[-1] >= seq, "a search seeing the latest update")
    return done


def search_until(service: SearchService, stop: threading.Event, seen: list[int]) -> list[dict[str, Any]]:
    """Exact searches (strategy exact, or every list probed) until told to stop, and one more."""
    answers = []
    bodies = [
        {"queries": QUERIES.tolist(), "k": K, "strategy": "exact"},
        {"queries": QUERIES.tolist(), "k": K, "nprobe": NLIST},
    ]
    with client(service) as http:
        while True:
            last = stop.is_set()
            response = http.post("/search", json=bodies[len(answers) % 2])
            assert response.status_code == 200, response.text
            answers.append(response.json())
            seen.append(answers[-1]["seq"])
            if last:
                return answers


def test_every_answer_is_brute_force_over_the_state_its_seq_names(index_dir: Path) -> None:
    stop, seen = threading.Event(), []
    options = ServiceOptions(port=0, max_wait_s=0.0)
    with running_service(index_dir, options) as (service, _), ThreadPoolExecutor(2) as pool:
        searches = pool.submit(search_until, service, stop, seen)
        try:
            updates = pool.submit(write_randomly, service, seen, 5).result()
        finally:
            stop.set()
        answers = searches.result()
    assert [seq for seq, *_ in updates] == list(range(1, UPDATES_SENT + 1))
    seqs = [answer["seq"] for answer in answers]
    assert seqs == sorted(seqs), "a later answer reflected an older state"
    assert len(set(seqs)) >= 6, f"the searches saw only the states {sorted(set(seqs))}"
    assert seqs[-1] == UPDATES_SENT
    model: Model = dict(enumerate(BASE))
    states = {0: dict(model)}
    for seq, kind, ids, vectors in updates:
        if kind == "delete":
            for ident in ids:
                del model[ident]
        else:
            model.update(zip(ids, vectors, strict=True))
        states[seq] = dict(model)
    truths = {seq: brute_force(states[seq], QUERIES, K) for seq in set(seqs)}
    for answer in answers:
        truth_distances, truth = truths[answer["seq"]]
        assert_same_neighbours(*answer_arrays(answer), truth, truth_distances)


# -- metrics ----------------------------------------------------------------------------------------


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_count_updates_by_kind_status_and_change(index_dir: Path) -> None:
    rng = np.random.default_rng(6)
    with serving(index_dir) as (service, http, sdk):
        sdk.add(near(rng, 3), [NEW, NEW + 1, NEW + 2])
        http.post(
            "/add", json={"vectors": near(rng, 2).tolist(), "ids": [NEW + 3, NEW + 4]}
        ).raise_for_status()
        sdk.upsert(near(rng, 3), [1, 2, NEW + 5])
        http.post("/delete", json={"ids": [3, 4, 123_456]}).raise_for_status()
        assert http.post("/add", json={"vectors": near(rng, 1).tolist(), "ids": [5]}).status_code == 400
        assert http.post("/upsert", json={"vectors": [[1.0]], "ids": [5]}).status_code == 400
        assert httpx.post(service.url + "/delete", json={"ids": [6]}).status_code == 401
        # A search runs after the updates' batch step: the gauges are set by then.
        http.post(
            "/search", json={"queries": QUERIES[:3].tolist(), "k": K, "strategy": "exact"}
        ).raise_for_status()
        http.post("/search", json={"queries": QUERIES[:2].tolist(), "k": K, "nprobe": 2}).raise_for_status()
        values = samples(http.get("/metrics").text)

    def value(name: str, **labels: str) -> float:
        return values.get((name, tuple(sorted(labels.items()))), 0.0)

    assert value("hpcrag_index_updates_total", kind="add", status="200") == 2
    assert value("hpcrag_index_updates_total", kind="add", status="400") == 1
    assert value("hpcrag_index_updates_total", kind="upsert", status="200") == 1
    assert value("hpcrag_index_updates_total", kind="upsert", status="400") == 1
    assert value("hpcrag_index_updates_total", kind="delete", status="200") == 1
    assert value("hpcrag_index_updates_total", kind="delete", status="401") == 1
    assert value("hpcrag_index_update_rows_total", change="added") == 6
    assert value("hpcrag_index_update_rows_total", change="replaced") == 2
    assert value("hpcrag_index_update_rows_total", change="deleted") == 2
    assert value("hpcrag_index_update_seq") == 4
    assert value("hpcrag_index_vectors") == len(BASE) + 6 - 2
    assert value("hpcrag_search_strategy_queries_total", strategy="exact") == 3
    assert value("hpcrag_search_strategy_queries_total", strategy="ivf") == 2


# --- found in review ------------------------------------------------------------------------------


def test_a_request_ahead_of_the_replica_in_a_shared_batch_leaves_the_service_running(index_dir: Path) -> None:
    options = ServiceOptions(port=0, max_wait_s=0.3)  # long enough for both requests to share a batch
    with running_service(index_dir, options) as (service, thread), client(service) as http:
        body = {"queries": QUERIES[:2].tolist(), "k": 3, "nprobe": NLIST}
        with ThreadPoolExecutor(2) as pool:
            ahead = pool.submit(http.post, "/search", json={**body, "min_seq": 10**9})
            plain = pool.submit(http.post, "/search", json=body)
            statuses = (ahead.result().status_code, plain.result().status_code)
        assert statuses == (503, 200)
        assert thread.is_alive() and http.post("/search", json=body).status_code == 200


def test_compressed_npz_and_deeply_nested_json_are_clear_refusals(index_dir: Path) -> None:
    packed = io.BytesIO()
    np.savez_compressed(packed, ids=np.arange(NEW, NEW + 2), vectors=np.zeros((2, BASE.shape[1]), np.float32))
    deep = "[" * 1100 + "]" * 1100  # past the JSON decoder's recursion limit, within a request line
    with serving(index_dir) as (_, http, _sdk):
        refused = http.post("/add", content=packed.getvalue(), headers=NPZ)
        assert refused.status_code == 400 and "send it uncompressed" in refused.json()["error"]
        nested = http.post("/search", content=npy(QUERIES[:1]), headers=NPY, params={"filter": deep})
        assert nested.status_code == 400 and "filter" in nested.json()["error"]
        attributes = npz(ids=np.array([NEW]), vectors=QUERIES[:1], attributes=np.array(deep))
        assert http.post("/add", content=attributes, headers=NPZ).status_code == 400
        assert http.get("/health").status_code == 200


def test_a_writer_that_outlived_a_compaction_is_refused(index_dir: Path) -> None:
    from hpcrag.errors import HpcragError
    from hpcrag.search.compact import compact_index

    with opened(index_dir) as first:
        first.add(QUERIES[:1], [NEW])
    stale = DistributedIndex.open(index_dir)
    stale._serving.close()  # as if it had opened just after compaction's check
    compact_index(index_dir)
    with pytest.raises(HpcragError, match="compacted or rebuilt after this process opened it"):
        stale.add(QUERIES[1:2], [NEW + 1])
    with opened(index_dir) as fresh:
        assert fresh.seq == 1 and fresh.add(QUERIES[1:2], [NEW + 1]).seq == 2
