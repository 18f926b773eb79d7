"""Rerankers against real HTTP servers: hpcrag's OpenAI stub (rerank and score APIs, word-overlap scores)
and a small aiohttp chat server that plays an LLM judge and records what it was sent."""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from aiohttp import web

from hpcrag.errors import HpcragError
from hpcrag.rag.fusion import Candidate
from hpcrag.rag.rerank import CrossEncoderReranker, LlmJudgeReranker, Reranker, parse_judgement

KEY = "sk-secret-rerank-key"
QUERY = "cancel a job array"
TEXTS = {
    10: "sbatch submits batch scripts.",  # share of the query's words: 0
    11: "scancel can cancel a whole job array at once.",  # 4/4
    12: "squeue lists the job queue.",  # "job" -> 1/4
    13: "Partitions group nodes.",  # 0/4
}


def fused() -> list[Candidate]:
    rows = [10, 11, 12, 13]
    return [Candidate(row=r, chunk_id=r * 100, score=1.0 - 0.1 * i, scores={"fused": 1.0 - 0.1 * i},
                      ranks={"dense": i + 1}) for i, r in enumerate(rows)]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def stub_url() -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "hpcrag.devcluster.openai_stub", "--port", str(port), "--model", "ce"],
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
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read().decode()
        time.sleep(0.1)
    yield url
    process.terminate()
    process.wait(timeout=10)


def test_cross_encoder_orders_by_the_servers_relevance(stub_url):
    reranker: Reranker = CrossEncoderReranker(stub_url, "ce", KEY)
    ranked = reranker.rerank(QUERY, fused(), TEXTS)
    assert [c.row for c in ranked] == [11, 12, 10, 13]  # 10 and 13 tie at 0: fused order
    assert [c.scores["rerank"] for c in ranked] == [1.0, 0.25, 0.0, 0.0]
    assert [c.score for c in ranked] == [1.0, 0.25, 0.0, 0.0]
    assert ranked[0].scores["fused"] == pytest.approx(0.9) and ranked[0].ranks == {"dense": 2}
    assert ranked[0].chunk_id == 1100
    assert reranker.name == "cross-encoder:ce"


def test_cross_encoder_top_n_leaves_the_rest_in_fused_order(stub_url):
    ranked = CrossEncoderReranker(f"{stub_url}/v1/", "ce", top_n=1).rerank(QUERY, fused(), TEXTS)
    assert [c.row for c in ranked] == [11, 10, 12, 13]
    assert "rerank" in ranked[0].scores and all("rerank" not in c.scores for c in ranked[1:])
    assert all(c.score == 1.0 for c in ranked)  # the unscored take the lowest score given, so stay last


def test_score_api_gives_the_same_order(stub_url):
    ranked = CrossEncoderReranker(stub_url, "ce", api="score").rerank(QUERY, fused(), TEXTS)
    assert [c.row for c in ranked] == [11, 12, 10, 13]
    assert ranked[0].scores["rerank"] == 1.0


def test_no_candidates_means_no_request():
    assert CrossEncoderReranker(f"http://127.0.0.1:{free_port()}", "ce").rerank(QUERY, [], {}) == []


def test_failures_name_the_url_never_the_key(stub_url):
    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(HpcragError, match=rf"reranker at {dead}/v1/rerank unreachable") as unreachable:
        CrossEncoderReranker(dead, "ce", KEY).rerank(QUERY, fused(), TEXTS)
    with pytest.raises(HpcragError, match=r"/wrong/v1/rerank answered 404") as missing:
        CrossEncoderReranker(f"{stub_url}/wrong", "ce", KEY).rerank(QUERY, fused(), TEXTS)
    for error in (unreachable, missing):
        assert KEY not in str(error.value)


def test_an_answer_of_the_wrong_shape_is_an_error(judge):
    # the judge server answers /v1/rerank with a chat completion
    with pytest.raises(
        HpcragError, match=r"/v1/rerank answered without results\[\]\.index and relevance_score"
    ):
        CrossEncoderReranker(judge["url"], "ce", KEY).rerank(QUERY, fused(), TEXTS)


@pytest.fixture(scope="module")
def judge() -> Iterator[dict]:
    """A chat server whose answer is `judge["reply"]` (on /v1/rerank too); it appends each request to
    `judge["received"]`."""
    state: dict = {"reply": "", "received": []}

    async def chat(request: web.Request) -> web.Response:
        state["received"].append(
            {"authorization": request.headers.get("Authorization"), "body": await request.json()}
        )
        message = {"role": "assistant", "content": state["reply"]}
        return web.json_response({"choices": [{"index": 0, "message": message, "finish_reason": "stop"}]})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/rerank", chat)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", 0).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    state["url"] = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield state
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=10)
    loop.close()


def test_llm_judge_request_and_order(judge):
    judge["received"].clear()
    judge["reply"] = 'Here you go:\n```json\n{"1": 2, "2": 9, "3": 2}\n```'
    reranker = LlmJudgeReranker(judge["url"], "judge-model", KEY)
    ranked = reranker.rerank(QUERY, fused(), TEXTS)
    assert [c.row for c in ranked] == [11, 10, 12, 13]  # 9; 2 and 2 in fused order; passage 4 unscored
    assert [c.scores.get("rerank") for c in ranked] == [9.0, 2.0, 2.0, None]
    assert ranked[3].score == 2.0

    (request,) = judge["received"]
    assert request["authorization"] == f"Bearer {KEY}"
    body = request["body"]
    assert body["model"] == "judge-model" and body["temperature"] == 0
    system, user = body["messages"]
    nonce = re.search(r'nonce="([0-9a-f]+)"', system["content"]).group(1)
    assert "0 (irrelevant) to 10" in system["content"] and "untrusted data" in system["content"]
    assert user["content"].startswith(f"Query: {QUERY}\n")
    blocks = re.findall(
        rf'<source id="(\d)" [^>]*nonce="{nonce}">\n(.*?)\n</source nonce="{nonce}">', user["content"]
    )
    assert blocks == [(str(n), TEXTS[row]) for n, row in enumerate([10, 11, 12, 13], start=1)]


def test_llm_judge_that_scores_nothing_keeps_the_fused_order(judge):
    judge["reply"] = "I cannot rate these."
    ranked = LlmJudgeReranker(judge["url"], "judge-model").rerank(QUERY, fused(), TEXTS)
    assert [c.row for c in ranked] == [10, 11, 12, 13]
    assert [c.score for c in ranked] == [c.score for c in fused()]
    assert all("rerank" not in c.scores for c in ranked)


@pytest.mark.parametrize(
    ("answer", "ratings"),
    [
        ('{"1": 7, "2": 3}', {1: 7.0, 2: 3.0}),
        ('{"scores": {"passage 1": "8", "[2]": 4.5}}', {1: 8.0, 2: 4.5}),
        ("[3, 12, -1]", {1: 3.0, 2: 10.0, 3: 0.0}),
        ('[{"id": 2, "score": 6}, {"passage": 1, "relevance": 1}]', {2: 6.0, 1: 1.0}),
        ('See [1] first. {"1": 5, "9": 8, "2": null, "3": true}', {1: 5.0}),
        ('{"broken": ', {}),
        ("nothing here", {}),
    ],
)
def test_parse_judgement(answer, ratings):
    assert parse_judgement(answer, 3) == ratings
