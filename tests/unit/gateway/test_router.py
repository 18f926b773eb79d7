"""The router over registry rows: tier choice, filters with their reasons, scores, fallback order."""

from __future__ import annotations

import pytest

from hpcrag.gateway.complexity import HeuristicScorer
from hpcrag.gateway.endpoints import EndpointTable
from hpcrag.gateway.router import Router, RouteRequest, RoutingError
from tests.unit.gateway.conftest import endpoint
from tests.unit.gateway.test_complexity import ANALYTICAL, SHORT


def make_router(config, rows) -> Router:
    table = EndpointTable(config)
    table.sync(rows)
    return Router(config, table, HeuristicScorer(config.gateway))


def ask(model: str = "auto", text: str = SHORT, **fields) -> RouteRequest:
    return RouteRequest(
        model=model,
        text=text,
        output_tokens=fields.pop("output_tokens", 64),
        user_tier=fields.pop("user_tier", "pro"),
        **fields,
    )


def test_auto_sends_short_to_s_and_analytical_down_to_the_highest_tier_served(config) -> None:
    router = make_router(config, [endpoint("s", job_id="1"), endpoint("m", site="sf", job_id="2")])
    short = router.route(ask())
    assert short.wanted_tier == "s" and short.candidates[0].endpoint.tier == "s"
    assert not short.fallback
    long = router.route(ask(text=ANALYTICAL))
    assert long.wanted_tier == "xl"
    assert [c.endpoint.tier for c in long.candidates] == ["m", "s"]  # xl, l absent: down the tiers
    assert long.fallback and "fallback to tier m" in long.reason
    assert long.record()["complexity"] == 1.0


def test_fallback_goes_up_when_nothing_below(config) -> None:
    router = make_router(config, [endpoint("m")])
    decision = router.route(ask())
    assert decision.wanted_tier == "s"
    assert [c.endpoint.tier for c in decision.candidates] == ["m"]


def test_pinned_tier_never_falls_back(config) -> None:
    router = make_router(config, [endpoint("s")])
    with pytest.raises(RoutingError) as error:
        router.route(ask(model="tier-m"))
    assert error.value.status == 503
    assert "tiers tried: m" in str(error.value) and "no healthy server" in str(error.value)
    with pytest.raises(RoutingError, match="name different tiers"):
        router.route(ask(model="tier-m", tier="s"))
    with pytest.raises(RoutingError, match=r"unknown tier 'q'; tiers: s, m, l, xl"):
        router.route(ask(model="tier-q"))


def test_model_name_routes_to_its_servers_and_unknown_model_is_404(config) -> None:
    router = make_router(
        config, [endpoint("s", served_name="qwen"), endpoint("m", job_id="2", served_name="llama")]
    )
    decision = router.route(ask(model="llama"))
    assert [c.endpoint.row.served_name for c in decision.candidates] == ["llama"]
    with pytest.raises(RoutingError) as error:
        router.route(ask(model="gpt-4"))
    assert error.value.status == 404
    assert "served: llama, qwen" in str(error.value)


def test_compliance_keeps_only_certified_endpoints(config) -> None:
    onprem = endpoint("s", job_id="1")
    runpod = endpoint("s", site="eu", provider="runpod", job_id="pod", usd_per_hour=0.2)
    router = make_router(config, [onprem, runpod])
    # Cheaper RunPod wins without requirements...
    assert router.route(ask(user_tier="free")).candidates[0].endpoint.row.provider == "runpod"
    # ...but serverless is not HIPAA-certified (PRD §13), so HIPAA goes on-prem, with the reason kept.
    decision = router.route(ask(user_tier="free", compliance=frozenset({"hipaa"})))
    assert [c.endpoint.row.provider for c in decision.candidates] == ["slurm"]
    assert decision.rejected == [{"endpoint": "runpod/eu/pod", "tier": "s", "why": "not certified for hipaa"}]
    with pytest.raises(RoutingError, match="not certified for air-gapped"):
        make_router(config, [runpod]).route(ask(compliance=frozenset({"air-gapped"})))


