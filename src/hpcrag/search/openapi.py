"""The OpenAPI 3.1 description of the search service, served at GET /openapi.json.

Written by hand from the service's own limits (queries per request, rows per update, k, body size,
nlist) and the index's rules (id range, attribute names, types and lengths, scan strategies), so that
a client generator or a fuzzer knows exactly what is accepted; the test suite validates it with
openapi-spec-validator and fuzzes the service from it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hpcrag.search.attributes import ATTRIBUTE_TYPES, MAX_ATTRIBUTES, MAX_STRING_BYTES, NAME_RULE
from hpcrag.search.index import STRATEGIES

if TYPE_CHECKING:
    from hpcrag.search.service import ServiceOptions

MAX_ID = 2**63 - 1

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
_BINARY = {"type": "string", "format": "binary"}
_ATTRIBUTE_NAME = {"type": "string", "pattern": f"^{NAME_RULE.pattern}$"}
_FILTER = {
    "type": "object",
    "description": (
        'Attribute conditions, AND-ed: {"source": "faq"}, {"n": {"in": [1, 2]}}, '
        '{"date": {"gte": "2024-01-01", "lt": "2025-01-01"}}, operators eq ne in gt gte lt lte, '
        '{"and": [...]}, {"or": [...]}, {"not": {...}}; at most 16 objects deep. Attributes the index '
        "does not have, and values of the wrong type, are a 400."
    ),
}


def openapi_document(options: ServiceOptions, nlist: int) -> dict[str, Any]:
    errors = {
        "400": {**_ERROR, "description": "A malformed or invalid request"},
        "401": {**_ERROR, "description": "Missing or wrong bearer token"},
        "413": {**_ERROR, "description": "Body, query or row count beyond the service's limits"},
        "503": {**_ERROR, "description": "Too many request bodies held at once; retry after Retry-After"},
    }
    updates = {kind: _update(kind, options, errors) for kind in ("add", "upsert", "delete")}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "hpcrag search service",
            "version": "1",
            "description": (
                "Distributed IVF vector search with live updates. Limits: "
                f"{options.max_queries} queries and {options.max_body_bytes} body bytes per request, "
                f"{options.max_update_rows} rows per update, k <= {options.max_k}, nprobe <= {nlist}."
            ),
        },
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": {
            "/search": {"post": _search(options, nlist, errors)},
            **{f"/{kind}": {"post": operation} for kind, operation in updates.items()},
            "/health": {"get": _health()},
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


def _vectors(max_rows: int) -> dict[str, Any]:
    """One vector, or a list of them (the service's dimension is checked by the index)."""
    vector = {"type": "array", "items": {"type": "number"}, "minItems": 1}
    return {"oneOf": [vector, {"type": "array", "items": vector, "minItems": 1, "maxItems": max_rows}]}


def _routing() -> dict[str, Any]:
    """The JSON body's routing fields; absent or null: the service's own (`index serve --max-shards`...)."""
    return {
        "max_shards": {
            "type": ["integer", "null"], "minimum": 1,
            "description": "Visit at most this many (<= the index's shards) per query: its best probed ones",
        },
        "shard_margin": {
            "type": ["number", "null"], "minimum": 0, "maximum": 100,
            "description": "Visit a shard past the first only within (1 + this) x the nearest's "
            "squared distance",
        },
        "ef": {
            "type": ["integer", "null"], "minimum": 1, "maximum": 4096,
            "description": "Graph search effort (hnsw, cagra shards only)",
        },
        "refine": {
            "type": ["integer", "null"], "minimum": 1, "maximum": 1000,
            "description": "Re-rank refine x k candidates (ivf-pq shards only)",
        },
    }  # fmt: skip


def _search(options: ServiceOptions, nlist: int, errors: dict[str, Any]) -> dict[str, Any]:
    k = {"type": "integer", "minimum": 1, "maximum": options.max_k, "default": 10}
    nprobe = {"type": "integer", "minimum": 1, "maximum": nlist, "default": 1}
    strategy = {
        "type": "string",
        "enum": list(STRATEGIES),
        "default": "auto",
        "description": "ivf: the probed lists; exact: every (matching) row; auto: chosen per batch",
    }
    min_seq = {
        "type": "integer",
        "minimum": 0,
        "default": 0,
        "description": "Answer only from a state that includes this update (its seq); else a 503",
    }
    npy_only = "For .npy bodies only"
    answer = {
        "type": "object",
        "required": ["ids", "distances", "shards_touched", "strategy", "seq"],
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
            "strategy": {
                "type": "string",
                "enum": ["ivf", "exact", "mixed"],
                "description": "The scan that ran (mixed: a request cut into batches that chose apart)",
            },
            "seq": {"type": "integer", "minimum": 0, "description": "The last update the answer reflects"},
        },
    }
    return {
        "summary": "The k nearest neighbours of each query, optionally among rows matching a filter",
        "security": [{"bearer": []}],
        "parameters": [
            {"name": "k", "in": "query", "schema": k, "description": npy_only},
            {"name": "nprobe", "in": "query", "schema": nprobe, "description": npy_only},
            {
                "name": "filter",
                "in": "query",
                "schema": {"type": "string"},
                "description": f"{npy_only}: the filter object as JSON",
            },
            {"name": "strategy", "in": "query", "schema": strategy, "description": npy_only},
            {"name": "min_seq", "in": "query", "schema": min_seq, "description": npy_only},
            *(
                {
                    "name": name,
                    "in": "query",
                    "schema": {**schema, "type": schema["type"][0]},
                    "description": npy_only,
                }
                for name, schema in _routing().items()
            ),
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
                            "queries": _vectors(options.max_queries),
                            "k": k,
                            "nprobe": nprobe,
                            "filter": _FILTER,
                            "strategy": strategy,
                            "min_seq": min_seq,
                            **_routing(),
                        },
                    }
                },
                "application/x-npy": {
                    "schema": {**_BINARY, "description": "A (nq, dim) array as numpy.save writes it"}
                },
            },
        },
        "responses": {
            "200": {
                "description": "Neighbours (JSON for a JSON body, .npz for a .npy body)",
                "content": {"application/json": {"schema": answer}, "application/x-npz": {"schema": _BINARY}},
            },
            **errors,
            "503": {
                **_ERROR,
                "description": (
                    "Too many request bodies held at once, or min_seq ahead of the updates applied here; "
                    "retry after Retry-After"
                ),
            },
        },
    }


