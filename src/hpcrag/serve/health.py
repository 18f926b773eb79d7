"""Is a vLLM server up? One GET of its /health, with a short timeout."""

from __future__ import annotations

import ssl

import httpx


def is_healthy(base_url: str, timeout: float = 2.0, verify: ssl.SSLContext | bool = True) -> bool:
    try:
        return httpx.get(f"{base_url}/health", timeout=timeout, verify=verify).status_code == 200
    except httpx.HTTPError:
        return False
