"""The key store refuses every name a terminal could not show and every setting that breaks a key."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hpcrag.errors import HpcragError
from hpcrag.gateway.access import Access
from hpcrag.gateway.keys import NAME_RULE, KeyStore, check_name

RULE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")


@pytest.fixture
def store(tmp_path: Path) -> KeyStore:
    return KeyStore(tmp_path / "gateway.sqlite")


@pytest.mark.parametrize(
    "name",
    [
        "",
        "\udcff",
        "a\nb",
        "alice\n",
        "a\x1b[31mb",
        "\x1b",
        "\u202eecila",
        "a\u200bb",
        "a b",
        "é",
        "-rf",
        ".",
        "a" * 65,
        pytest.param("a" * 5_000_000, id="5M-characters"),
    ],
)
def test_a_bad_name_is_refused_with_the_rule(store: KeyStore, name: str) -> None:
    with pytest.raises(HpcragError) as refused:
        store.create(name, user_tier="free")
    assert str(refused.value).startswith("invalid key name ") and NAME_RULE in str(refused.value)
    assert str(refused.value).isprintable() and len(str(refused.value)) < 300
    assert store.all() == []


@pytest.mark.parametrize("name", ["a", "alice", "bob@example.com", "team.a_b-1", "9", "a" * 64])
def test_a_good_name_is_stored(store: KeyStore, name: str) -> None:
    key = store.create(name, user_tier="free")
    assert key.startswith("hpc-") and [k.name for k in store.all()] == [name]


@settings(max_examples=200, deadline=1000)
@given(st.text(max_size=80) | st.from_regex(RULE, fullmatch=True))
def test_only_names_of_the_rule_pass_and_they_are_plain_ascii(name: str) -> None:
    if RULE.fullmatch(name):
        check_name(name)
        assert name.isascii() and name.isprintable() and 1 <= len(name) <= 64
    else:
        with pytest.raises(HpcragError, match="invalid key name"):
            check_name(name)


@pytest.mark.parametrize("usd", [math.nan, math.inf, -math.inf, -1.0, -1e-9])
def test_a_budget_must_be_finite_and_not_negative(store: KeyStore, usd: float) -> None:
    with pytest.raises(
        HpcragError, match=r"the daily budget must be 0 or more dollars \(a finite number\), got "
    ):
        store.create("alice", user_tier="free", daily_budget_usd=usd)
    store.create("bob", user_tier="free", daily_budget_usd=1.0)
    with pytest.raises(HpcragError, match="the daily budget must be 0 or more dollars"):
        store.set_budget("bob", usd)
    assert [(k.name, k.daily_budget_usd) for k in store.all()] == [("bob", 1.0)]


def test_a_tiny_or_zero_budget_is_kept_exactly(store: KeyStore) -> None:
    store.create("tiny", user_tier="free", daily_budget_usd=0.000001)
    store.create("none", user_tier="free", daily_budget_usd=0.0)
    assert {k.name: k.daily_budget_usd for k in store.all()} == {"none": 0.0, "tiny": 0.000001}


@pytest.mark.parametrize(
    ("rate", "burst", "message"),
    [
        (0.0, None, "the rate limit must be a finite number above 0"),
        (-1.0, None, "the rate limit must be a finite number above 0"),
        (math.nan, None, "the rate limit must be a finite number above 0"),
        (math.inf, None, "the rate limit must be a finite number above 0"),
        (1.0, -3, "the burst must be a whole number of requests, 1 or more, got -3"),
        (1.0, 0, "the burst must be a whole number of requests, 1 or more, got 0"),
        (None, 5, "a burst applies to a rate limit: give --rate too"),
    ],
)
def test_limits_that_would_refuse_a_key_forever_are_refused(
    store: KeyStore, rate: float | None, burst: int | None, message: str
) -> None:
    with pytest.raises(HpcragError, match=re.escape(message)):
        store.create("alice", user_tier="free", rate_per_s=rate, burst=burst)
    assert store.all() == []


@settings(max_examples=200, deadline=1000)
@given(
    rate=st.floats(min_value=1e-3, max_value=1e6), burst=st.none() | st.integers(min_value=1, max_value=10**6)
)
def test_every_key_the_store_accepts_is_admitted_once_when_fresh(rate: float, burst: int | None) -> None:
    from hpcrag.gateway.keys import ApiKey, check_limits

    check_limits(rate, burst)
    key = ApiKey(name="k", key_hash="h", user_tier="free", rate_per_s=rate, burst=burst)
    assert Access(keys={"h": key}).admit(key, now=1000.0) is None
