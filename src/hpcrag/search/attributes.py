"""Per-vector attributes: the schema (ordered name:type columns) and their int64 encoding.

Every attribute column is int64, so search kernels and NumPy masks stay simple:

    int    the value itself (a boolean is refused)
    str    a 63-bit blake2b hash of the UTF-8 text, at most MAX_STRING_BYTES bytes; equality and
           membership work on hashes, ranges do not
    time   microseconds since the Unix epoch, UTC, from an ISO 8601 string (a naive one is UTC), a
           datetime or date, or a number of seconds since the epoch

A row without an attribute holds MISSING (the int64 minimum) there. No value encodes to MISSING, so
no filter comparison can match it. A value that cannot be encoded is an HpcragError naming the
attribute, the row, the expected type and what was given instead.

Attributes arrive as JSON Lines (one object per vector, `{}` for none); `infer_schema` derives a
schema from such rows when none is declared.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np

from hpcrag.errors import HpcragError

ATTRIBUTE_TYPES = ("int", "str", "time")
MISSING = int(np.iinfo(np.int64).min)
INT64_MAX = int(np.iinfo(np.int64).max)
MAX_STRING_BYTES = 256
MAX_ATTRIBUTES = 32
NAME_RULE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")
RESERVED_NAMES = ("and", "or", "not")  # the filter language's logical keys

_HASH_BITS = (1 << 63) - 1
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
# Inference calls a column "time" only for dates written with dashes, so ids like "20240101" stay str.
_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_EXPECTED = {
    "int": "an integer",
    "str": "a string",
    "time": "a time (an ISO 8601 string like 2024-05-01T12:00:00Z, or seconds since the epoch)",
}
_PLURAL = {"int": "integers", "str": "strings"}
_DECLARE = "declare attributes as name:type (types: int, str, time), e.g. source:str date:time"


@dataclass(frozen=True)
class AttributeSchema:
    """The attributes an index holds: ordered (name, type) pairs, one int64 column each."""

    columns: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        columns = tuple((name, kind) for name, kind in self.columns)
        object.__setattr__(self, "columns", columns)
        seen: set[str] = set()
        for name, kind in columns:
            _check_name(name)
            if kind not in ATTRIBUTE_TYPES:
                raise HpcragError(
                    f"attribute {name!r} has unknown type {shown_value(kind)}; valid types: "
                    f"{', '.join(ATTRIBUTE_TYPES)}"
                )
            if name in seen:
                raise HpcragError(f"attribute {name!r} is declared twice; declare each attribute once")
            seen.add(name)
        if len(columns) > MAX_ATTRIBUTES:
            raise HpcragError(
                f"{len(columns)} attributes declared, at most {MAX_ATTRIBUTES}; drop or merge some"
            )

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.columns)

    def type_of(self, name: str) -> str:
        """The type of attribute `name`, or an HpcragError listing the attributes there are."""
        for known, kind in self.columns:
            if known == name:
                return kind
        if not self.columns:
            raise HpcragError(
                f"unknown attribute {shown_value(name)}: this index has no attributes; {_DECLARE}, "
                "when building it, with one attributes row per vector"
            )
        raise HpcragError(f"unknown attribute {shown_value(name)}; this index has: {', '.join(self.names)}")

    def index_of(self, name: str) -> int:
        """The column of attribute `name`."""
        self.type_of(name)
        return self.names.index(name)

    def to_json(self) -> dict[str, str]:
        return dict(self.columns)

    @classmethod
    def from_json(cls, data: Any) -> AttributeSchema:
        """The schema a manifest stores as {name: type}, in column order."""
        if not isinstance(data, Mapping) or not all(isinstance(kind, str) for kind in data.values()):
            raise HpcragError(
                f'an attribute schema is an object {{"name": "type", ...}}, got {kind_of(data)}; '
                "rebuild the index"
            )
        return cls(tuple(data.items()))

    @classmethod
    def parse(cls, specs: Iterable[str]) -> AttributeSchema:
        """The schema of command-line declarations "name:type", in the order given."""
        columns = []
        for spec in specs:
            name, colon, kind = spec.partition(":")
            if not colon:
                raise HpcragError(f"attribute {shown_value(spec)} has no type; {_DECLARE}")
            columns.append((name.strip(), kind.strip()))
        return cls(tuple(columns))

    def extended(self, other: AttributeSchema) -> AttributeSchema:
        """This schema's columns followed by those only `other` has; one name cannot take two types."""
        columns = list(self.columns)
        for name, kind in other.columns:
            if name not in self.names:
                columns.append((name, kind))
            elif self.type_of(name) != kind:
                raise HpcragError(
                    f"attribute {name!r} is {self.type_of(name)} in one schema and {kind} in the other; "
                    "an attribute has one type: rename one of them or convert its values"
                )
        return AttributeSchema(tuple(columns))


