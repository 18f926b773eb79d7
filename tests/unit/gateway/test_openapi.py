"""The gateway's OpenAPI document: valid OpenAPI 3.1, loadable by Schemathesis, in step with the models."""

from __future__ import annotations

import json
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from openapi_spec_validator import validate as validate_spec

from hpcrag.config.schema import RequestLimits
from hpcrag.gateway.openapi import openapi_document
from hpcrag.gateway.requests import InvalidRequest, parse_body, validate

ROUTES = {"/v1/chat/completions": "chat", "/v1/completions": "completions", "/v1/embeddings": "embeddings"}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return openapi_document()


def test_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    assert document["openapi"] == "3.1.0"
    validate_spec(document)
    json.dumps(document)  # served as it is


def test_every_route_is_described(document: dict[str, Any]) -> None:
    methods = {(path, method) for path, item in document["paths"].items() for method in item}
    assert methods == {
        *((path, "post") for path in ROUTES),
        ("/v1/rag/query", "post"),
        ("/v1/models", "get"),
        ("/v1/models/{model}", "get"),
        ("/health", "get"),
        ("/metrics", "get"),
        ("/openapi.json", "get"),
    }


def test_api_routes_need_the_bearer_key(document: dict[str, Any]) -> None:
    assert document["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "An hpcrag API key",
    }
    for path, item in document["paths"].items():
        for operation in item.values():
            secured = operation.get("security") == [{"bearer": []}]
            assert secured == (path.startswith("/v1/") or path == "/metrics"), path


def test_inference_routes_answer_in_the_openai_error_shape(document: dict[str, Any]) -> None:
    error = document["components"]["schemas"]["Error"]
    assert error["properties"]["error"]["required"] == ["message", "type", "code"]
    for path in ROUTES:
        responses = document["paths"][path]["post"]["responses"]
        assert set(responses) == {"200", "400", "401", "404", "413", "429", "502", "503"}
        for status, response in responses.items():
            if status != "200":
                assert response["content"]["application/json"]["schema"] == {
                    "$ref": "#/components/schemas/Error"
                }


def test_request_bodies_come_from_the_models_with_the_configured_bounds() -> None:
    limits = RequestLimits(max_model_chars=64, max_messages=10, max_header_bytes=100)
    document = openapi_document(limits)
    schemas = document["components"]["schemas"]
    chat = schemas["ChatCompletionRequest"]
    assert chat["properties"]["model"]["maxLength"] == 64
    assert chat["properties"]["messages"]["maxItems"] == 10
    assert {"model", "messages"} <= set(chat["required"])
    assert chat["additionalProperties"] is True  # vLLM's extra fields pass through
    assert schemas["CompletionRequest"]["required"] == ["model", "prompt"]
    assert schemas["EmbeddingRequest"]["required"] == ["model", "input"]
    body = document["paths"]["/v1/chat/completions"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ChatCompletionRequest"
    }
    parameters = document["paths"]["/v1/chat/completions"]["post"]["parameters"]
    assert {p["name"]: p["schema"].get("maxLength") for p in parameters}["X-Hpcrag-Tier"] == 100
    validate_spec(document)


def test_schemathesis_loads_every_operation(document: dict[str, Any]) -> None:
    schema = schemathesis.openapi.from_dict(document)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {(o.method.upper(), o.path) for o in operations} == {
        (method.upper(), path) for path, item in document["paths"].items() for method in item
    }


@pytest.mark.parametrize("path", list(ROUTES))
def test_bodies_generated_from_the_document_are_a_model_or_a_400(document: dict[str, Any], path: str) -> None:
    """Schemathesis' bodies for each route, through the gateway's own checks: nothing but InvalidRequest."""
    limits = RequestLimits()
    operation = schemathesis.openapi.from_dict(document)[path]["POST"]
    accepted = []

    # derandomize: the same bodies every run, so "some were accepted" is a fact, not luck.
    @settings(
        max_examples=60,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy())
    def check(case: Any) -> None:
        raw = json.dumps(case.body).encode()
        try:
            accepted.append(validate(ROUTES[path], parse_body(raw, limits), limits))
        except InvalidRequest as exc:
            assert exc.status in (400, 413) and len(str(exc)) < 1000

    check()
    assert accepted, "no generated body that the document allows was accepted by the models"
