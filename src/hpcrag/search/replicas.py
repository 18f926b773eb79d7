"""Replicas of one index: separate search-service jobs registered under one group name, and the
front that spreads requests over them and survives the loss of any.

An MPI job dies whole when one rank dies, so availability comes from R replica jobs (`slurm/
index-serve.sbatch` with GROUP set, possibly at both sites) serving the same index directory. Each
registers in the endpoint registry `hpcrag serve` keeps (tier `index`, served name = the group, the
service's bearer token as the row's secret), heartbeats, and only after it has opened the index and
replayed the update log, so a replica that comes back after a requeue has caught up before it takes
traffic. All replicas share the index's update log: an update acknowledged by one is read by the
others between their batches, so they agree (`wal.py`).

`ReplicaSet` is the front the CLI, the RAG pipeline and the gateway use. It reads the group's
healthy, fresh rows; sends each request to the next replica whose circuit is closed (round robin);
retries a request that failed before an answer (unreachable, a 5xx) on the next replica; opens a
replica's circuit after `failures_to_open` such failures in a row (the gateway's `CircuitBreaker`)
and probes its /health after `open_s` to close it again. A refused request (4xx) is not retried:
every replica would refuse it. Searches carry `min_seq` = the last update this front wrote, so a
replica that has not yet read it answers 503 and the next one is asked (read your writes).
Retrying an update is safe for upsert and delete (idempotent); an add is retried only when it
never reached the first replica.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from hpcrag.errors import HpcragError
from hpcrag.search.client import ReplicaBehind, RequestRefused, SearchClient, ServiceUnavailable
from hpcrag.search.index import SearchResult, UpdateResult
from hpcrag.serve.registry import INDEX_TIER, Endpoint, Registry, now
from hpcrag.util.circuit import CircuitBreaker

PROVIDER = "slurm"
HEARTBEAT_S = 10.0
STALE_S = 60.0  # a row whose heartbeat is older is a replica that died without saying so
T = TypeVar("T")


class ReplicaRegistration:
    """A running service's row in the registry: healthy with its URL and token, heartbeats, stopped."""

    def __init__(
        self, registry: Registry, group: str, site: str, index_dir: Path, url: str, token: str, ranks: int
    ) -> None:
        self.registry = registry
        self.site = site
        self.job_id = os.environ.get("SLURM_JOB_ID") or f"pid-{os.getpid()}"
        self._stop = threading.Event()
        stamp = now()
        registry.add(
            Endpoint(
                provider=PROVIDER,
                site=site,
                job_id=self.job_id,
                tier=INDEX_TIER,
                model=str(Path(index_dir).resolve()),
                served_name=group,
                state="healthy",
                gpus=ranks,
                url=url,
                started_at=stamp,
                healthy_at=stamp,
                heartbeat_at=stamp,
                restarts=int(os.environ.get("SLURM_RESTART_COUNT", "0")),
                log_path=os.environ.get("HPCRAG_LOG_PATH"),
                secret=token,
            )
        )
        threading.Thread(target=self._beat, name="hpcrag-heartbeat", daemon=True).start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self.registry.update(PROVIDER, self.site, self.job_id, heartbeat_at=now())
            except HpcragError:
                continue  # a busy registry: the next beat tries again, the row is not stale yet

    def close(self, state: str = "stopped", message: str = "") -> None:
        self._stop.set()
        self.registry.update(
            PROVIDER, self.site, self.job_id, state=state, stopped_at=now(), message=message, secret=None
        )


@dataclass
class Replica:
    name: str
    url: str
    client: SearchClient
    circuit: CircuitBreaker
    answered: int = 0
    failed: int = 0


@dataclass
class FrontStats:
    requests: int = 0
    retries: int = 0  # attempts beyond the first
    failed: int = 0  # requests no replica answered
    circuits_opened: int = 0
    events: list[str] = field(default_factory=list)


