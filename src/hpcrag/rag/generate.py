"""Generation behind one small interface, and its implementation over any OpenAI-compatible HTTP API.

The CLI points `HttpGenerator` at a running hpcrag gateway (so tier routing, keys, budgets and the
ledger apply); the same class works against vLLM or a cloud API directly.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from hpcrag.errors import HpcragError


@dataclass
class Reply:
    """What came back besides the text; for a stream it is complete once the deltas are consumed."""

    text: str = ""
    model: str | None = None
    usage: dict[str, Any] | None = None


class Generator(Protocol):
    def complete(self, messages: list[dict[str, str]], model: str, max_tokens: int) -> Reply: ...

    def stream(
        self, messages: list[dict[str, str]], model: str, max_tokens: int
    ) -> tuple[Reply, Iterator[str]]: ...


class HttpGenerator:
    """POST /v1/chat/completions on `base_url` with a bearer key; errors name the URL, never the key."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        timeout_s: float = 600,
        verify: bool | str = True,
        temperature: float = 0.2,
    ) -> None:
        import httpx

        root = base_url.rstrip("/")
        self.url = (root if root.endswith("/v1") else root + "/v1") + "/chat/completions"
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        tls: Any = verify
        if isinstance(verify, str):  # a CA bundle
            from hpcrag.util.tls import client_context

            tls = client_context(Path(verify))
        self._client = httpx.Client(headers=headers, timeout=timeout_s, verify=tls)
        self.temperature = temperature

    def close(self) -> None:
        self._client.close()

    def _body(
        self, messages: list[dict[str, str]], model: str, max_tokens: int, stream: bool
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": model,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": self.temperature,
        }
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body

    def complete(self, messages: list[dict[str, str]], model: str, max_tokens: int) -> Reply:
        import httpx

        try:
            response = self._client.post(self.url, json=self._body(messages, model, max_tokens, False))
        except httpx.HTTPError as exc:
            raise HpcragError(f"generation at {self.url} failed: {exc}; is the gateway running?") from None
        data = self._checked(response.status_code, response.text)
        try:
            text = data["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise HpcragError(f"{self.url} answered without choices[0].message.content") from None
        return Reply(text, data.get("model"), data.get("usage"))

    def stream(
        self, messages: list[dict[str, str]], model: str, max_tokens: int
    ) -> tuple[Reply, Iterator[str]]:
        reply = Reply()
        return reply, self._deltas(self._body(messages, model, max_tokens, True), reply)

    def _deltas(self, body: dict[str, Any], reply: Reply) -> Iterator[str]:
        import httpx

        parts: list[str] = []
        try:
            with self._client.stream("POST", self.url, json=body) as response:
                if response.status_code != 200:
                    self._checked(response.status_code, response.read().decode("utf-8", "replace"))
                for line in response.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    payload = line[5:].strip()
                    if payload == "[DONE]":
                        break
                    event = json.loads(payload)
                    if not isinstance(event, dict):
                        raise HpcragError(f"{self.url} sent a stream event that is not a JSON object")
                    if "error" in event:
                        raise HpcragError(f"{self.url} stream failed: {_message(event['error'])}")
                    reply.model = event.get("model", reply.model)
                    reply.usage = event.get("usage") or reply.usage
                    for choice in event.get("choices") or []:
                        delta = (choice.get("delta") or {}).get("content")
                        if delta:
                            parts.append(delta)
                            yield delta
        except httpx.HTTPError as exc:
            raise HpcragError(f"generation at {self.url} failed: {exc}; is the gateway running?") from None
        except json.JSONDecodeError:
            raise HpcragError(f"{self.url} sent a stream event that is not JSON") from None
        reply.text = "".join(parts)

    def _checked(self, status: int, text: str) -> dict[str, Any]:
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = None
        if status != 200:
            message = _message(data.get("error")) if isinstance(data, dict) else text[:200]
            raise HpcragError(f"{self.url} answered {status}: {message}")
        if not isinstance(data, dict):
            raise HpcragError(f"{self.url} answered with a body that is not a JSON object")
        return data


def _message(error: Any) -> str:
    """An OpenAI error object's message (or the error as it came, shortened)."""
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return error["message"]
    return str(error)[:200]
