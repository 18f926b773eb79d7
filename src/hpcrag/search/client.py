"""A Python client for `hpcrag index serve`: NumPy in, NumPy out, over the service's binary form.

It sends the service's bearer token (given, else $HPCRAG_SEARCH_TOKEN, or read with the URL from the
service's endpoint file) and speaks HTTPS with a CA file (and a client certificate) when asked.
"""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from hpcrag.errors import HpcragError
from hpcrag.search.index import SearchResult


class SearchClient:
    """One keep-alive HTTP connection pool to a search service.

    with SearchClient.from_endpoint_file("hpcrag-index-serve-42.endpoint.json") as client:
        result = client.search(queries, k=10, nprobe=16)
    with SearchClient("https://node1:8470", token=TOKEN, ca=Path("ca.pem")) as client: ...
    """

    def __init__(
        self,
        url: str,
        timeout: float = 60.0,
        token: str | None = None,
        ca: Path | None = None,
        cert: Path | None = None,
        key: Path | None = None,
    ) -> None:
        import httpx

        from hpcrag.search.service import TOKEN_ENV

        self.url = url.rstrip("/")
        token = token if token is not None else os.environ.get(TOKEN_ENV, "").strip()
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        verify: Any = True
        if ca is not None or cert is not None:
            from hpcrag.util.tls import client_context

            verify = client_context(ca, cert, key)
        self._http = httpx.Client(base_url=self.url, timeout=timeout, headers=headers, verify=verify)

    @classmethod
    def from_endpoint_file(cls, path: Path | str, **options: Any) -> SearchClient:
        """A client of the service that wrote `path` (its --endpoint-file): URL and token from there."""
        try:
            endpoint = json.loads(Path(path).read_text())
            url, token = endpoint["url"], endpoint["token"]
        except OSError as exc:
            raise HpcragError(f"endpoint file {path} cannot be read ({exc.strerror})") from None
        except (ValueError, KeyError, TypeError):
            raise HpcragError(
                f"endpoint file {path} is not one a search service wrote (JSON with url and token)"
            ) from None
        return cls(url, token=token, **options)

    def __enter__(self) -> SearchClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def health(self) -> dict[str, Any]:
        return self._checked(self._request("GET", "/health")).json()

    def search(self, queries: Any, k: int = 10, nprobe: int = 1) -> SearchResult:
        """Search a (nq, d) batch (or one vector); raises HpcragError with the service's reason."""
        body = io.BytesIO()
        np.save(body, np.asarray(queries, dtype=np.float32), allow_pickle=False)
        started = time.perf_counter()
        response = self._checked(
            self._request(
                "POST",
                "/search",
                params={"k": k, "nprobe": nprobe},
                content=body.getvalue(),
                headers={"Content-Type": "application/x-npy"},
            )
        )
        arrays = np.load(io.BytesIO(response.content), allow_pickle=False)
        return SearchResult(
            ids=arrays["ids"],
            distances=arrays["distances"],
            shards_touched=arrays["shards_touched"],
            seconds=time.perf_counter() - started,
        )

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        import httpx

        try:
            return self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise HpcragError(f"search service at {self.url} unreachable ({exc})") from None

    def _checked(self, response: Any) -> Any:
        if response.status_code == 200:
            return response
        try:
            reason = response.json()["error"]
        except (ValueError, KeyError, TypeError):
            reason = response.text.strip() or response.reason_phrase
        raise HpcragError(f"search service {self.url} answered {response.status_code}: {reason}")
