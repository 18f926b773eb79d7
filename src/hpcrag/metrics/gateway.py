"""The gateway's Prometheus metrics, in a registry of their own (served at the gateway's /metrics).

Names and labels are what the alert rules in site-configs/prometheus/ and the dashboard in
site-configs/grafana/ query; tests check that every series those files name is exported here.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.metrics import MetricWrapperBase

# The *_created series double the output and no rule or panel reads them.
disable_created_metrics()

ENDPOINT = ("tier", "site", "provider")
# From well under a millisecond (the gateway's own share) to the minutes a long completion takes.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class GatewayMetrics:
    def __init__(self) -> None:
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "hpcrag_gateway_requests",
            "Requests answered, by where they went and HTTP status",
            [*ENDPOINT, "route", "status"],
            registry=r,
        )
        self.ttft = Histogram(
            "hpcrag_gateway_ttft_seconds",
            "Time to the first byte of the answer",
            ENDPOINT,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.latency = Histogram(
            "hpcrag_gateway_request_latency_seconds",
            "Time to the whole answer",
            ENDPOINT,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "hpcrag_gateway_tokens", "Tokens from vLLM's usage", [*ENDPOINT, "type"], registry=r
        )
        self.cost = Counter("hpcrag_cost_usd", "Dollars charged to requests", [*ENDPOINT, "key"], registry=r)
        self.decisions = Counter(
            "hpcrag_routing_decisions",
            "Routing decisions by wanted and chosen tier",
            ["wanted_tier", "tier"],
            registry=r,
        )
        self.fallbacks = Counter(
            "hpcrag_routing_fallbacks",
            "Requests sent to another tier or retried on another endpoint",
            ["kind", "tier"],
            registry=r,
        )
        self.budget_rejections = Counter(
            "hpcrag_budget_rejections",
            "Requests refused because the key's daily budget is spent",
            ["key"],
            registry=r,
        )
        self.access_rejections = Counter(
            "hpcrag_access_rejections",
            "Requests refused for a missing or unknown key or a rate limit",
            ["reason"],
            registry=r,
        )
        self.circuit_open = Gauge(
            "hpcrag_endpoint_circuit_open",
            "1 while an endpoint's circuit is open",
            [*ENDPOINT, "endpoint"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "hpcrag_endpoint_queue_depth",
            "Requests waiting in an endpoint's vLLM queue (its /metrics)",
            [*ENDPOINT, "endpoint"],
            registry=r,
        )
        self.endpoints = Gauge(
            "hpcrag_gateway_endpoints", "Healthy endpoints the gateway routes to", ["tier"], registry=r
        )
        self.ledger_writer_up = Gauge(
            "hpcrag_ledger_writer_up", "1 while the usage ledger's writer thread runs", registry=r
        )
        self.ledger_stalled = Gauge(
            "hpcrag_ledger_write_wait_seconds",
            "How long the ledger write in progress has waited (0 when idle; a locked or full disk grows it)",
            registry=r,
        )
        self.ledger_rows_dropped = Gauge(
            "hpcrag_ledger_rows_dropped",
            "Ledger rows that could not be written at all since the gateway started (logged)",
            registry=r,
        )
        # RAG served at the gateway (`model: rag:...`, /v1/rag/query); `collection` is "" for a name
        # that is not a collection, so a caller cannot grow the label set.
        self.rag_requests = Counter(
            "hpcrag_rag_requests",
            "RAG requests by collection and HTTP status",
            ["collection", "status"],
            registry=r,
        )
        self.rag_retrieval = Histogram(
            "hpcrag_rag_retrieval_seconds",
            "Time from question to prompt: PII check, retrieval, ranking and the fenced prompt",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.rag_citations_removed = Counter(
            "hpcrag_rag_citations_removed",
            "Citation markers removed from answers for naming a source that was not given",
            registry=r,
        )
        self.rag_unsupported = Counter(
            "hpcrag_rag_unsupported_sentences",
            "Answer sentences that their cited sources do not back",
            registry=r,
        )
        self.rag_injection_flags = Counter(
            "hpcrag_rag_injection_flags",
            "Retrieved chunks flagged as trying to instruct the model",
            ["stage"],
            registry=r,
        )
        self.rag_pii_masked = Counter(
            "hpcrag_rag_pii_masked", "Texts whose personal data was masked", ["what"], registry=r
        )

    def child(self, metric: MetricWrapperBase, *labels: str) -> Any:
        """`metric.labels(*labels)`, looked up once: the gateway asks for the same few on every request."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found
