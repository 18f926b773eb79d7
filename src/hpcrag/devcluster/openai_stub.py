"""A minimal OpenAI-compatible server: fixed answers at once, for measuring proxies and testing the
gateway without vLLM. It speaks the same wire format as vLLM (JSON bodies, `data:` events, usage, per-chunk
usage with `continuous_usage_stats`, `/health`, a `/metrics` with vLLM's queue gauges) and nothing more.
Its rerank and score APIs (`/v1/rerank`, `/v1/score`) rate a document by the share of the query's words it
contains, so a test can predict their order.

`python -m hpcrag.devcluster.openai_stub --port 9000 [--model NAME] [--delay-ms 5] [--tokens 8]
[--cut-after N] [--reply TEXT] [--record FILE]` (`--cut-after`: end each stream after N events without
`[DONE]`, as a dying backend does; `--reply`: chat completions answer TEXT, streamed a few characters per
event; `--record`: append every completion and embedding request body to FILE, one JSON line each, so a
test can assert what the backend received)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
from pathlib import Path

from aiohttp import web

WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]
REPLY_PIECE_CHARS = 3  # a --reply stream's characters per event: markers such as "[12]" span events


def create_app(
    model: str,
    delay_s: float = 0.0,
    tokens: int = 8,
    cut_after: int | None = None,
    reply: str | None = None,
    record: Path | None = None,
) -> web.Application:
    state = {"running": 0, "requests": 0}

    def recorded(body: dict) -> dict:
        if record is not None:
            with record.open("a") as out:
                out.write(json.dumps(body) + "\n")
        return body

    def usage(prompt: int, completion: int) -> dict[str, int]:
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    async def completion(request: web.Request) -> web.StreamResponse:
        body = recorded(await request.json())
        chat = request.path.endswith("chat/completions")
        count = min(int(body.get("max_tokens") or tokens), tokens)
        pieces = [WORDS[i % len(WORDS)] + " " for i in range(count)]
        if chat and reply is not None:
            pieces = [reply[i : i + REPLY_PIECE_CHARS] for i in range(0, len(reply), REPLY_PIECE_CHARS)]
            count = len(pieces)
        prompt_tokens = len(json.dumps(body.get("messages") or body.get("prompt") or "")) // 4 + 1
        state["running"] += 1
        state["requests"] += 1
        try:
            if delay_s:
                await asyncio.sleep(delay_s)
            base = {"id": f"stub-{state['requests']}", "created": int(time.time()), "model": model}
            if not body.get("stream"):
                text = reply if chat and reply is not None else "".join(pieces).rstrip()
                choice = (
                    {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"}
                    if chat
                    else {"index": 0, "text": text, "finish_reason": "length"}
                )
                kind = "chat.completion" if chat else "text_completion"
                return web.json_response(
                    {**base, "object": kind, "choices": [choice], "usage": usage(prompt_tokens, count)}
                )
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            kind = "chat.completion.chunk" if chat else "text_completion"
            options = body.get("stream_options") or {}
            continuous = bool(options.get("include_usage") and options.get("continuous_usage_stats"))
            for i in range(count):
                if cut_after is not None and i == cut_after:
                    await response.write_eof()
                    return response
                word = pieces[i]
                choice = (
                    {"index": 0, "delta": {"content": word}, "finish_reason": None}
                    if chat
                    else {"index": 0, "text": word, "finish_reason": None}
                )
                chunk = {**base, "object": kind, "choices": [choice]}
                if continuous:
                    chunk["usage"] = usage(prompt_tokens, i + 1)
                await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
            if options.get("include_usage"):
                chunk = {**base, "object": kind, "choices": [], "usage": usage(prompt_tokens, count)}
                await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
            return response
        finally:
            state["running"] -= 1

    async def embeddings(request: web.Request) -> web.Response:
        body = recorded(await request.json())
        given = body["input"]
        # A string, or token ids, is one input; a list of either is several (the OpenAI API's shapes).
        one = isinstance(given, str) or (isinstance(given, list) and all(isinstance(t, int) for t in given))
        inputs = [given] if one else given
        data = [
            {"object": "embedding", "index": i, "embedding": [float(len(item)), 1.0, 0.0, 0.5]}
            for i, item in enumerate(inputs)
        ]
        prompt = sum(len(item) // 4 + 1 if isinstance(item, str) else len(item) for item in inputs)
        return web.json_response(
            {
                "object": "list",
                "data": data,
                "model": model,
                "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
            }
        )

    def overlap(query: str, document: str) -> float:
        wanted = set(re.findall(r"\w+", query.lower()))
        return len(wanted & set(re.findall(r"\w+", document.lower()))) / len(wanted) if wanted else 0.0

    def pair_usage(query: str, documents: list[str]) -> int:
        return sum((len(query) + len(document)) // 4 + 1 for document in documents)

    async def rerank(request: web.Request) -> web.Response:
        body = await request.json()
        query, documents = body["query"], body["documents"]
        ranked = sorted(
            (
                {"index": i, "document": {"text": d}, "relevance_score": overlap(query, d)}
                for i, d in enumerate(documents)
            ),
            key=lambda result: (-result["relevance_score"], result["index"]),
        )
        top_n = body.get("top_n") or len(ranked)  # vLLM: 0 or absent means all
        tokens = pair_usage(query, documents)
        return web.json_response(
            {
                "id": f"rerank-{time.time_ns()}",
                "model": model,
                "usage": {"total_tokens": tokens},
                "results": ranked[:top_n],
            }
        )

    async def score(request: web.Request) -> web.Response:
        body = await request.json()
        first, second = body["text_1"], body["text_2"]
        second = [second] if isinstance(second, str) else second
        queries = [first] * len(second) if isinstance(first, str) else first
        data = [
            {"index": i, "object": "score", "score": overlap(q, d)}
            for i, (q, d) in enumerate(zip(queries, second, strict=True))
        ]
        tokens = sum(pair_usage(q, [d]) for q, d in zip(queries, second, strict=True))
        return web.json_response(
            {
                "id": f"score-{time.time_ns()}",
                "object": "list",
                "created": int(time.time()),
                "model": model,
                "data": data,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": model, "object": "model"}]})

    async def health(_: web.Request) -> web.Response:
        return web.Response(text="")

    async def metrics(_: web.Request) -> web.Response:
        text = (
            f'vllm:num_requests_running{{model_name="{model}"}} {state["running"]}\n'
            f'vllm:num_requests_waiting{{model_name="{model}"}} 0\n'
        )
        return web.Response(text=text)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completion)
    app.router.add_post("/v1/completions", completion)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_post("/v1/rerank", rerank)
    app.router.add_post("/v1/score", score)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", default="stub-model")
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--tokens", type=int, default=8)
    parser.add_argument("--cut-after", type=int, default=None)
    parser.add_argument("--reply", default=None, help="what chat completions answer")
    parser.add_argument("--record", type=Path, default=None, help="JSON-lines file of the request bodies")
    args = parser.parse_args()
    app = create_app(args.model, args.delay_ms / 1000.0, args.tokens, args.cut_after, args.reply, args.record)
    try:
        import uvloop
    except ImportError:
        web.run_app(app, host=args.host, port=args.port, access_log=None, print=None)
    else:
        web.run_app(
            app, host=args.host, port=args.port, access_log=None, print=None, loop=uvloop.new_event_loop()
        )


if __name__ == "__main__":
    main()
