"""The OpenAPI 3.1 description of the gateway, served at GET /openapi.json.

Request bodies come from the same pydantic models that validate them (`gateway.requests`), with the
configured bounds written in, so the description cannot drift from what is accepted; the answers
follow the OpenAI API, and every refusal has the OpenAI error shape. RAG is described too: the `rag:`
models of the chat route with their extra request and answer fields, and POST /v1/rag/query. The test
suite validates the document with openapi-spec-validator and loads it with Schemathesis.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from hpcrag.config.schema import RequestLimits
from hpcrag.gateway.rag import FILTERS_FIELD, RagQueryRequest
from hpcrag.gateway.requests import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    OpenAIRequest,
)

_REF = "#/components/schemas/{model}"
_BEARER = [{"bearer": []}]

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "code"],
            "properties": {
                "message": {"type": "string", "description": "What was wrong, where, and what to send"},
                "type": {
                    "type": "string",
                    "examples": ["invalid_request_error", "authentication_error", "rate_limit_error"],
                },
                "code": {"type": ["string", "null"], "examples": ["invalid_request", "body_too_large"]},
            },
        }
    },
}
_ERRORS = {
    "400": "A malformed body, a field of the wrong type or out of range, or a bad X-Hpcrag-* header",
    "401": "A missing, unknown or revoked API key",
    "404": "No such model, tier or route",
    "413": "The body or its text beyond the gateway's limits",
    "429": "The key's rate limit or budget is spent (see Retry-After)",
    "502": "The backend failed or answered malformed",
    "503": "No usable endpoint for the request now (all circuits open or none serving)",
}
_OBJECT = {"type": "object", "additionalProperties": True}
_USAGE = {
    "type": "object",
    "properties": {
        "prompt_tokens": {"type": "integer"},
        "completion_tokens": {"type": "integer"},
        "total_tokens": {"type": "integer"},
    },
}
_RAG_MODELS = (
    "rag:COLLECTION answers the last user message (earlier turns are not sent) from the collection's "
    "sources, at the collection's tier; rag:COLLECTION:tier-<tier> pins a tier, rag:COLLECTION:auto lets "
    "the router choose"
)
_SOURCE = {
    "type": "object",
    "required": ["number", "chunk_id", "document", "title", "section", "scores"],
    "properties": {
        "number": {"type": "integer", "description": "As the answer cites it: [1]"},
        "chunk_id": {"type": "integer"},
        "document": {"type": "string"},
        "title": {"type": "string"},
        "section": {"type": "array", "items": {"type": "string"}},
        "anchor": {"type": ["string", "null"]},
        "scores": {"type": "object", "additionalProperties": {"type": "number"}},
        "injection": {"type": "array", "items": {"type": "string"}, "description": "Injection findings"},
        "excerpt": {"type": "string", "description": "The chunk's first characters (chat answers)"},
        "text": {"type": "string", "description": "The chunk as given to the model (/v1/rag/query)"},
    },
}
_CITATIONS = {
    "type": "object",
    "properties": {
        "cited": {"type": "array", "items": {"type": "integer"}},
        "removed": {
            "type": "array",
            "items": {"type": "string"},
            "description": "Markers that named a source not given, removed from the answer",
        },
        "unsupported_sentences": {"type": "array", "items": {"type": "string"}},
    },
}
_ANSWERS = {
    "ChatCompletion": {
        "type": "object",
        "required": ["id", "object", "choices"],
        "properties": {
            "id": {"type": "string"},
            "object": {"const": "chat.completion"},
            "model": {"type": "string"},
            "choices": {"type": "array", "items": _OBJECT},
            "usage": _USAGE,
            "hpcrag_sources": {
                "type": "array",
                "items": {"$ref": "#/components/schemas/RagSource"},
                "description": "rag: models only: the numbered sources the answer cites (in a stream: on "
                "the last event before data: [DONE], whose choices are empty)",
            },
            "hpcrag_citations": {
                "$ref": "#/components/schemas/RagCitations",
                "description": "rag: models only: the citations kept and removed",
            },
        },
    },
    "RagSource": _SOURCE,
    "RagCitations": _CITATIONS,
    "RagAnswer": {
        "type": "object",
        "required": ["answer", "sources", "citations", "tier"],
        "properties": {
            "answer": {"type": "string", "description": "The answer, citations checked against sources"},
            "sources": {"type": "array", "items": {"$ref": "#/components/schemas/RagSource"}},
            "citations": _CITATIONS,
            "unsupported_sentences": {"type": "array", "items": {"type": "string"}},
            "support": {"type": "array", "items": _OBJECT},
            "tier": {"type": "string"},
            "model": {"type": ["string", "null"]},
            "usage": {"anyOf": [_USAGE, {"type": "null"}]},
            "seconds": {"type": "object", "additionalProperties": {"type": "number"}},
        },
    },
    "RagSources": {
        "type": "object",
        "required": ["collection", "tier", "sources"],
        "description": "retrieve_only: the sources a model would be given, best first; no model called",
        "properties": {
            "collection": {"type": "string"},
            "tier": {"type": "string"},
            "sources": {"type": "array", "items": {"$ref": "#/components/schemas/RagSource"}},
            "seconds": {"type": "object", "additionalProperties": {"type": "number"}},
        },
    },
    "Completion": {
        "type": "object",
        "required": ["id", "object", "choices"],
        "properties": {
            "id": {"type": "string"},
            "object": {"const": "text_completion"},
            "model": {"type": "string"},
            "choices": {"type": "array", "items": _OBJECT},
            "usage": _USAGE,
        },
    },
    "EmbeddingList": {
        "type": "object",
        "required": ["object", "data"],
        "properties": {
            "object": {"const": "list"},
            "model": {"type": "string"},
            "data": {"type": "array", "items": _OBJECT},
            "usage": _USAGE,
        },
    },
    "Model": {
        "type": "object",
        "required": ["id", "object", "created", "owned_by"],
        "properties": {
            "id": {"type": "string"},
            "object": {"const": "model"},
            "created": {"type": "integer"},
            "owned_by": {"type": "string"},
        },
    },
    "ModelList": {
        "type": "object",
        "required": ["object", "data"],
        "properties": {
            "object": {"const": "list"},
            "data": {"type": "array", "items": {"$ref": "#/components/schemas/Model"}},
        },
    },
    "Health": {
        "type": "object",
        "required": ["status", "endpoints", "usable"],
        "properties": {
            "status": {"type": "string", "examples": ["ok", "ledger_down"]},
            "endpoints": {"type": "integer", "description": "Endpoints registered and live"},
            "usable": {"type": "integer", "description": "Live endpoints whose circuit is closed"},
            "message": {"type": "string"},
        },
    },
}
_ROUTES: list[tuple[str, type[OpenAIRequest], str, str]] = [
    (
        "/v1/chat/completions",
        ChatCompletionRequest,
        "ChatCompletion",
        "A chat completion, routed to a tier; with a rag: model, an answer cited from a collection",
    ),
    ("/v1/completions", CompletionRequest, "Completion", "A text completion, routed to a tier"),
    ("/v1/embeddings", EmbeddingRequest, "EmbeddingList", "Embeddings of the input, from an embedding tier"),
]
_RESPONSE_HEADERS = {
    "X-Hpcrag-Request-Id": "The request's id in the ledger",
    "X-Hpcrag-Tier": "The tier that answered",
    "X-Hpcrag-Endpoint": "The endpoint that answered",
}


def openapi_document(limits: RequestLimits | None = None) -> dict[str, Any]:
    """The gateway's routes as an OpenAPI 3.1 document, its bounds taken from `limits`."""
    limits = limits or RequestLimits()
    schemas = copy.deepcopy(_model_schemas())
    _bound(schemas, limits)
    schemas.update(_ANSWERS)
    schemas["Error"] = _ERROR
    schemas["RagQueryRequest"] = copy.deepcopy(_rag_query_schema())
    paths: dict[str, Any] = {
        path: {"post": _inference(path, m, answer, summary, limits)} for path, m, answer, summary in _ROUTES
    }
    paths["/v1/rag/query"] = {"post": _rag_query(limits)}
    paths["/v1/models"] = {
        "get": _get("The models, tiers, 'auto' and rag:COLLECTION per collection served now", "ModelList")
    }
    paths["/v1/models/{model}"] = {
        "get": {
            **_get("One served model (the openai client's models.retrieve)", "Model"),
            "parameters": [
                {
                    "name": "model",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "minLength": 1, "maxLength": limits.max_model_chars},
                    "description": "A model id as GET /v1/models lists it (it may contain '/')",
                }
            ],
        }
    }
    paths["/health"] = {
        "get": {
            "summary": "Whether the gateway can answer and record: 503 when its ledger writer stopped",
            "operationId": "health",
            "responses": {
                "200": _json("Serving", "Health"),
                "503": _json("The ledger writer stopped: answers would go unrecorded", "Health"),
            },
        }
    }
    paths["/metrics"] = {
        "get": {
            "summary": "Prometheus metrics; on the API port only with the metrics token as bearer",
            "operationId": "metrics",
            "security": _BEARER,
            "responses": {
                "200": {
                    "description": "Prometheus text exposition",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                },
                "401": _json("A missing or wrong metrics token", "Error"),
                "404": _json("Metrics are served on the separate metrics listener", "Error"),
            },
        }
    }
    paths["/openapi.json"] = {
        "get": {
            "summary": "This document",
            "operationId": "openapi",
            "responses": {
                "200": {"description": "OpenAPI 3.1", "content": {"application/json": {"schema": _OBJECT}}}
            },
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "hpcrag gateway",
            "version": "1",
            "description": (
                "An OpenAI-compatible gateway that routes each request to a model tier. Limits: "
                f"{limits.max_body_bytes} body bytes, {limits.max_text_chars} characters of text, "
                f"{limits.max_messages} messages, {limits.max_input_items} inputs, JSON nesting "
                f"{limits.max_json_depth} deep, model names of {limits.max_model_chars} characters, "
                f"X-Hpcrag-* header values of {limits.max_header_bytes} bytes. Fields the OpenAI API does "
                "not define are passed to vLLM untouched."
            ),
        },
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "An hpcrag API key"}
            },
            "schemas": schemas,
        },
        "paths": paths,
    }


