"""How hpcrag's own clients (the gateway, the burst policy's load sampling) reach a vLLM server: with the
registry row's key, and over HTTPS verified against `serving.backend_ca` (else the system's CAs)."""

from __future__ import annotations

import ssl

from hpcrag.config import Config
from hpcrag.serve.registry import Endpoint
from hpcrag.util.tls import client_context


def backend_ssl_context(config: Config) -> ssl.SSLContext:
    """The context that verifies https:// servers (plain http:// URLs ignore it)."""
    ca = config.serving.backend_ca
    return client_context(config.resolve_path(ca) if ca else None)


def auth_headers(row: Endpoint) -> dict[str, str]:
    """The header that opens a server started with a key; none for one without (a cloud server)."""
    return {"Authorization": f"Bearer {row.secret}"} if row.secret else {}
