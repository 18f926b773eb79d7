"""A minimal OpenAI-compatible server: fixed answers at once, for measuring proxies and testing the
gateway without vLLM. It speaks the same wire format as vLLM (JSON bodies, `data:` events, usage, per-chunk
usage with `continuous_usage_stats`, `/health`, a `/metrics` with vLLM's queue gauges) and nothing more.

`python -m hpcrag.devcluster.openai_stub --port 9000 [--model NAME] [--delay-ms 5] [--tokens 8]
[--cut-after N]` (`--cut-after`: end each stream after N events without `[DONE]`, as a dying backend does)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from aiohttp import web

WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]


def create_app(
    model: str, delay_s: float = 0.0, tokens: int = 8, cut_after: int | None = None
) -> web.Application:
    state = {"running": 0, "requests": 0}

    def usage(prompt: int, completion: int) -> dict[str, int]:
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    async def completion(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        chat = request.path.endswith("chat/completions")
        count = min(int(body.get("max_tokens") or tokens), tokens)
        prompt_tokens = len(json.dumps(body.get("messages") or body.get("prompt") or "")) // 4 + 1
        state["running"] += 1
        state["requests"] += 1
        try:
            if delay_s:
                await asyncio.sleep(delay_s)
            base = {"id": f"stub-{state['requests']}", "created": int(time.time()), "model": model}
            if not body.get("stream"):
                text = " ".join(WORDS[i % len(WORDS)] for i in range(count))
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
                word = WORDS[i % len(WORDS)] + " "
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
        body = await request.json()
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
    args = parser.parse_args()
    app = create_app(args.model, args.delay_ms / 1000.0, args.tokens, args.cut_after)
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
