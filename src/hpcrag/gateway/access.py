"""Who may send this request now: the API key (401), its rate limit and its daily budget (429).

Every refusal says why and what to do about it. Spend per key is the ledger's sum since 00:00 UTC,
re-read every refresh (so gateway replicas see each other's spend), plus what this gateway has
charged since that read.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from hpcrag.gateway.keys import ApiKey, hash_key
from hpcrag.util.http_server import bearer_token
from hpcrag.util.money import money


@dataclass(frozen=True)
class Refusal:
    status: int
    code: str
    message: str
    retry_after_s: float | None = None


@dataclass
class _Bucket:
    tokens: float
    updated: float


def utc_day_start(now: float | None = None) -> float:
    now = time.time() if now is None else now
    return now - now % 86400


@dataclass
class Access:
    keys: dict[str, ApiKey] = field(default_factory=dict)
    spend_read: dict[str, float] = field(default_factory=dict)
    spend_since_read: dict[str, float] = field(default_factory=dict)
    day_start: float = field(default_factory=utc_day_start)
    _buckets: dict[str, _Bucket] = field(default_factory=dict)

    def load(self, keys: dict[str, ApiKey], spend_today: dict[str, float], day_start: float) -> None:
        """Take a fresh read of the keys table and of today's spend from the ledger."""
        self.keys = keys
        self.spend_read = spend_today
        self.spend_since_read = {}
        self.day_start = day_start

    def authenticate(self, authorization: str | None) -> ApiKey | Refusal:
        token = bearer_token(authorization)
        if token is None:
            return Refusal(
                401,
                "missing_api_key",
                "no API key: send 'Authorization: Bearer <key>' (the openai client's api_key); "
                "an administrator makes one with `hpcrag gateway keys add NAME`",
            )
        # hpcrag keys are ASCII; anything else (even bytes that are not UTF-8) is simply not a key.
        key = self.keys.get(hash_key(token)) if token.isascii() else None
        if key is None:
            return Refusal(
                401,
                "invalid_api_key",
                "unknown or revoked API key; ask an administrator for a key "
                "(`hpcrag gateway keys list` shows the valid ones)",
            )
        return key

    def spent_today(self, key: ApiKey) -> float:
        return self.spend_read.get(key.name, 0.0) + self.spend_since_read.get(key.name, 0.0)

    def admit(self, key: ApiKey, now: float | None = None) -> Refusal | None:
        now = time.time() if now is None else now
        if now - self.day_start >= 86400:
            self.load(self.keys, {}, utc_day_start(now))
        if key.daily_budget_usd is not None and self.spent_today(key) >= key.daily_budget_usd:
            return Refusal(
                429,
                "budget_exceeded",
                f"the daily budget of key {key.name!r} (${money(key.daily_budget_usd)}) is spent: "
                f"${money(self.spent_today(key))} since 00:00 UTC; it resets at 00:00 UTC, or an "
                f"administrator raises it with `hpcrag gateway keys budget {key.name} USD`",
                retry_after_s=self.day_start + 86400 - now,
            )
        if key.rate_per_s is not None:
            burst = float(key.burst or max(1, round(key.rate_per_s)))
            bucket = self._buckets.setdefault(key.name, _Bucket(burst, now))
            bucket.tokens = min(burst, bucket.tokens + (now - bucket.updated) * key.rate_per_s)
            bucket.updated = now
            if bucket.tokens < 1.0:
                wait = (1.0 - bucket.tokens) / key.rate_per_s
                return Refusal(
                    429,
                    "rate_limited",
                    f"key {key.name!r} is limited to {key.rate_per_s:g} requests/s "
                    f"(bursts of {burst:g}); retry in {wait:.2f} s",
                    retry_after_s=wait,
                )
            bucket.tokens -= 1.0
        return None

    def charge(self, key_name: str, usd: float) -> None:
        self.spend_since_read[key_name] = self.spend_since_read.get(key_name, 0.0) + usd