def _check_name(name: Any) -> None:
    if not isinstance(name, str) or not NAME_RULE.fullmatch(name):
        raise HpcragError(
            f"attribute name {shown_value(name)} is not valid: start with a letter or _, then use letters, "
            "digits, _ . or - (at most 64 characters)"
        )
    if name in RESERVED_NAMES:
        raise HpcragError(
            f"attribute name {name!r} is reserved by the filter language ({', '.join(RESERVED_NAMES)}); "
            "choose another name"
        )


def encode_value(schema_type: str, value: Any, where: str) -> int:
    """The int64 of `value` for an attribute of `schema_type`; `where` names it in errors."""
    if schema_type == "int":
        if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
            return _check_int64(int(value), where)
    elif schema_type == "str":
        if isinstance(value, str):
            return _hash_string(value, where)
    elif schema_type == "time":
        encoded = _encode_time(value, where)
        if encoded is not None:
            return encoded
    else:
        raise HpcragError(
            f"unknown attribute type {shown_value(schema_type)}; valid types: {', '.join(ATTRIBUTE_TYPES)}"
        )
    raise HpcragError(f"{where} must be {_EXPECTED[schema_type]}, got {kind_of(value)}")


def _check_int64(value: int, where: str) -> int:
    if not MISSING < value <= INT64_MAX:
        raise HpcragError(
            f"{where} is {value}, outside {MISSING + 1}..{INT64_MAX} (int64; {MISSING} marks a "
            "missing value); store a smaller number"
        )
    return value


def _hash_string(text: str, where: str) -> int:
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError:
        raise HpcragError(
            f"{where} holds a lone surrogate ({shown_value(text)}), which is not text; send well-formed UTF-8"
        ) from None
    if len(raw) > MAX_STRING_BYTES:
        raise HpcragError(
            f"{where} is {len(raw)} bytes; at most {MAX_STRING_BYTES} (UTF-8): shorten it, or store a "
            "shorter key for it"
        )
    return int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "little") & _HASH_BITS


