"""A circuit breaker per endpoint: closed (in use), open (out, after repeated failures), back by health.

`failures` consecutive connection failures open the circuit. While open, the endpoint gets no
requests; after `open_s` its owner (the gateway for vLLM servers, `search.replicas` for index
replicas) probes its /health, and the first healthy answer closes the circuit again. One success
resets the failure count.
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass
class CircuitBreaker:
    failures_to_open: int
    open_s: float
    consecutive_failures: int = 0
    opened_at: float | None = None
    times_opened: int = 0

    @property
    def is_open(self) -> bool:
        return self.opened_at is not None

    def allows(self) -> bool:
        return self.opened_at is None

    def success(self) -> None:
        self.consecutive_failures = 0

    def failure(self, now: float | None = None) -> bool:
        """Count a failure; True when this one opened the circuit."""
        self.consecutive_failures += 1
        if self.opened_at is None and self.consecutive_failures >= self.failures_to_open:
            self.opened_at = time.monotonic() if now is None else now
            self.times_opened += 1
            return True
        return False

    def due_for_probe(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        return self.opened_at is not None and now - self.opened_at >= self.open_s

    def close(self) -> None:
        self.opened_at = None
        self.consecutive_failures = 0
