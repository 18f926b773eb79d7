"""A Python client for `hpcrag index serve`: NumPy in, NumPy out, over the service's binary form."""

from __future__ import annotations

import io
import time
from typing import Any

import numpy as np

from hpcrag.errors import HpcragError
from hpcrag.search.index import SearchResult


class SearchClient:
    """One keep-alive HTTP connection pool to a search service.

    with SearchClient("http://node1:8470") as client:
        result = client.search(queries, k=10, nprobe=16)
    """

    def __init__(self, url: str, timeout: float = 60.0) -> None:
        import httpx

        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, timeout=timeout)

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
