"""API keys: who may call the gateway, at which user tier, under which compliance needs, for how much.

Only a key's SHA-256 is stored; the key itself is shown once, when it is made. Keys live in the
gateway's database so that `hpcrag gateway keys` changes them while gateways run (they re-read the
table every refresh).

Every setting is checked here, so that no path (the CLI, the demo, a script) can store a key that is
refused forever or a name that garbles a terminal: see `check_name` and `check_limits`.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import secrets
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from hpcrag.cost.ledger import DATABASE_FIX
from hpcrag.errors import HpcragError
from hpcrag.util import sqlite

SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    name TEXT PRIMARY KEY,
    key_hash TEXT NOT NULL UNIQUE,
    user_tier TEXT NOT NULL,
    compliance TEXT NOT NULL DEFAULT '[]',
    daily_budget_usd REAL,
    rate_per_s REAL,
    burst INTEGER,
    created_at REAL NOT NULL,
    revoked_at REAL
);
"""
PREFIX = "hpc-"
NAME_RULE = (
    "key names are 1-64 characters: ASCII letters, digits, '.', '_', '-' and '@', starting with a letter "
    "or a digit"
)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")


@dataclass(frozen=True)
class ApiKey:
    name: str
    key_hash: str
    user_tier: str
    compliance: tuple[str, ...] = ()
    daily_budget_usd: float | None = None
    rate_per_s: float | None = None
    burst: int | None = None
    created_at: float = 0.0
    revoked_at: float | None = None


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def check_name(name: str) -> None:
    """Refuse a name that a terminal, a shell or a log line could not show as it is."""
    if not _NAME.fullmatch(name):
        # repr() escapes what a terminal would act on (ESC, newlines, lone surrogates from non-UTF-8 argv).
        shown = repr(name) if len(name) <= 70 else f"{name[:70]!r}... ({len(name)} characters)"
        raise HpcragError(f"invalid key name {shown}: {NAME_RULE}")


def check_budget(daily_budget_usd: float | None) -> None:
    if daily_budget_usd is not None and not (math.isfinite(daily_budget_usd) and daily_budget_usd >= 0):
        raise HpcragError(
            f"the daily budget must be 0 or more dollars (a finite number), got {daily_budget_usd}"
        )


def check_limits(rate_per_s: float | None, burst: int | None) -> None:
    """A rate must be a finite number above 0, and a burst a whole number of at least 1 request.

    A burst below 1 would leave the key's token bucket below one request for good: refused forever.
    """
    if rate_per_s is not None and not (math.isfinite(rate_per_s) and rate_per_s > 0):
        raise HpcragError(f"the rate limit must be a finite number above 0 requests/s, got {rate_per_s}")
    if burst is not None:
        if rate_per_s is None:
            raise HpcragError("a burst applies to a rate limit: give --rate too, or leave out --burst")
        if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
            raise HpcragError(f"the burst must be a whole number of requests, 1 or more, got {burst!r}")


class KeyStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        sqlite.initialise(self.path, SCHEMA, "the gateway database", DATABASE_FIX)

    def create(
        self,
        name: str,
        *,
        user_tier: str,
        compliance: list[str] | tuple[str, ...] = (),
        daily_budget_usd: float | None = None,
        rate_per_s: float | None = None,
        burst: int | None = None,
    ) -> str:
        """Store a new key and return it; this is the only time the key itself exists."""
        check_name(name)
        check_budget(daily_budget_usd)
        check_limits(rate_per_s, burst)
        key = PREFIX + secrets.token_urlsafe(24)
        try:
            with sqlite.transaction(self.path) as db:
                db.execute(
                    "INSERT INTO api_keys (name, key_hash, user_tier, compliance, daily_budget_usd, "
                    "rate_per_s, burst, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        name,
                        hash_key(key),
                        user_tier,
                        json.dumps(sorted(compliance)),
                        daily_budget_usd,
                        rate_per_s,
                        burst,
                        time.time(),
                    ),
                )
        except sqlite3.IntegrityError:
            raise HpcragError(
                f"a key named {name!r} exists already; revoke it first or pick another name"
            ) from None
        return key

    def set_budget(self, name: str, daily_budget_usd: float | None) -> None:
        check_budget(daily_budget_usd)
        self._update(name, "daily_budget_usd = ?", daily_budget_usd)

    def revoke(self, name: str) -> None:
        self._update(name, "revoked_at = ?", time.time())

    def _update(self, name: str, assignment: str, value: object) -> None:
        with sqlite.transaction(self.path) as db:
            cursor = db.execute(f"UPDATE api_keys SET {assignment} WHERE name = ?", (value, name))
        if cursor.rowcount == 0:
            raise HpcragError(f"no API key named {name!r}; see `hpcrag gateway keys list`")

    def all(self) -> list[ApiKey]:
        with sqlite.connect(self.path) as db:
            rows = db.execute("SELECT * FROM api_keys ORDER BY name").fetchall()
        return [ApiKey(**{**dict(row), "compliance": tuple(json.loads(row["compliance"]))}) for row in rows]

    def active_by_hash(self) -> dict[str, ApiKey]:
        return {k.key_hash: k for k in self.all() if k.revoked_at is None}