@functools.cache
def _model_schemas() -> dict[str, Any]:
    """The request models' JSON schemas: built once, as pydantic takes milliseconds for them."""
    _, definitions = models_json_schema([(m, "validation") for _, m, _, _ in _ROUTES], ref_template=_REF)
    return definitions["$defs"]


@functools.cache
def _rag_query_schema() -> dict[str, Any]:
    return RagQueryRequest.model_json_schema(ref_template=_REF)


def _bound(schemas: dict[str, Any], limits: RequestLimits) -> None:
    """Write the configured bounds, which the models check at run time, into their schemas."""
    for name in ("ChatCompletionRequest", "CompletionRequest", "EmbeddingRequest"):
        properties = schemas[name]["properties"]
        properties["model"].update(minLength=1, maxLength=limits.max_model_chars)
    chat = schemas["ChatCompletionRequest"]["properties"]
    chat["messages"]["maxItems"] = limits.max_messages
    # What the checks also refuse, said in the schema: a model name with control characters, and a
    # message without content (an assistant's may carry tool_calls instead).
    chat["model"]["pattern"] = r"^[^\x00-\x1f\x7f-\x9f]*$"
    with_content = {"required": ["content"], "properties": {"content": {"type": ["string", "array"]}}}
    schemas["Message"]["allOf"] = [
        {
            "if": {"properties": {"role": {"const": "assistant"}}},
            "then": {"anyOf": [with_content, {"required": ["tool_calls"]}]},
            "else": with_content,
        }
    ]
    # Described, not added as a property: generated bodies then stay as the models accept them.
    chat["model"]["description"] = (
        f"A served model, tier-<tier> or auto; {_RAG_MODELS}. A rag: request may add "
        f'"{FILTERS_FIELD}": only documents that match, e.g. {{"source": "faq.html"}} (a list: any of)'
    )
    for name, field in (("CompletionRequest", "prompt"), ("EmbeddingRequest", "input")):
        schemas[name]["properties"][field]["description"] = (
            f"A string, up to {limits.max_input_items} strings, token ids, or up to "
            f"{limits.max_input_items} lists of token ids"
        )


