"""ASGI middleware for vLLM (`--middleware hpcrag_vllm_auth.RequireKey`): every request but `/health`
and `/metrics` needs `Authorization: Bearer $VLLM_API_KEY`.

vLLM's own `--api-key` guards only paths under /v1, /v2, /inference and /cohere; /invocations,
/tokenize, /pooling, /score, /classify and the rest answer anyone. This guards every path, so the
per-job key is the only way in. Standard library only: it is imported by vLLM, not by hpcrag.
"""

from __future__ import annotations

import hmac
import json
import os
from collections.abc import Awaitable, Callable
from typing import Any

OPEN_PATHS = ("/health", "/metrics")  # liveness and load: what the supervisor and the gateway poll
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class RequireKey:
    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        key = os.environ.get("VLLM_API_KEY")
        if not key:
            raise RuntimeError("hpcrag_vllm_auth: VLLM_API_KEY is not set; the supervisor sets it")
        self.app = app
        self.key = key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or self._open(scope) or self._authorised(scope):
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
        else:
            body = json.dumps({"error": "Unauthorized"}).encode()
            headers = [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")]
            await send({"type": "http.response.start", "status": 401, "headers": headers})
            await send({"type": "http.response.body", "body": body})

    @staticmethod
    def _open(scope: Scope) -> bool:
        path = scope["path"].removeprefix(scope.get("root_path", ""))
        return scope["type"] == "http" and scope.get("method") in ("GET", "HEAD") and path in OPEN_PATHS

    def _authorised(self, scope: Scope) -> bool:
        for name, value in scope.get("headers", ()):
            if name.lower() == b"authorization":
                scheme, _, token = value.partition(b" ")
                # RFC 9110: the scheme is case-insensitive.
                return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key)
        return False