def test_user_tier_weights_trade_cost_against_quality(config) -> None:
    # A100 for tier S on-prem is "viable" (0.7) and dearer; L40S is "recommended" (1.0) and cheaper.
    cheap = endpoint("s", job_id="1", gpu_type="l40s", usd_per_hour=0.45)
    aws = endpoint("s", site="us-east-1", provider="aws", job_id="i-1", gpu_type="l40s", usd_per_hour=1.5)
    router = make_router(config, [cheap, aws])
    for user_tier in ("free", "pro", "enterprise"):
        assert router.route(ask(user_tier=user_tier)).candidates[0].endpoint.row.provider == "slurm"
    ranked = router.route(ask(user_tier="free")).candidates
    weights = config.gateway.user_tiers["free"]
    cost_ratio = ranked[0].cost_usd / ranked[1].cost_usd
    latency_ratio = ranked[0].latency_ms / ranked[1].latency_ms
    expected = weights.cost * cost_ratio + weights.latency * latency_ratio + weights.quality * 1.0
    assert ranked[1].score == pytest.approx(expected)
    assert cost_ratio == pytest.approx(0.45 / 1.5)


def test_limits_filter_with_estimates_and_reasons(config) -> None:
    router = make_router(config, [endpoint("s")])
    # Prior estimates: tier S TTFT target 100 ms + 1 ms network; 400 tokens/s decode and throughput.
    candidate = router.route(ask(output_tokens=100)).candidates[0]
    assert candidate.ttft_ms == pytest.approx(101.0)
    assert candidate.latency_ms == pytest.approx(1 + 100 + 250)
    prompt_tokens = len(SHORT) // 4
    assert candidate.cost_usd == pytest.approx((prompt_tokens + 100) * 0.45 / 3600 / 400)
    with pytest.raises(RoutingError, match=r"estimated TTFT 101 ms > limit 50 ms"):
        router.route(ask(max_ttft_ms=50))
    with pytest.raises(RoutingError, match=r"estimated \$0\.00002\d+ > limit \$0\.000001"):
        router.route(ask(max_cost_usd=0.000001))


def test_measurements_replace_priors(config) -> None:
    router = make_router(config, [endpoint("s")])
    live = router.table.live()[0]
    live.waiting = 2
    live.begin(now=0.0)
    live.end(tokens=800, ttft_s=0.02, decode_s=0.5, completion_tokens=101, now=2.0)
    live.settle_throughput(now=2.0)
    assert live.ttft_s.value == pytest.approx(0.02) and live.ttft_s.basis == "measured"
    assert live.decode_tps.value == pytest.approx(200.0)
    assert live.throughput_tps.value == pytest.approx(400.0)
    candidate = router.route(ask(output_tokens=100)).candidates[0]
    per_request_ms = 20 + 500
    assert candidate.ttft_ms == pytest.approx(1 + 20 + 2 * per_request_ms)
    assert candidate.as_dict()["basis"] == {"ttft": "measured", "throughput": "measured"}


def test_open_circuit_and_pins_exclude(config) -> None:
    nyc, sf = endpoint("s", job_id="1"), endpoint("s", site="sf", job_id="2")
    router = make_router(config, [nyc, sf])
    assert [c.endpoint.row.site for c in router.route(ask(site="sf")).candidates] == ["sf"]
    with pytest.raises(RoutingError, match="provider slurm, pinned to aws"):
        router.route(ask(provider="aws"))
    first = router.table.live()[0]
    for _ in range(config.gateway.circuit.failures):
        first.circuit.failure()
    decision = router.route(ask())
    assert [c.endpoint.name for c in decision.candidates] == ["slurm/sf/2"]
    assert decision.rejected[0]["why"] == "circuit open after repeated failures"


def test_registry_sync_drops_stale_and_restarts_fresh(config) -> None:
    table = EndpointTable(config)
    row = endpoint("s")
    table.sync([row])
    table.live()[0].ttft_s.add(0.5)
    table.sync([row])
    assert table.live()[0].ttft_s.samples == 1  # same server, measurements kept
    moved = endpoint("s", port=9100)
    table.sync([moved])
    assert table.live()[0].ttft_s.samples == 0  # requeued on a new port: a new process
    stale = endpoint("s")
    stale.heartbeat_at = 0.0
    table.sync([stale])
    assert table.live() == []


def test_bad_quality_and_user_tier_are_400(config) -> None:
    router = make_router(config, [endpoint("s")])
    with pytest.raises(RoutingError, match="unknown quality 'best'; one of: low, medium, high, maximum"):
        router.route(ask(quality="best"))
    with pytest.raises(RoutingError, match="unknown user tier 'vip'"):
        router.route(ask(user_tier="vip"))
