"""A request that outlasts upstream_timeout_s is the request's doing when the endpoint is healthy: a 504,
not retried on another endpoint, and no count against any circuit (issue 12, defect 4)."""

from __future__ import annotations

import json

import httpx
import yaml

from hpcrag.serve.registry import Registry
from tests.integration.gateway_helpers import (
    HPCRAG,
    METRICS_TOKEN,
    free_port,
    gateway_env,
    hpcrag,
    metric,
    row,
    running,
    stub,
)


def test_a_slow_answer_is_a_504_that_blames_no_endpoint(tmp_path) -> None:
    env = gateway_env(tmp_path)
    settings_path = tmp_path / "site configs" / "gateway.yaml"
    settings = yaml.safe_load(settings_path.read_text())
    settings["upstream_timeout_s"] = 1
    settings_path.write_text(yaml.safe_dump(settings, sort_keys=False))
    slow = [free_port(), free_port()]
    registry = Registry(env["HPCRAG_REGISTRY"])
    for job, port in zip(("1", "2"), slow, strict=True):
        registry.add(row("nyc", job, "l", "large", port, 2.0))
    key = hpcrag(env, "gateway", "keys", "add", "patient").strip()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with (
        running(stub(slow[0], "large", "--delay-ms", "3000"), env, f"http://127.0.0.1:{slow[0]}/health",
                tmp_path / "a.log"),
        running(stub(slow[1], "large", "--delay-ms", "3000"), env, f"http://127.0.0.1:{slow[1]}/health",
                tmp_path / "b.log"),
        running([HPCRAG, "gateway", "serve", "--port", str(port)], env, f"{url}/health", tmp_path / "gw.log"),
    ):  # fmt: skip
        body = {"model": "tier-l", "messages": [{"role": "user", "content": "write a long essay"}]}
        for _ in range(4):  # more than circuit.failures (3)
            answer = httpx.post(
                url + "/v1/chat/completions",
                json=body,
                headers={"Authorization": f"Bearer {key}"},
                timeout=30,
            )
            assert answer.status_code == 504, answer.text
            assert answer.json()["error"]["code"] == "upstream_timeout"
            assert answer.headers["X-Hpcrag-Request-Id"] and answer.headers["X-Hpcrag-Tier"] == "l"
        text = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}).text
        assert metric(text, "hpcrag_endpoint_circuit_open") == 0
        assert metric(text, "hpcrag_routing_fallbacks_total", kind="retry") == 0
    rows = json.loads(hpcrag(env, "gateway", "log", "--last", "10", "--json"))
    assert [(r["status"], r["outcome"], r["attempts"]) for r in rows] == [(504, "upstream_timeout", 1)] * 4