def _encode_time(value: Any, where: str) -> int | None:
    """Microseconds since the epoch, or None for a value of a type a time is never given as."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise HpcragError(
                f"{where}: {shown_value(value)} is not an ISO 8601 time; write it like 2024-05-01 or "
                "2024-05-01T12:30:00+02:00 (no offset means UTC)"
            ) from None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return (value - EPOCH) // _MICROSECOND
    if isinstance(value, date):
        return (datetime(value.year, value.month, value.day, tzinfo=UTC) - EPOCH) // _MICROSECOND
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, np.integer)):
        micros = int(value) * 1_000_000
    elif isinstance(value, (float, np.floating)):
        if not math.isfinite(value):
            raise HpcragError(f"{where} is {value}; a time in seconds since the epoch must be finite")
        micros = round(Decimal(repr(float(value))) * 1_000_000)  # exact for the digits the float shows
    else:
        return None
    if not MISSING < micros <= INT64_MAX:
        raise HpcragError(
            f"{where} is {value} seconds since the epoch, beyond the times an int64 of microseconds "
            "holds (about 292,000 years either side of 1970); check its unit"
        )
    return micros


def _is_row(row: Any, number: int) -> bool:
    """True for an object of attributes, False for null (no attributes); anything else is an error."""
    if row is None:
        return False
    if not isinstance(row, Mapping):
        raise HpcragError(
            f"attributes row {number} is {kind_of(row)}; each row is an object {{name: value}} or null"
        )
    return True


def encode_rows(
    schema: AttributeSchema, rows: Sequence[Mapping[str, Any] | None], first_row: int = 0
) -> np.ndarray:
    """The (len(rows), len(schema.columns)) int64 columns of `rows`; absent or null values are MISSING.

    `first_row` is the number of rows[0] in the whole input, so errors name the row a user sees.
    """
    columns = {name: (index, kind) for index, (name, kind) in enumerate(schema.columns)}
    out = np.full((len(rows), len(columns)), MISSING, dtype=np.int64)
    for offset, row in enumerate(rows):
        number = first_row + offset
        if not _is_row(row, number):
            continue
        for name, value in row.items():
            if name not in columns:
                declared = ", ".join(schema.names) or "none"
                raise HpcragError(
                    f"row {number} has attribute {shown_value(name)}, which the index does not declare "
                    f"(declared: {declared}); declare it as name:type or drop it from the rows"
                )
            if value is not None:
                index, kind = columns[name]
                out[offset, index] = encode_value(kind, value, f"attribute {name!r} of row {number}")
    return out


def read_attributes_file(path: Path, count: int | None = None) -> list[dict[str, Any]]:
    """The rows of a JSON Lines file, one object per line; `count`, when given, is the lines expected."""
    path = Path(path)
    if not path.is_file():
        raise HpcragError(f"attributes file not found: {path}")
    rows: list[dict[str, Any]] = []
    try:
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                rows.append(_parse_line(path, number, line))
    except UnicodeDecodeError as exc:
        raise HpcragError(f"{path} is not UTF-8 text ({exc.reason}); save it as UTF-8 JSON Lines") from None
    except OSError as exc:
        raise HpcragError(f"{path}: cannot read it ({exc.strerror})") from None
    if count is not None and len(rows) != count:
        raise HpcragError(
            f"{path}: {len(rows)} attribute rows for {count} vectors; give one line per vector, in the "
            "vectors' order ({} for a vector without attributes)"
        )
    return rows


def _parse_line(path: Path, number: int, line: str) -> dict[str, Any]:
    if not line.strip():
        raise HpcragError(
            f"{path} line {number} is blank; write {{}} for a vector without attributes "
            "(one JSON object per line)"
        )
    try:
        row = json.loads(line)
    except RecursionError:
        raise HpcragError(f"{path} line {number} nests JSON too deeply; attribute values are flat") from None
    except json.JSONDecodeError as exc:
        raise HpcragError(
            f"{path} line {number} is not valid JSON ({exc.msg} at column {exc.colno}); write one "
            'object per line, like {"source": "faq"}'
        ) from None
    except ValueError as exc:  # an integer with too many digits
        raise HpcragError(f"{path} line {number} is not valid JSON ({exc})") from None
    if not isinstance(row, dict):
        raise HpcragError(
            f"{path} line {number} is {kind_of(row)}, not a JSON object; write one object per line, "
            'like {"source": "faq"}'
        )
    return row


def with_undeclared(schema: AttributeSchema, rows: Iterable[Mapping[str, Any] | None]) -> AttributeSchema:
    """`schema` extended by the attributes `rows` use and it does not declare, their types inferred."""
    rows = [row for row in rows if row]
    undeclared = {name for row in rows for name in row} - set(schema.names)
    if not undeclared:
        return schema
    return schema.extended(infer_schema([{n: v for n, v in row.items() if n in undeclared} for row in rows]))


def infer_schema(rows: Iterable[Mapping[str, Any] | None]) -> AttributeSchema:
    """The schema of JSON rows: int for integers, str for strings, time for strings that are all
    ISO 8601 dates (YYYY-MM-DD...); columns in the order their names first appear."""
    kinds: dict[str, str | None] = {}  # None: only nulls so far
    first: dict[str, int] = {}
    times: dict[str, bool] = {}
    for number, row in enumerate(rows):
        if not _is_row(row, number):
            continue
        for name, value in row.items():
            kind = _json_kind(name, value, number)
            if kind is None:
                kinds.setdefault(name, None)
                continue
            known = kinds.get(name)
            if known is None:
                kinds[name], first[name] = kind, number
            elif known != kind:
                raise HpcragError(
                    f"attribute {name!r} holds {_PLURAL[known]} (row {first[name]}) and {_PLURAL[kind]} "
                    f"(row {number}); give each attribute one type"
                )
            if kind == "str":
                times[name] = times.get(name, True) and _looks_like_time(value)
    for name, kind in kinds.items():
        if kind is None:
            raise HpcragError(
                f"attribute {name!r} is null in every row, so its type cannot be inferred; give it a "
                "value in some row, declare it (name:type) or drop it"
            )
    return AttributeSchema(tuple((name, "time" if times.get(name) else kind) for name, kind in kinds.items()))


def _json_kind(name: str, value: Any, number: int) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return "str"
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return "int"
    raise HpcragError(
        f"attribute {shown_value(name)} of row {number} is {kind_of(value)}; attributes may be int, "
        "string or ISO time (a string like 2024-05-01): write it as one of those"
    )


def _looks_like_time(text: str) -> bool:
    if not _ISO_DATE.match(text):
        return False
    try:
        datetime.fromisoformat(text)
    except ValueError:
        return False
    return True


def shown_value(value: Any) -> str:
    """A value as a message may quote it: short, whatever was sent."""
    if isinstance(value, np.generic):
        value = value.item()
    text = (
        json.dumps(value)
        if isinstance(value, (str, int, float, bool)) or value is None
        else type(value).__name__
    )
    return text if len(text) <= 40 else text[:37] + "..."


def kind_of(value: Any) -> str:
    """What a value is, for "must be X, got Y": its kind, and the value when short enough to show."""
    if value is None:
        return "null"
    if isinstance(value, (bool, np.bool_)):
        return f"a boolean ({shown_value(value)})"
    if isinstance(value, str):
        return f"a string ({shown_value(value)})"
    if isinstance(value, (int, np.integer)):
        return f"an integer ({shown_value(value)})"
    if isinstance(value, (float, np.floating)):
        return f"a float ({shown_value(value)})"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, Mapping):
        return "an object"
    return f"a {type(value).__name__}"
