"""The alert rules pass promtool (syntax and rule tests), keep the tiers' TTFT targets, and every hpcrag
series that the rules and the Grafana dashboard query is one the gateway exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
import yaml

from hpcrag.config import load_config
from hpcrag.metrics.gateway import GatewayMetrics
from tests.conftest import CONFIG_DIR

RULES = CONFIG_DIR / "prometheus" / "hpcrag-alerts.yml"
DASHBOARD = CONFIG_DIR / "grafana" / "hpcrag-serving.json"
promtool = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    promtool is None, reason="promtool missing: scripts/setup installs `prometheus`"
)


@needs_promtool
def test_promtool_checks_the_rules() -> None:
    result = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 12 rules found" in result.stdout


@needs_promtool
def test_each_alert_fires_on_its_series() -> None:
    result = subprocess.run(
        [promtool, "test", "rules", "hpcrag-alerts.test.yml"],
        cwd=RULES.parent,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_ttft_alerts_use_the_tier_targets() -> None:
    config = load_config()
    rules = {r["alert"]: r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    for name, tier in config.tiers.items():
        rule = rules[f"HighTtftTier{name.upper()}"]
        threshold = float(rule["expr"].rsplit(">", 1)[1])
        assert threshold == tier.ttft_p99_ms / 1000, name
        assert f'tier="{name}"' in rule["expr"]


def exported_names() -> set[str]:
    names = set()
    for metric in GatewayMetrics().registry.collect():
        kind = metric.type
        names.add(metric.name + ("_total" if kind == "counter" else ""))
        if kind == "histogram":
            names |= {f"{metric.name}_{suffix}" for suffix in ("bucket", "sum", "count")}
    return names


def queried_hpcrag_series() -> set[str]:
    exprs = [r["expr"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    dashboard = json.loads(DASHBOARD.read_text())
    exprs += [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    return {name for expr in exprs for name in re.findall(r"\bhpcrag_[a-z_]+", expr)}


def test_rules_and_dashboard_query_only_exported_series() -> None:
    queried = queried_hpcrag_series()
    assert len(queried) >= 10
    assert queried <= exported_names(), queried - exported_names()


def test_dashboard_is_grafana_json() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "hpcrag-serving"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"], panel["title"]


SEARCH_DASHBOARD = CONFIG_DIR / "grafana" / "hpcrag-search.json"


def test_the_search_dashboard_queries_only_what_a_search_service_exports(tmp_path) -> None:
    import numpy as np

    from hpcrag.search import BuildOptions, DistributedIndex, build_index
    from hpcrag.search.service import _Metrics

    np.save(tmp_path / "base.npy", np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32))
    build_index(tmp_path / "base.npy", tmp_path / "index", BuildOptions(nlist=4, nshards=2))
    exported = set()
    for metric in _Metrics(DistributedIndex.open(tmp_path / "index")).registry.collect():
        exported.add(metric.name + ("_total" if metric.type == "counter" else ""))
        if metric.type == "histogram":
            exported |= {f"{metric.name}_{suffix}" for suffix in ("bucket", "sum", "count")}
    dashboard = json.loads(SEARCH_DASHBOARD.read_text())
    assert dashboard["uid"] == "hpcrag-search"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\bhpcrag_[a-z_]+", target["expr"])
    }
    assert len(queried) >= 10 and queried <= exported, queried - exported
    assert {
        "hpcrag_index_updates_total",
        "hpcrag_index_update_seq",
        "hpcrag_search_strategy_queries_total",
    } <= queried