def _inference(
    path: str, model: type[BaseModel], answer: str, summary: str, limits: RequestLimits
) -> dict[str, Any]:
    ok: dict[str, Any] = {"application/json": {"schema": {"$ref": _REF.format(model=answer)}}}
    if model is not EmbeddingRequest:
        ok["text/event-stream"] = {
            "schema": {"type": "string", "description": "Server-sent chunks ending with data: [DONE]"}
        }
    header = {"type": "string", "maxLength": limits.max_header_bytes}
    number = {"type": "number", "exclusiveMinimum": 0}
    return {
        "summary": summary,
        "operationId": path.removeprefix("/v1/").replace("/", "_"),
        "security": _BEARER,
        "parameters": [
            _header("X-Hpcrag-Tier", header, "Pin a tier (s, m, l, xl)"),
            _header("X-Hpcrag-Quality", header, "low, medium or high: how much quality weighs"),
            _header("X-Hpcrag-Compliance", header, "Comma-separated compliance tags the endpoint must hold"),
            _header("X-Hpcrag-Site", header, "Only endpoints at this site"),
            _header("X-Hpcrag-Provider", header, "Only endpoints of this provider (slurm or a cloud)"),
            _header("X-Hpcrag-Max-Ttft-Ms", number, "The longest time to first token accepted, in ms"),
            _header("X-Hpcrag-Max-Cost-Usd", number, "The most the request may cost, in US dollars"),
        ],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": _REF.format(model=model.__name__)}}},
        },
        "responses": {
            "200": {
                "description": "The backend's answer",
                "headers": {
                    name: {"description": text, "schema": {"type": "string"}}
                    for name, text in _RESPONSE_HEADERS.items()
                },
                "content": ok,
            },
            **{status: _json(text, "Error") for status, text in _ERRORS.items()},
        },
    }


def _rag_query(limits: RequestLimits) -> dict[str, Any]:
    operation = _inference(
        "/v1/rag/query",
        RagQueryRequest,
        "RagAnswer",
        "A RAG answer from a collection, routed to a tier and accounted like a chat completion",
        limits,
    )
    operation["responses"]["200"]["content"] = {
        "application/json": {
            "schema": {
                "oneOf": [
                    {"$ref": _REF.format(model="RagAnswer")},
                    {"$ref": _REF.format(model="RagSources")},
                ]
            }
        }
    }
    operation["operationId"] = "rag_query"
    return operation


def _header(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "header", "required": False, "schema": schema, "description": description}


def _get(summary: str, answer: str) -> dict[str, Any]:
    return {
        "summary": summary,
        "operationId": answer[0].lower() + answer[1:],
        "security": _BEARER,
        "responses": {
            "200": _json("OK", answer),
            "401": _json(_ERRORS["401"], "Error"),
            "404": _json(_ERRORS["404"], "Error"),
        },
    }


def _json(description: str, schema: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": _REF.format(model=schema)}}},
    }