class ReplicaSet:
    """Search and update one index through its replicas; see the module docstring."""

    def __init__(
        self,
        discover: Callable[[], list[Endpoint]],
        group: str,
        failures_to_open: int = 2,
        open_s: float = 5.0,
        refresh_s: float = 5.0,
        timeout: float = 30.0,
        ca: Path | None = None,
    ) -> None:
        self.group = group
        self._discover = discover
        self._failures_to_open = failures_to_open
        self._open_s = open_s
        self._refresh_s = refresh_s
        self._timeout = timeout
        self._ca = ca
        self._replicas: dict[str, Replica] = {}
        self._refreshed = -float("inf")
        self._turn = itertools.count()
        self._lock = threading.Lock()
        self.written_seq = 0  # the last update this front wrote: searches ask for at least it
        self.stats = FrontStats()

    @classmethod
    def from_registry(
        cls, registry_path: Path | str, group: str, journal: str = "wal", **options: Any
    ) -> ReplicaSet:
        registry = Registry(registry_path, journal)

        def discover() -> list[Endpoint]:
            fresh = now() - STALE_S
            return [
                row
                for row in registry.healthy(INDEX_TIER)
                if row.served_name == group and row.url and (row.heartbeat_at or 0) >= fresh
            ]

        return cls(discover, group, **options)

    def __enter__(self) -> ReplicaSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            for replica in self._replicas.values():
                replica.client.close()
            self._replicas.clear()

    def replicas(self) -> list[Replica]:
        self._refresh()
        with self._lock:
            return list(self._replicas.values())

    def health(self) -> dict[str, Any]:
        """The /health of one replica that answers (with the token: the index's shape and seq)."""
        return self._call(lambda c: c.health(), retry_unsent_only=False)

    def search(
        self,
        queries: Any,
        k: int = 10,
        nprobe: int = 1,
        filter: dict[str, Any] | None = None,
        strategy: str = "auto",
        **routing: Any,
    ) -> SearchResult:
        return self._call(
            lambda c: c.search(
                queries, k, nprobe, filter=filter, strategy=strategy, min_seq=self.written_seq, **routing
            ),
            retry_unsent_only=False,
        )

    def add(self, vectors: Any, ids: Any, attributes: Any = None, declare: Any = None) -> UpdateResult:
        return self._written(
            self._call(lambda c: c.add(vectors, ids, attributes, declare), retry_unsent_only=True)
        )

    def upsert(self, vectors: Any, ids: Any, attributes: Any = None, declare: Any = None) -> UpdateResult:
        return self._written(
            self._call(lambda c: c.upsert(vectors, ids, attributes, declare), retry_unsent_only=False)
        )

    def delete(self, ids: Any, strict: bool = False) -> UpdateResult:
        return self._written(self._call(lambda c: c.delete(ids, strict), retry_unsent_only=False))

    def _written(self, result: UpdateResult) -> UpdateResult:
        with self._lock:
            self.written_seq = max(self.written_seq, result.seq)
        return result

    def _call(self, attempt: Callable[[SearchClient], T], retry_unsent_only: bool) -> T:
        self._refresh()
        self._probe_open_circuits()
        with self._lock:
            self.stats.requests += 1
            replicas = list(self._replicas.values())
            start = next(self._turn)
        order = [replicas[(start + i) % len(replicas)] for i in range(len(replicas))] if replicas else []
        candidates = [r for r in order if r.circuit.allows()]
        if not candidates:
            self._count_failure()
            state = (
                f"{len(replicas)} registered, every circuit open"
                if replicas
                else "none registered and healthy"
            )
            raise ServiceUnavailable(
                f"no replica of index group {self.group!r} can answer ({state}); check `hpcrag index "
                f"replicas {self.group}` and the replica jobs' logs",
                connected=False,
            )
        reasons = []
        for position, replica in enumerate(candidates):
            if position:
                with self._lock:
                    self.stats.retries += 1
            try:
                result = attempt(replica.client)
            except RequestRefused:
                raise
            except ReplicaBehind as exc:
                reasons.append(f"{replica.name}: {exc}")  # alive, only behind: not the circuit's business
                continue
            except ServiceUnavailable as exc:
                reasons.append(f"{replica.name}: {exc}")
                self._failed(replica, str(exc))
                if retry_unsent_only and exc.connected:
                    break  # it may have been applied there: the caller decides
                continue
            with self._lock:
                replica.answered += 1
                replica.circuit.success()
            return result
        self._count_failure()
        raise ServiceUnavailable(
            f"no replica of index group {self.group!r} answered: {'; '.join(reasons)}", connected=True
        )

    def _count_failure(self) -> None:
        with self._lock:
            self.stats.failed += 1

    def _failed(self, replica: Replica, reason: str) -> None:
        with self._lock:
            replica.failed += 1
            if replica.circuit.failure():
                self.stats.circuits_opened += 1
                self.stats.events.append(
                    f"{time.strftime('%H:%M:%S')} circuit of {replica.name} opened: {reason}"
                )

    def _probe_open_circuits(self) -> None:
        with self._lock:
            due = [r for r in self._replicas.values() if r.circuit.due_for_probe()]
        for replica in due:
            try:
                healthy = replica.client.health().get("status") == "ok"
            except HpcragError:
                healthy = False
            with self._lock:
                if healthy:
                    replica.circuit.close()
                    self.stats.events.append(f"{time.strftime('%H:%M:%S')} circuit of {replica.name} closed")
                else:
                    replica.circuit.opened_at = time.monotonic()  # wait another open_s

    def _refresh(self) -> None:
        """Re-read the group's rows: replicas come, go, and change URL and token when requeued."""
        if time.monotonic() - self._refreshed < self._refresh_s:
            return
        rows = self._discover()
        with self._lock:
            self._refreshed = time.monotonic()
            seen = set()
            for row in rows:
                name = f"{row.site}/{row.job_id}"
                seen.add(name)
                current = self._replicas.get(name)
                if current is not None and current.url == row.url and current.client.token == row.secret:
                    continue
                if current is not None:
                    current.client.close()
                client = SearchClient(row.url, timeout=self._timeout, token=row.secret or "", ca=self._ca)
                circuit = CircuitBreaker(self._failures_to_open, self._open_s)
                self._replicas[name] = Replica(name, row.url, client, circuit)
            for name in set(self._replicas) - seen:
                self._replicas.pop(name).client.close()
