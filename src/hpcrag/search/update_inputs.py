"""Reading the bodies of the search service's update requests, strictly and within stated limits.

    POST /add, /upsert   JSON {"vectors": [[...], ...], "ids": [...], "attributes": [{...} | null, ...],
                               "declare": {"name": "int|str|time"}}
                         or an .npz body (Content-Type: application/x-npz) with arrays `vectors`
                         and `ids`, and optionally `attributes`: one string holding the JSON list
    POST /delete         JSON {"ids": [...], "strict": false}, or an .npz with `ids` (?strict=1)

Every problem is an HpcragError naming the field and the fix; more rows than the service takes is a
`RequestTooLarge`. Vectors are checked against the index (dimension, NaN) by the index itself.
"""

from __future__ import annotations

import io
import json
import zipfile
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from hpcrag.errors import HpcragError
from hpcrag.search.inputs import RequestTooLarge, first_line, json_vectors, refuse_constant, shown
from hpcrag.util.npy_headers import HEADER_LOCK

WRITE_FIELDS = ("vectors", "ids", "attributes", "declare")
DELETE_FIELDS = ("ids", "strict")


@dataclass(frozen=True)
class UpdateRequest:
    kind: str  # add | upsert | delete
    ids: np.ndarray
    vectors: np.ndarray | None = None
    attributes: list[dict[str, Any] | None] | None = None
    declare: dict[str, str] | None = None
    strict: bool = False

    @property
    def rows(self) -> int:
        return int(self.ids.size)


def parse_update_json(raw: bytes, kind: str, max_rows: int) -> UpdateRequest:
    try:
        body = json.loads(raw, parse_constant=refuse_constant)
    except RecursionError:
        raise HpcragError("the request body nests JSON too deeply") from None
    except ValueError as exc:
        raise HpcragError(f"the request body is not valid JSON ({first_line(exc)})") from None
    fields = DELETE_FIELDS if kind == "delete" else WRITE_FIELDS
    example = '{"ids": [1, 2]}' if kind == "delete" else '{"vectors": [[...]], "ids": [1]}'
    if not isinstance(body, dict) or "ids" not in body:
        raise HpcragError(f"expected a JSON object like {example}")
    unknown = sorted(set(body) - set(fields))
    if unknown:
        raise HpcragError(f"unknown field {shown(unknown[0])}; valid fields: {', '.join(fields)}")
    ids = _json_ids(body["ids"], max_rows)
    if kind == "delete":
        strict = body.get("strict", False)
        if type(strict) is not bool:
            raise HpcragError(f'"strict" must be true or false, got {shown(strict)}')
        return UpdateRequest(kind, ids, strict=strict)
    if "vectors" not in body:
        raise HpcragError(f'"vectors" is missing: send {example}')
    vectors = json_vectors(body["vectors"], max_rows, name="vectors")
    return UpdateRequest(
        kind, ids, vectors, _attribute_rows(body.get("attributes")), _declared(body.get("declare"))
    )


def parse_update_npz(raw: bytes, kind: str, params: list[tuple[str, str]], max_rows: int) -> UpdateRequest:
    try:
        with HEADER_LOCK, np.load(io.BytesIO(raw), allow_pickle=False) as arrays:
            packed = [info for info in arrays.zip.infolist() if info.compress_type != zipfile.ZIP_STORED]
            if packed:
                # A compressed member could expand far beyond the body limit before any check.
                raise HpcragError(
                    f"the .npz body holds compressed arrays ({packed[0].filename}); send it uncompressed "
                    "(numpy.savez, not savez_compressed)"
                )
            names = set(arrays.files)
            allowed = {"ids"} if kind == "delete" else {"ids", "vectors", "attributes"}
            if "ids" not in names or names - allowed:
                raise HpcragError(
                    f"the .npz body must hold arrays {sorted(allowed)} (ids required), found {sorted(names)}"
                )
            ids_shape = arrays["ids"].shape
            if len(ids_shape) != 1 or ids_shape[0] > max_rows:
                _too_many(ids_shape, max_rows)
            ids = arrays["ids"]
            vectors = arrays["vectors"] if "vectors" in names else None
            text = str(arrays["attributes"]) if "attributes" in names else None
    except (
        ValueError,
        OSError,
        EOFError,
        KeyError,
        RuntimeError,
        NotImplementedError,
        zipfile.BadZipFile,
        zlib.error,
    ) as exc:  # what np.load and zipfile raise for an empty, encrypted or oddly compressed archive
        raise HpcragError(f"the request body is not an .npz archive ({first_line(exc)})") from None
    if kind == "delete":
        return UpdateRequest(kind, ids, strict=_strict_param(params))
    if params:
        raise HpcragError(f"query parameter {shown(params[0][0])} is not used by /{kind}")
    if vectors is None:
        raise HpcragError("the .npz body lacks `vectors`")
    attributes = None
    if text is not None:
        try:
            attributes = _attribute_rows(json.loads(text))
        except (ValueError, RecursionError) as exc:
            raise HpcragError(f"`attributes` is not a JSON list ({first_line(exc)})") from None
    return UpdateRequest(kind, ids, vectors, attributes)


def _too_many(shape: tuple[int, ...], max_rows: int) -> None:
    if len(shape) != 1:
        raise HpcragError(f"`ids` must be a 1-D array, found shape {shape}")
    raise RequestTooLarge(
        f"the request holds {shape[0]} rows, more than the limit of {max_rows} per update request "
        "(--max-update-rows); split them over several requests"
    )


def _strict_param(params: list[tuple[str, str]]) -> bool:
    values = dict(params)
    if set(values) - {"strict"} or len(params) > 1:
        raise HpcragError("the only query parameter of /delete is strict=0|1")
    if values.get("strict", "0") not in ("0", "1"):
        raise HpcragError(f"strict must be 0 or 1, got {shown(values['strict'])}")
    return values.get("strict") == "1"


def _json_ids(ids: Any, max_rows: int) -> np.ndarray:
    if not isinstance(ids, list) or not ids:
        raise HpcragError(f'"ids" must be a non-empty list of integers, got {shown(ids)}')
    if len(ids) > max_rows:
        _too_many((len(ids),), max_rows)
    bad = [x for x in ids if type(x) is not int]
    if bad:
        raise HpcragError(f'"ids" holds {shown(bad[0])}: ids are integers >= 0')
    if any(x < 0 or x > np.iinfo(np.int64).max for x in ids):
        raise HpcragError('"ids" must be between 0 and 2**63-1')
    return np.asarray(ids, dtype=np.int64)


def _attribute_rows(rows: Any) -> list[dict[str, Any] | None] | None:
    if rows is None:
        return None
    if not isinstance(rows, list) or not all(row is None or isinstance(row, dict) for row in rows):
        raise HpcragError('"attributes" must be a list with one object (or null) per vector')
    return rows


def _declared(declare: Any) -> dict[str, str] | None:
    if declare is None:
        return None
    if not isinstance(declare, dict) or not all(isinstance(v, str) for v in declare.values()):
        raise HpcragError('"declare" must be an object of attribute types, like {"source": "str"}')
    return declare
