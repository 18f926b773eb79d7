"""The OpenAPI 3.1 description of the search service, served at GET /openapi.json.

Written by hand from the service's own limits (queries per request, k, body size, nlist), so that a
client generator or a fuzzer knows exactly what is accepted; the test suite validates it with
openapi-spec-validator and fuzzes the service from it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hpcrag.search.service import ServiceOptions

_ERROR = {
    "description": "The reason, naming the field or limit and the fix",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["error"],
                "properties": {"error": {"type": "string"}},
            }
        }
    },
}


def openapi_document(options: ServiceOptions, nlist: int) -> dict[str, Any]:
    k = {"type": "integer", "minimum": 1, "maximum": options.max_k, "default": 10}
    nprobe = {"type": "integer", "minimum": 1, "maximum": nlist, "default": 1}
    vector = {"type": "array", "items": {"type": "number"}, "minItems": 1}
    answer = {
        "type": "object",
        "required": ["ids", "distances", "shards_touched"],
        "properties": {
            "ids": {
                "type": "array",
                "items": {"type": "array", "items": {"type": "integer"}},
                "description": "Neighbour ids per query, best first; -1 where fewer than k exist",
            },
            "distances": {
                "type": "array",
                "items": {"type": "array", "items": {"type": ["number", "null"]}},
                "description": "Similarity (ip, cosine) or squared distance (l2); null where no neighbour",
            },
            "shards_touched": {"type": "array", "items": {"type": "integer"}},
        },
    }
    errors = {
        "400": {**_ERROR, "description": "A malformed or invalid request"},
        "401": {**_ERROR, "description": "Missing or wrong bearer token"},
        "413": {**_ERROR, "description": "Body or query count beyond the service's limits"},
        "503": {**_ERROR, "description": "Too many request bodies held at once; retry after Retry-After"},
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "hpcrag search service",
            "version": "1",
            "description": (
                "Distributed IVF vector search. Limits: "
                f"{options.max_queries} queries and {options.max_body_bytes} body bytes per request, "
                f"k <= {options.max_k}, nprobe <= {nlist}."
            ),
        },
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": {
            "/search": {
                "post": {
                    "summary": "The k nearest neighbours of each query",
                    "security": [{"bearer": []}],
                    "parameters": [
                        {"name": "k", "in": "query", "schema": k, "description": "For .npy bodies only"},
                        {
                            "name": "nprobe",
                            "in": "query",
                            "schema": nprobe,
                            "description": "For .npy bodies only",
                        },
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["queries"],
                                    "additionalProperties": False,
                                    "properties": {
                                        "queries": {
                                            "oneOf": [
                                                vector,
                                                {
                                                    "type": "array",
                                                    "items": vector,
                                                    "minItems": 1,
                                                    "maxItems": options.max_queries,
                                                },
                                            ]
                                        },
                                        "k": k,
                                        "nprobe": nprobe,
                                    },
                                }
                            },
                            "application/x-npy": {
                                "schema": {
                                    "type": "string",
                                    "format": "binary",
                                    "description": "A (nq, dim) array as numpy.save writes it",
                                }
                            },
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "Neighbours (JSON for a JSON body, .npz for a .npy body)",
                            "content": {
                                "application/json": {"schema": answer},
                                "application/x-npz": {"schema": {"type": "string", "format": "binary"}},
                            },
                        },
                        **errors,
                    },
                }
            },
            "/health": {
                "get": {
                    "summary": "Liveness; with the token also the index's shape and fingerprint",
                    "responses": {
                        "200": {
                            "description": "Serving",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "required": ["status"],
                                        "properties": {
                                            "status": {"type": "string"},
                                            "ranks": {"type": "integer"},
                                            "shards": {"type": "integer"},
                                            "vectors": {"type": "integer"},
                                            "dim": {"type": "integer"},
                                            "metric": {"type": "string"},
                                            "nlist": {"type": "integer"},
                                            "fingerprint": {
                                                "type": "string",
                                                "description": "A digest of the index files' checksums",
                                            },
                                        },
                                    }
                                }
                            },
                        }
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "security": [] if options.public_metrics else [{"bearer": []}],
                    "responses": {
                        "200": {"description": "Prometheus text format", "content": {"text/plain": {}}},
                        "401": errors["401"],
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This description",
                    "responses": {"200": {"description": "OpenAPI 3.1", "content": {"application/json": {}}}},
                }
            },
        },
    }