def _update(kind: str, options: ServiceOptions, errors: dict[str, Any]) -> dict[str, Any]:
    rows = options.max_update_rows
    ids = {
        "type": "array",
        "items": {"type": "integer", "minimum": 0, "maximum": MAX_ID},
        "minItems": 1,
        "maxItems": rows,
        "description": "One id per vector; in /add new and unique, in /upsert the last row of a repeated id",
    }
    if kind == "delete":
        summary = "Delete ids; unknown ids are listed in unknown_ids (or, with strict, refuse them all)"
        body = {
            "type": "object",
            "required": ["ids"],
            "additionalProperties": False,
            "properties": {
                "ids": {**ids, "description": "Ids to delete"},
                "strict": {"type": "boolean", "default": False},
            },
        }
        npz = "An .npz (numpy.savez) with the int64 array ids"
        parameters = [
            {
                "name": "strict",
                "in": "query",
                "schema": {"type": "string", "enum": ["0", "1"], "default": "0"},
                "description": "For .npz bodies only",
            }
        ]
    else:
        summary = (
            "Add new ids (an id already present is a 400)"
            if kind == "add"
            else "Add or replace ids, atomically"
        )
        value = {
            "type": ["number", "string", "null"],
            "description": (
                f"int, str (at most {MAX_STRING_BYTES} bytes of UTF-8) or time (ISO 8601 string, or seconds "
                "since the epoch); null: no value"
            ),
        }
        attribute_row = {
            "type": "object",
            "propertyNames": _ATTRIBUTE_NAME,
            "additionalProperties": value,
            "maxProperties": MAX_ATTRIBUTES,
        }
        body = {
            "type": "object",
            "required": ["vectors", "ids"],
            "additionalProperties": False,
            "properties": {
                "vectors": _vectors(rows),
                "ids": ids,
                "attributes": {
                    "type": "array",
                    "items": {"oneOf": [attribute_row, {"type": "null"}]},
                    "maxItems": rows,
                    "description": "One object (or null) per vector; types of undeclared ones are inferred",
                },
                "declare": {
                    "type": "object",
                    "propertyNames": _ATTRIBUTE_NAME,
                    "additionalProperties": {"type": "string", "enum": list(ATTRIBUTE_TYPES)},
                    "maxProperties": MAX_ATTRIBUTES,
                    "description": 'Types of new attributes, like {"source": "str"}',
                },
            },
        }
        npz = (
            "An .npz (numpy.savez) with the arrays vectors (n, dim) and ids (n,) int64, and optionally "
            "attributes: one string holding the JSON list of attribute rows"
        )
        parameters = []
    answer = {
        "type": "object",
        "required": ["seq", "added", "replaced", "deleted", "unknown_ids", "declared"],
        "properties": {
            "seq": {
                "type": "integer",
                "minimum": 0,
                "description": "The update's place in the log: a search with min_seq = this reflects it",
            },
            "added": {"type": "integer", "minimum": 0},
            "replaced": {"type": "integer", "minimum": 0},
            "deleted": {"type": "integer", "minimum": 0},
            "unknown_ids": {"type": "array", "items": {"type": "integer"}},
            "declared": {
                "type": ["object", "null"],
                "additionalProperties": {"type": "string"},
                "description": "Attributes this update added to the index, with their types",
            },
        },
    }
    return {
        "summary": summary,
        "description": f"Durable before the answer; at most {rows} rows per request (more is a 413).",
        "security": [{"bearer": []}],
        "parameters": parameters,
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": body},
                "application/x-npz": {"schema": {**_BINARY, "description": npz}},
            },
        },
        "responses": {
            "200": {"description": "Applied", "content": {"application/json": {"schema": answer}}},
            **errors,
        },
    }


def _health() -> dict[str, Any]:
    integer = {"type": "integer"}
    return {
        "summary": "Liveness; with the token also the index's shape, fingerprint and update state",
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
                                "ranks": integer,
                                "shards": integer,
                                "vectors": {**integer, "description": "Vectors the shards were built with"},
                                "dim": integer,
                                "metric": {"type": "string"},
                                "nlist": integer,
                                "fingerprint": {
                                    "type": "string",
                                    "description": "A digest of the index files' checksums",
                                },
                                "seq": {**integer, "description": "The last update applied"},
                                "live_vectors": {
                                    **integer,
                                    "description": "Vectors now: built, plus added, less deleted",
                                },
                                "attributes": {
                                    "type": "object",
                                    "additionalProperties": {"type": "string"},
                                    "description": "The index's attributes and their types",
                                },
                            },
                        }
                    }
                },
            }
        },
    }
