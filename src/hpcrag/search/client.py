"""A Python client for `hpcrag index serve`: NumPy in, NumPy out, over the service's binary forms.

It sends the service's bearer token (given, else $HPCRAG_SEARCH_TOKEN, or read with the URL from the
service's endpoint file) and speaks HTTPS with a CA file (and a client certificate) when asked.
Failures come in two kinds, so that a caller with several replicas knows what to retry elsewhere:
`ServiceUnavailable` (unreachable, or a 5xx: the service's fault) and `RequestRefused` (a 4xx: the
request's fault, which another replica would refuse too).
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
from hpcrag.search.index import SearchResult, UpdateResult
from hpcrag.search.inputs import ROUTING_FIELDS
from hpcrag.util.npy_headers import HEADER_LOCK


class ServiceUnavailable(HpcragError):
    """The service could not answer: unreachable, timed out, or a 5xx. Another replica may."""

    def __init__(self, message: str, connected: bool) -> None:
        super().__init__(message)
        self.connected = connected  # False: the request never reached the service


class ReplicaBehind(ServiceUnavailable):
    """The service has not yet applied the update a search asked for (min_seq); it will soon."""


class RequestRefused(HpcragError):
    """The service refused the request itself (a 4xx); any replica would."""


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
        self.token = token
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

    def search(
        self,
        queries: Any,
        k: int = 10,
        nprobe: int = 1,
        filter: dict[str, Any] | None = None,
        strategy: str = "auto",
        min_seq: int = 0,
        **routing: Any,
    ) -> SearchResult:
        """Search a (nq, d) batch (or one vector); raises HpcragError with the service's reason.

        `filter` is a filter spec (see `hpcrag.search.filters`); `min_seq` asks for a state that
        includes that update (the `seq` an update returned); `routing` takes max_shards,
        shard_margin, ef and refine, over the service's own."""
        unknown = set(routing) - set(ROUTING_FIELDS)
        if unknown:
            raise HpcragError(
                f"unknown search option {sorted(unknown)[0]!r}; valid: {', '.join(ROUTING_FIELDS)}"
            )
        routing = {name: value for name, value in routing.items() if value is not None}
        if filter is not None:
            # In the body, not the URL: a filter of thousands of values outgrows a request line.
            return self._search_json(queries, k, nprobe, filter, strategy, min_seq, routing)
        body = io.BytesIO()
        np.save(body, np.asarray(queries, dtype=np.float32), allow_pickle=False)
        params: dict[str, Any] = {"k": k, "nprobe": nprobe, **routing}
        if isinstance(routing.get("shard_margin"), float):  # plain decimals: the service takes no 1e-05
            params["shard_margin"] = f"{routing['shard_margin']:.9f}".rstrip("0").rstrip(".")
        if strategy != "auto":
            params["strategy"] = strategy
        if min_seq:
            params["min_seq"] = min_seq
        started = time.perf_counter()
        response = self._checked(
            self._request(
                "POST",
                "/search",
                params=params,
                content=body.getvalue(),
                headers={"Content-Type": "application/x-npy"},
            )
        )
        with HEADER_LOCK:  # a client may search from several threads (ReplicaSet, RAG)
            arrays = dict(np.load(io.BytesIO(response.content), allow_pickle=False))
        return SearchResult(
            ids=arrays["ids"],
            distances=arrays["distances"],
            shards_touched=arrays["shards_touched"],
            seconds=time.perf_counter() - started,
            strategy=str(arrays["strategy"]),
            seq=int(arrays["seq"]),
        )

    def _search_json(
        self,
        queries: Any,
        k: int,
        nprobe: int,
        filter: dict[str, Any] | None,
        strategy: str,
        min_seq: int,
        routing: dict[str, Any],
    ) -> SearchResult:
        rows = np.asarray(queries, dtype=np.float32)
        body = {
            "queries": (rows[None, :] if rows.ndim == 1 else rows).tolist(),
            "k": k,
            "nprobe": nprobe,
            "filter": filter,
            "strategy": strategy,
            "min_seq": min_seq,
            **routing,
        }
        started = time.perf_counter()
        answer = self._checked(self._request("POST", "/search", json=body)).json()
        distances = np.array(
            [[np.nan if d is None else d for d in row] for row in answer["distances"]], dtype=np.float32
        )
        return SearchResult(
            ids=np.array(answer["ids"], dtype=np.int64).reshape(len(body["queries"]), -1),
            distances=distances.reshape(len(body["queries"]), -1),
            shards_touched=np.array(answer["shards_touched"]),
            seconds=time.perf_counter() - started,
            strategy=answer["strategy"],
            seq=answer["seq"],
        )

    def add(
        self,
        vectors: Any,
        ids: Any,
        attributes: list[dict[str, Any] | None] | None = None,
        declare: dict[str, str] | None = None,
    ) -> UpdateResult:
        """Add new ids (durable when this returns)."""
        return self._update("add", {"vectors": vectors, "ids": ids}, attributes, declare)

    def upsert(
        self,
        vectors: Any,
        ids: Any,
        attributes: list[dict[str, Any] | None] | None = None,
        declare: dict[str, str] | None = None,
    ) -> UpdateResult:
        """Add or replace ids, atomically (durable when this returns)."""
        return self._update("upsert", {"vectors": vectors, "ids": ids}, attributes, declare)

    def delete(self, ids: Any, strict: bool = False) -> UpdateResult:
        """Delete ids; unknown ones are reported in `unknown_ids` unless `strict` refuses them."""
        return self._update("delete", {"ids": ids, "strict": strict}, None, None)

    def _update(
        self,
        kind: str,
        arrays: dict[str, Any],
        attributes: list[dict[str, Any] | None] | None,
        declare: dict[str, str] | None,
    ) -> UpdateResult:
        if attributes is not None or declare is not None:
            body = {name: np.asarray(value).tolist() for name, value in arrays.items()}
            body.update({"attributes": attributes, "declare": declare})
            response = self._checked(self._request("POST", f"/{kind}", json=body))
        else:
            buffer = io.BytesIO()
            strict = arrays.pop("strict", False)
            vectors = arrays.get("vectors")
            packed = {"ids": np.asarray(arrays["ids"], dtype=np.int64)}
            if vectors is not None:
                packed["vectors"] = np.asarray(vectors, dtype=np.float32)
            np.savez(buffer, **packed)
            response = self._checked(
                self._request(
                    "POST",
                    f"/{kind}",
                    params={"strict": "1"} if strict else None,
                    content=buffer.getvalue(),
                    headers={"Content-Type": "application/x-npz"},
                )
            )
        answer = response.json()
        return UpdateResult(
            seq=answer["seq"],
            added=answer["added"],
            replaced=answer["replaced"],
            deleted=answer["deleted"],
            unknown_ids=tuple(answer["unknown_ids"]),
            declared=answer["declared"],
        )

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        import httpx

        try:
            return self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            connected = not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
            raise ServiceUnavailable(f"search service at {self.url} unreachable ({exc})", connected) from None

    def _checked(self, response: Any) -> Any:
        if response.status_code == 200:
            return response
        try:
            answer = response.json()
            reason = answer["error"]
        except (ValueError, KeyError, TypeError):
            answer, reason = {}, response.text.strip() or response.reason_phrase
        message = f"search service {self.url} answered {response.status_code}: {reason}"
        if response.status_code == 503 and "seq" in answer:
            raise ReplicaBehind(message, connected=True)
        if response.status_code >= 500:
            raise ServiceUnavailable(message, connected=True)
        raise RequestRefused(message)
