"""The embedders (MiniLM in-process, an OpenAI-compatible server over real HTTP), the cache, `embed_all`."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import httpx
import numpy as np
import pytest

from hpcrag.errors import HpcragError
from hpcrag.rag.embed import (
    EmbedderError,
    LocalEmbedder,
    RemoteEmbedder,
    cache_key,
    embed_all,
    model_folder,
)
from hpcrag.rag.embed_cache import EmbeddingCache

SECRET = "sk-secret-key-for-tests"


@pytest.fixture(scope="module")
def local() -> LocalEmbedder:
    return LocalEmbedder()


class Counting:
    """An embedder that records what it was asked to embed."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.calls: list[list[str]] = []
        self.name, self.dim, self.max_tokens = inner.name, inner.dim, inner.max_tokens

    def tokenizer(self):
        return self.inner.tokenizer()

    def embed(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        return self.inner.embed(texts)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def stub_url() -> Iterator[str]:
    """hpcrag's OpenAI-compatible stub server: embeds a text as [len(text), 1, 0, 0.5]."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "hpcrag.devcluster.openai_stub", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, "the stub server did not start"
        time.sleep(0.1)
    yield url
    process.terminate()
    process.wait(timeout=10)


def stub_vector(text: str) -> np.ndarray:
    vector = np.array([len(text), 1.0, 0.0, 0.5])
    return (vector / np.linalg.norm(vector)).astype(np.float32)


class Faulty(BaseHTTPRequestHandler):
    """A server that fails in the way the request's model names; "busy" answers 503 to every request."""

    requests: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        mode, inputs = body["model"], body["input"]
        Faulty.requests.append(mode)
        rows = [[float(len(text)), 1.0, 0.0, 0.5] for text in inputs]
        if mode == "wrong-dim":
            rows = [row[:3] for row in rows]
        elif mode == "too-few":
            rows = rows[:-1]
        elif mode == "nan":
            rows[0][1] = float("nan")
        elif mode == "slow":
            time.sleep(1.0)
            return  # the client has given up by now
        elif mode == "busy" or (mode == "busy-twice" and Faulty.requests.count(mode) <= 2):
            return self.answer(503, b'{"error": "busy"}', {"Retry-After": "0"})
        elif mode == "error":
            return self.answer(500, b"Internal Server Error: boom")
        elif mode == "garbage":
            return self.answer(200, b"<html>hello</html>")
        elif mode == "auth":  # a careless server that quotes the request's credentials back
            return self.answer(401, f"bad key {self.headers['Authorization']}".encode())
        # Shuffled: the client must restore the order from `index`.
        data = [{"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(rows)][::-1]
        self.answer(200, json.dumps({"object": "list", "data": data, "model": mode}).encode())

    def answer(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def faulty_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Faulty)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


# The local embedder


def test_local_embedder_similar_sentences_are_closer_than_unrelated(local: LocalEmbedder) -> None:
    cat, kitten, slurm = local.embed(
        ["The cat sits on the mat.", "A kitten is resting on a rug.", "Slurm schedules batch jobs."]
    )
    assert float(cat @ kitten) > 0.5
    assert float(cat @ kitten) > float(cat @ slurm) + 0.4
    assert float(kitten @ slurm) < 0.2


def test_local_embedder_rows_are_unit_float32(local: LocalEmbedder) -> None:
    vectors = local.embed(["one", "two words", "x" * 5000])
    assert vectors.dtype == np.float32
    assert vectors.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert local.embed([]).shape == (0, 384)


def test_local_embedder_identity(local: LocalEmbedder) -> None:
    assert local.name == "local:all-MiniLM-L6-v2:384:256"
    assert (local.dim, local.max_tokens) == (384, 254)


def test_local_tokenizer_counts_word_pieces_without_specials_or_truncation(local: LocalEmbedder) -> None:
    tokens = local.tokenizer()
    assert tokens.count("hello world") == 2
    assert tokens.count("") == 0
    assert tokens.count("hello " * 1000) == 1000  # well past the model's 256
    text = "Run sbatch, Zürich!"
    pieces = [text[start:end] for start, end in tokens.offsets(text)]
    assert pieces == ["Run", "sb", "at", "ch", ",", "Zürich", "!"]
    assert len(pieces) == tokens.count(text)


def test_minilm_names_resolve_to_the_packaged_folder(tmp_path: Path) -> None:
    folder = model_folder("all-MiniLM-L6-v2")
    assert folder == model_folder("sentence-transformers/all-MiniLM-L6-v2")
    assert (folder / "model.safetensors").is_file()
    assert model_folder(str(folder)) == folder.resolve()
    with pytest.raises(EmbedderError, match="neither all-MiniLM-L6-v2 nor a folder"):
        model_folder(str(tmp_path / "nowhere"))


# The cache and embed_all


def test_cache_round_trip_missing_keys_and_many_keys(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "cache.sqlite"
    vectors = np.random.default_rng(0).standard_normal((2000, 3)).astype(np.float32)
    keys = [i.to_bytes(4, "big") for i in range(2000)]
    with EmbeddingCache(path) as cache:
        cache.put_many(zip(keys, vectors, strict=True))
        cache.put_many([(keys[0], np.ones(3))])  # replaces
    with EmbeddingCache(path) as cache:  # persisted
        found = cache.get_many([*keys, b"absent"])
        assert len(cache) == 2000
    assert set(found) == set(keys)
    assert found[keys[0]].tolist() == [1.0, 1.0, 1.0]
    assert found[keys[1999]].dtype == np.float32
    np.testing.assert_array_equal(np.stack([found[k] for k in keys[1:]]), vectors[1:])


def test_damaged_cache_says_to_delete_it(tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(HpcragError, match=r"delete .*cache\.sqlite \(it is only a cache\)"):
        EmbeddingCache(path)


def test_embed_all_embeds_misses_once_and_then_only_reads_the_cache(local, tmp_path: Path) -> None:
    texts = ["alpha particle", "beta decay", "alpha particle", "gamma ray", "beta decay"]
    counting = Counting(local)
    with EmbeddingCache(tmp_path / "cache.sqlite") as cache:
        first = embed_all(counting, texts, cache, batch_size=2)
        assert counting.calls == [["alpha particle", "beta decay"], ["gamma ray"]]
        assert (first.embedded, first.cached) == (3, 0)
        np.testing.assert_allclose(first.vectors, local.embed(texts), atol=1e-6)

        counting.calls.clear()
        second = embed_all(counting, [*texts, "delta"], cache, batch_size=2)
        assert counting.calls == [["delta"]]
        assert (second.embedded, second.cached) == (1, 5)
        np.testing.assert_array_equal(second.vectors[:5], first.vectors)

        counting.calls.clear()
        third = embed_all(counting, texts[::-1], cache)
        assert counting.calls == []
        assert (third.embedded, third.cached) == (0, 5)
        np.testing.assert_array_equal(third.vectors, first.vectors[::-1])
        key = cache_key(local.name, "gamma ray")
        np.testing.assert_array_equal(cache.get_many([key])[key], first.vectors[3])


def test_embed_all_without_cache_and_with_nothing(local) -> None:
    counting = Counting(local)
    result = embed_all(counting, ["same", "same"])
    assert counting.calls == [["same"]]
    np.testing.assert_array_equal(result.vectors[0], result.vectors[1])
    empty = embed_all(counting, [])
    assert empty.vectors.shape == (0, 384)
    assert (empty.embedded, empty.cached) == (0, 0)


def test_embed_all_prints_progress_lines_when_stderr_is_no_terminal(local, capsys) -> None:
    embed_all(local, ["a", "b", "c"], batch_size=2, progress=True)
    assert capsys.readouterr().err.splitlines() == ["embedding: 3/3 texts"]


# The remote embedder, against real HTTP servers


def test_remote_embedder_against_the_stub_server(stub_url: str) -> None:
    texts = ["a", "bbb", "cc", "dddd", "eeeee"]
    with RemoteEmbedder(f"{stub_url}/v1/", "stub-model", batch_size=2) as remote:
        vectors = remote.embed(texts)
        assert remote.name == f"remote:{stub_url}:stub-model"
        assert remote.dim == 4
    np.testing.assert_allclose(vectors, np.stack([stub_vector(t) for t in texts]), rtol=1e-6)
    assert vectors.dtype == np.float32
    with RemoteEmbedder(stub_url, "stub-model") as remote:
        assert remote.name == f"remote:{stub_url}:stub-model"  # with or without /v1: one cache
        assert remote.dim == 4  # learnt from a probe
        assert remote.embed([]).shape == (0, 4)


def test_remote_embedder_through_embed_all_and_the_cache(stub_url: str, tmp_path: Path) -> None:
    with RemoteEmbedder(stub_url, "stub-model", dim=4) as remote, EmbeddingCache(tmp_path / "c.db") as cache:
        counting = Counting(remote)
        first = embed_all(counting, ["x", "yy", "x"], cache)
        second = embed_all(counting, ["yy", "x"], cache)
    assert counting.calls == [["x", "yy"]]
    np.testing.assert_array_equal(second.vectors, first.vectors[[1, 0]])
    np.testing.assert_allclose(first.vectors[1], stub_vector("yy"), rtol=1e-6)


def test_remote_tokenizer_is_the_named_local_models(local: LocalEmbedder, stub_url: str) -> None:
    text = "srun --gres=gpu:4 hostname in Zürich"
    with RemoteEmbedder(stub_url, "stub-model", dim=4) as remote:
        assert remote.tokenizer().offsets(text) == local.tokenizer().offsets(text)
        assert remote.max_tokens == 254


def test_remote_embedder_restores_order_and_retries_a_busy_server(faulty_url: str) -> None:
    with RemoteEmbedder(faulty_url, "busy-twice", dim=4) as remote:
        vectors = remote.embed(["a", "bb", "ccc"])
    assert Faulty.requests.count("busy-twice") == 3
    np.testing.assert_allclose(vectors, np.stack([stub_vector(t) for t in ["a", "bb", "ccc"]]), rtol=1e-6)


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("wrong-dim", r"sent vectors of dimension 3, expected 4; check the model name"),
        ("too-few", r"sent 1 embeddings for 2 inputs"),
        ("nan", r"sent NaN or infinite values"),
        ("garbage", r"other than an OpenAI embeddings response \(<html>hello</html>\); check that the URL"),
        ("error", r"answered HTTP 500 \(Internal Server Error: boom\); check the server's log"),
        ("busy", r"answered HTTP 503 .*; the server stays busy"),
        ("auth", r"answered HTTP 401 .*; check the API key"),
        ("slow", r"did not answer within 0.3 s; check that it runs"),
    ],
)
def test_remote_embedder_failures_name_the_url_and_the_fix(faulty_url: str, model: str, message: str) -> None:
    with (
        RemoteEmbedder(faulty_url, model, api_key=SECRET, dim=4, timeout_s=0.3) as remote,
        pytest.raises(EmbedderError, match=message) as error,
    ):
        remote.embed(["a", "bb"])
    assert f"embedding server {faulty_url}" in str(error.value)
    assert SECRET not in str(error.value)


def test_remote_embedder_gives_up_on_a_busy_server_after_a_few_tries(faulty_url: str) -> None:
    before = Faulty.requests.count("busy")
    with RemoteEmbedder(faulty_url, "busy", dim=4) as remote, pytest.raises(EmbedderError):
        remote.embed(["a"])
    assert Faulty.requests.count("busy") - before == 4


def test_remote_embedder_names_an_unreachable_url() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with (
        RemoteEmbedder(url, "m", api_key=SECRET, dim=4) as remote,
        pytest.raises(EmbedderError, match=rf"cannot reach embedding server {url} .*check the URL"),
    ):
        remote.embed(["a"])
