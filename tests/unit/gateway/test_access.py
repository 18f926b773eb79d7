"""Keys, rate limits and budgets: the refusals and what they say."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from hpcrag.errors import HpcragError
from hpcrag.gateway.access import Access, Refusal, utc_day_start
from hpcrag.gateway.keys import ApiKey, KeyStore, hash_key
from hpcrag.util.circuit import CircuitBreaker


@pytest.fixture
def store(tmp_path) -> KeyStore:
    return KeyStore(tmp_path / "gateway.sqlite")


def test_keys_are_stored_hashed_and_shown_once(store, tmp_path) -> None:
    key = store.create("alice", user_tier="pro", compliance=["hipaa"], daily_budget_usd=2.5)
    assert key.startswith("hpc-") and len(key) > 30
    assert key.encode() not in (tmp_path / "gateway.sqlite").read_bytes()
    (stored,) = store.all()
    assert (stored.name, stored.user_tier, stored.compliance, stored.daily_budget_usd) == (
        "alice",
        "pro",
        ("hipaa",),
        2.5,
    )
    with pytest.raises(HpcragError, match="a key named 'alice' exists already"):
        store.create("alice", user_tier="pro")
    with pytest.raises(HpcragError, match="no API key named 'bob'"):
        store.revoke("bob")
    with pytest.raises(HpcragError, match="daily budget must be 0 or more"):
        store.create("carol", user_tier="pro", daily_budget_usd=-1)


def test_missing_unknown_and_revoked_keys_are_401(store) -> None:
    key = store.create("alice", user_tier="pro")
    access = Access()
    access.load(store.active_by_hash(), {}, utc_day_start())
    assert access.authenticate(f"Bearer {key}").name == "alice"
    missing = access.authenticate(None)
    assert (
        isinstance(missing, Refusal) and missing.status == 401 and "Authorization: Bearer" in missing.message
    )
    unknown = access.authenticate("Bearer hpc-nope")
    assert isinstance(unknown, Refusal) and unknown.code == "invalid_api_key"
    store.revoke("alice")
    access.load(store.active_by_hash(), {}, utc_day_start())
    assert isinstance(access.authenticate(f"Bearer {key}"), Refusal)


def test_budget_counts_ledger_spend_and_local_charges(store) -> None:
    store.create("alice", user_tier="pro", daily_budget_usd=1.0)
    access = Access()
    day = utc_day_start(1_000_000.0)
    access.load(store.active_by_hash(), {"alice": 0.75}, day)
    alice = next(iter(access.keys.values()))
    assert access.admit(alice, now=day + 10) is None
    access.charge("alice", 0.25)
    refusal = access.admit(alice, now=day + 10)
    assert refusal is not None and refusal.status == 429 and refusal.code == "budget_exceeded"
    assert "daily budget of key 'alice' ($1.00) is spent: $1.00 since 00:00 UTC" in refusal.message
    assert refusal.retry_after_s == pytest.approx(86400 - 10)
    assert access.admit(alice, now=day + 86400 + 1) is None  # a new UTC day


def test_rate_limit_is_a_token_bucket(store) -> None:
    store.create("bot", user_tier="free", rate_per_s=2.0, burst=2)
    access = Access()
    access.load(store.active_by_hash(), {}, utc_day_start(0.0))
    bot = next(iter(access.keys.values()))
    assert access.admit(bot, now=100.0) is None
    assert access.admit(bot, now=100.0) is None
    refusal = access.admit(bot, now=100.0)
    assert refusal is not None and refusal.code == "rate_limited"
    assert refusal.retry_after_s == pytest.approx(0.5)
    assert "limited to 2 requests/s (bursts of 2); retry in 0.50 s" in refusal.message
    assert access.admit(bot, now=100.5) is None


def test_circuit_opens_after_consecutive_failures_and_closes() -> None:
    circuit = CircuitBreaker(failures_to_open=3, open_s=10.0)
    assert not circuit.failure(now=0.0) and not circuit.failure(now=0.0)
    circuit.success()
    assert not circuit.failure(now=1.0) and not circuit.failure(now=1.0)
    assert circuit.failure(now=1.0) and circuit.is_open and not circuit.allows()
    assert not circuit.due_for_probe(now=5.0) and circuit.due_for_probe(now=11.0)
    circuit.close()
    assert circuit.allows() and circuit.consecutive_failures == 0 and circuit.times_opened == 1


def test_the_bearer_scheme_is_case_insensitive_and_odd_tokens_are_unknown_keys() -> None:
    key = ApiKey(name="alice", key_hash=hash_key("hpc-secret"), user_tier="pro")
    access = Access()
    access.load({key.key_hash: key}, {}, utc_day_start())
    for header in ("Bearer hpc-secret", "bearer hpc-secret", "BEARER  hpc-secret "):
        assert access.authenticate(header) == key
    for header in ("Basic hpc-secret", "Bearer", "Bearer \udcff\udcfe", "hpc-secret"):
        refusal = access.authenticate(header)
        assert isinstance(refusal, Refusal) and refusal.status == 401


def test_a_backend_refusal_reaches_the_caller_in_the_openai_error_shape() -> None:
    import json

    from hpcrag.gateway.proxy import _openai_error

    endpoint = SimpleNamespace(name="slurm/nyc/7", row=SimpleNamespace(served_name="tiny-llama"))
    body = json.loads(_openai_error(endpoint, "/v1/embeddings", 404, b'{"detail":"Not Found"}'))
    assert body["error"]["code"] == "route_not_served"
    assert "slurm/nyc/7 (model tiny-llama) does not serve /v1/embeddings" in body["error"]["message"]
    refused = json.loads(_openai_error(endpoint, "/v1/completions", 422, b'{"detail":"bad logprobs"}'))
    assert refused["error"]["message"].endswith("refused the request (HTTP 422): bad logprobs")
    own = b'{"error": {"message": "too long", "type": "BadRequestError", "code": 400}}'
    assert _openai_error(endpoint, "/v1/completions", 400, own) == own
