"""Attribute schemas and the int64 encoding: exact values, and errors that name what is wrong."""

from __future__ import annotations

import hashlib
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from hpcrag.errors import HpcragError
from hpcrag.search.attributes import (
    ATTRIBUTE_TYPES,
    MAX_ATTRIBUTES,
    MAX_STRING_BYTES,
    MISSING,
    AttributeSchema,
    encode_rows,
    encode_value,
    infer_schema,
    read_attributes_file,
)

SCHEMA = AttributeSchema((("n", "int"), ("source", "str"), ("date", "time")))
NEW_YEAR_2024 = 1_704_067_200_000_000  # 2024-01-01T00:00:00Z in microseconds


def string_hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") & ((1 << 63) - 1)


def test_constants() -> None:
    assert ATTRIBUTE_TYPES == ("int", "str", "time")
    assert MISSING == -(2**63) == np.iinfo(np.int64).min
    assert MAX_STRING_BYTES == 256
    assert MAX_ATTRIBUTES == 32


# --- the schema ---------------------------------------------------------------------------------


def test_schema_lookups() -> None:
    assert SCHEMA.names == ("n", "source", "date")
    assert [SCHEMA.type_of(name) for name in SCHEMA.names] == ["int", "str", "time"]
    assert [SCHEMA.index_of(name) for name in SCHEMA.names] == [0, 1, 2]
    assert AttributeSchema().names == ()


def test_unknown_attribute_lists_the_known_ones() -> None:
    with pytest.raises(HpcragError, match=r'unknown attribute "colour"; this index has: n, source, date'):
        SCHEMA.type_of("colour")
    with pytest.raises(HpcragError, match=r'unknown attribute "colour"'):
        SCHEMA.index_of("colour")


def test_unknown_attribute_without_attributes_says_how_to_declare_them() -> None:
    with pytest.raises(HpcragError, match=r'"colour": this index has no attributes; declare .* name:type'):
        AttributeSchema().type_of("colour")


def test_json_round_trip_keeps_the_order() -> None:
    data = SCHEMA.to_json()
    assert list(data.items()) == [("n", "int"), ("source", "str"), ("date", "time")]
    assert AttributeSchema.from_json(data) == SCHEMA
    assert AttributeSchema.from_json({}) == AttributeSchema()


@pytest.mark.parametrize("data", [["n", "int"], {"n": 3}, None])
def test_from_json_refuses_anything_but_an_object_of_types(data: object) -> None:
    with pytest.raises(HpcragError, match="an attribute schema is an object"):
        AttributeSchema.from_json(data)


def test_columns_given_as_lists_become_tuples() -> None:
    schema = AttributeSchema([["n", "int"]])  # type: ignore[arg-type]
    assert schema.columns == (("n", "int"),)
    assert hash(schema) == hash(AttributeSchema((("n", "int"),)))


def test_parse_command_line_declarations() -> None:
    assert AttributeSchema.parse(["n:int", " source : str ", "date:time"]) == SCHEMA
    assert AttributeSchema.parse([]) == AttributeSchema()
    name_64 = "a" + "b" * 63
    assert AttributeSchema.parse([f"{name_64}:int", "_x.y-z:str"]).names == (name_64, "_x.y-z")


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        (["date"], r'attribute "date" has no type; declare attributes as name:type'),
        (["date:datetime"], r'attribute \'date\' has unknown type "datetime"; valid types: int, str, time'),
        (["1x:int"], r'attribute name "1x" is not valid: start with a letter or _'),
        (["a b:int"], r'attribute name "a b" is not valid'),
        ([":int"], r'attribute name "" is not valid'),
        (["a" * 65 + ":int"], r"attribute name \"a{36}\.\.\. is not valid.*at most 64 characters"),
        (["or:int"], r"attribute name 'or' is reserved by the filter language"),
        (["n:int", "n:str"], r"attribute 'n' is declared twice; declare each attribute once"),
        ([f"a{i}:int" for i in range(33)], r"33 attributes declared, at most 32"),
    ],
)
def test_parse_errors(specs: list[str], message: str) -> None:
    with pytest.raises(HpcragError, match=message):
        AttributeSchema.parse(specs)


def test_32_attributes_are_allowed() -> None:
    assert len(AttributeSchema.parse([f"a{i}:int" for i in range(32)]).columns) == 32


def test_extended_is_the_union_in_order() -> None:
    other = AttributeSchema((("tenant", "str"), ("n", "int")))
    assert SCHEMA.extended(other).columns == (
        ("n", "int"),
        ("source", "str"),
        ("date", "time"),
        ("tenant", "str"),
    )
    assert SCHEMA.extended(SCHEMA) == SCHEMA
    assert AttributeSchema().extended(SCHEMA) == SCHEMA


def test_extended_refuses_one_name_with_two_types() -> None:
    with pytest.raises(HpcragError, match=r"attribute 'date' is time in one schema and str in the other"):
        SCHEMA.extended(AttributeSchema((("date", "str"),)))


def test_extended_keeps_the_attribute_limit() -> None:
    many = AttributeSchema.parse([f"b{i}:int" for i in range(30)])
    with pytest.raises(HpcragError, match="33 attributes declared, at most 32"):
        many.extended(SCHEMA)


# --- encoding one value -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 0),
        (-5, -5),
        (np.int32(7), 7),
        (np.uint8(200), 200),
        (2**63 - 1, 2**63 - 1),
        (-(2**63) + 1, -(2**63) + 1),
    ],
)
def test_int_values(value: object, expected: int) -> None:
    assert encode_value("int", value, "x") == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (True, r"attribute 'n' of row 3 must be an integer, got a boolean \(true\)"),
        (np.bool_(False), r"must be an integer, got a boolean \(false\)"),
        (1.0, r"must be an integer, got a float \(1.0\)"),
        ("3", r'attribute \'n\' of row 3 must be an integer, got a string \("3"\)'),
        ([1], r"must be an integer, got a list"),
        (MISSING, r"attribute 'n' of row 3 is -9223372036854775808, outside"),
        (2**63, r"is 9223372036854775808, outside -9223372036854775807\.\.9223372036854775807"),
    ],
)
def test_int_refusals(value: object, message: str) -> None:
    with pytest.raises(HpcragError, match=message):
        encode_value("int", value, "attribute 'n' of row 3")


def test_str_values_are_63_bit_blake2b_hashes() -> None:
    for text in ["faq", "", "é", "a" * MAX_STRING_BYTES, "日本"]:
        assert encode_value("str", text, "x") == string_hash(text)
    assert encode_value("str", "faq", "x") == (
        int.from_bytes(hashlib.blake2b(b"faq", digest_size=8).digest(), "little") & (2**63 - 1)
    )
    assert encode_value("str", np.str_("faq"), "x") == string_hash("faq")
    assert encode_value("str", "faq", "x") != encode_value("str", "FAQ", "x")


@pytest.mark.parametrize(
    ("text", "size"),
    [("a" * 257, 257), ("é" * 129, 258), ("a" * 300, 300)],
)
def test_str_longer_than_256_bytes_is_refused(text: str, size: int) -> None:
    with pytest.raises(HpcragError, match=rf"attribute 'x' of row 4 is {size} bytes; at most 256"):
        encode_value("str", text, "attribute 'x' of row 4")


def test_str_with_a_lone_surrogate_is_refused() -> None:
    with pytest.raises(
        HpcragError, match=r"attribute 'x' of row 0 holds a lone surrogate .*well-formed UTF-8"
    ):
        encode_value("str", "ab\udc80", "attribute 'x' of row 0")


@pytest.mark.parametrize("value", [3, b"faq", None, ["a"]])
def test_str_refuses_other_types(value: object) -> None:
    with pytest.raises(HpcragError, match=r"filter on 'source' must be a string, got"):
        encode_value("str", value, "filter on 'source'")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024-01-01", NEW_YEAR_2024),
        ("2024-01-01T00:00:00", NEW_YEAR_2024),
        ("2024-01-01T00:00:00Z", NEW_YEAR_2024),
        ("2024-01-01T01:30:00+01:30", NEW_YEAR_2024),
        ("2024-01-01T00:00:00.000001", NEW_YEAR_2024 + 1),
        ("1969-12-31T23:59:59", -1_000_000),
        (datetime(2024, 1, 1), NEW_YEAR_2024),
        (datetime(2024, 1, 1, 2, tzinfo=timezone(timedelta(hours=2))), NEW_YEAR_2024),
        (datetime(2024, 1, 1, tzinfo=UTC), NEW_YEAR_2024),
        (date(2024, 1, 1), NEW_YEAR_2024),
        (1_704_067_200, NEW_YEAR_2024),
        (np.int64(1_704_067_200), NEW_YEAR_2024),
        (1.5, 1_500_000),
        (1_704_067_200.123456, NEW_YEAR_2024 + 123_456),
        (np.float32(0.5), 500_000),
        (-1, -1_000_000),
    ],
)
def test_time_values_are_utc_microseconds(value: object, expected: int) -> None:
    assert encode_value("time", value, "x") == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("yesterday", r'attribute \'date\' of row 2: "yesterday" is not an ISO 8601 time; write it like'),
        ("2024-13-01", r'"2024-13-01" is not an ISO 8601 time'),
        (float("nan"), r"attribute 'date' of row 2 is nan; a time in seconds since the epoch must be finite"),
        (float("inf"), r"is inf; a time in seconds .* must be finite"),
        (10**13, r"is 10000000000000 seconds since the epoch, beyond the times"),
        (True, r"attribute 'date' of row 2 must be a time \(an ISO 8601 string.*got a boolean"),
        (None, r"must be a time .*, got null"),
        ({"t": 1}, r"must be a time .*, got an object"),
    ],
)
def test_time_refusals(value: object, message: str) -> None:
    with pytest.raises(HpcragError, match=message):
        encode_value("time", value, "attribute 'date' of row 2")


def test_unknown_type_is_refused() -> None:
    with pytest.raises(HpcragError, match=r'unknown attribute type "float"; valid types: int, str, time'):
        encode_value("float", 1.0, "x")


# --- encoding rows ------------------------------------------------------------------------------


def test_encode_rows_places_values_and_missing() -> None:
    rows = [
        {"n": 3, "source": "faq", "date": "2024-01-01"},
        None,
        {},
        {"source": "blog"},
        {"date": 1_704_067_200, "n": None},
    ]
    columns = encode_rows(SCHEMA, rows)
    assert columns.dtype == np.int64
    expected = np.array(
        [
            [3, string_hash("faq"), NEW_YEAR_2024],
            [MISSING, MISSING, MISSING],
            [MISSING, MISSING, MISSING],
            [MISSING, string_hash("blog"), MISSING],
            [MISSING, MISSING, NEW_YEAR_2024],
        ],
        dtype=np.int64,
    )
    np.testing.assert_array_equal(columns, expected)


def test_encode_rows_shapes_at_the_edges() -> None:
    assert encode_rows(SCHEMA, []).shape == (0, 3)
    empty = encode_rows(AttributeSchema(), [None, {}])
    assert empty.shape == (2, 0)
    assert empty.dtype == np.int64


def test_encode_rows_names_an_undeclared_key_with_its_row() -> None:
    with pytest.raises(
        HpcragError,
        match=r'row 11 has attribute "colour", which the index does not declare \(declared: n, source, date',
    ):
        encode_rows(SCHEMA, [{"n": 1}, {"colour": "red"}], first_row=10)
    with pytest.raises(HpcragError, match=r"\(declared: none\)"):
        encode_rows(AttributeSchema(), [{"colour": "red"}])


def test_encode_rows_names_a_wrong_type_with_its_row() -> None:
    with pytest.raises(
        HpcragError, match=r'attribute \'n\' of row 101 must be an integer, got a string \("three"\)'
    ):
        encode_rows(SCHEMA, [{"n": 1}, {"n": "three"}], first_row=100)
    with pytest.raises(HpcragError, match=r"attribute 'source' of row 0 is 300 bytes; at most 256"):
        encode_rows(SCHEMA, [{"source": "x" * 300}])


def test_encode_rows_refuses_a_row_that_is_not_an_object() -> None:
    with pytest.raises(HpcragError, match=r"attributes row 6 is a list; each row is an object"):
        encode_rows(SCHEMA, [["n", 1]], first_row=6)  # type: ignore[list-item]


# --- the attributes file ------------------------------------------------------------------------


def _write(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "attributes.jsonl"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_read_attributes_file(tmp_path: Path) -> None:
    path = _write(tmp_path, '{"n": 1, "source": "faq"}\n{}\n  {"date": "2024-01-01"}  \r\n{"x": "\u2028"}')
    rows = read_attributes_file(path, count=4)
    assert rows == [{"n": 1, "source": "faq"}, {}, {"date": "2024-01-01"}, {"x": "\u2028"}]
    assert read_attributes_file(_write(tmp_path, '{"n": 1}\n')) == [{"n": 1}]
    assert read_attributes_file(_write(tmp_path, ""), count=0) == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"n": 1}\n\n{"n": 2}\n', r"line 2 is blank; write \{\} for a vector without attributes"),
        ('{"n": 1}\n{"n": 2}\n   \n', r"line 3 is blank"),
        ('{"n": 1}\n{"n": 2,}\n', r"line 2 is not valid JSON \(.* at column \d+\)"),
        ('{"n": 1}\n[1, 2]\n', r"line 2 is a list, not a JSON object"),
        ('"faq"\n', r'line 1 is a string \("faq"\), not a JSON object'),
        ("null\n", r"line 1 is null, not a JSON object"),
    ],
)
def test_read_attributes_file_errors(tmp_path: Path, text: str, message: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(HpcragError, match=message) as caught:
        read_attributes_file(path)
    assert str(path) in str(caught.value)


def test_read_attributes_file_checks_the_count(tmp_path: Path) -> None:
    path = _write(tmp_path, "{}\n{}\n{}\n")
    assert len(read_attributes_file(path, count=3)) == 3
    with pytest.raises(HpcragError, match=r"3 attribute rows for 4 vectors; give one line per vector"):
        read_attributes_file(path, count=4)


def test_read_attributes_file_missing_or_not_utf8(tmp_path: Path) -> None:
    with pytest.raises(HpcragError, match=r"attributes file not found: .*nothing\.jsonl"):
        read_attributes_file(tmp_path / "nothing.jsonl")
    with pytest.raises(HpcragError, match=r"is not UTF-8 text"):
        read_attributes_file(_write(tmp_path, b'{"source": "caf\xe9"}\n'))


# --- inferring a schema -------------------------------------------------------------------------


def test_infer_schema() -> None:
    rows = [
        {"n": 1, "source": "faq"},
        None,
        {"date": "2024-01-01", "n": None},
        {"date": "2024-02-01T10:00:00+02:00", "id": "20240101", "when": "2024-03-01"},
        {"when": "soon", "tenant": None},
        {"tenant": "a"},
    ]
    assert infer_schema(rows).columns == (
        ("n", "int"),
        ("source", "str"),
        ("date", "time"),
        ("id", "str"),  # digits alone are not taken for a date
        ("when", "str"),  # ISO in one row, not in another
        ("tenant", "str"),
    )
    assert infer_schema([]) == AttributeSchema()
    assert infer_schema([{}, None]) == AttributeSchema()


def test_infer_schema_refuses_mixed_types() -> None:
    with pytest.raises(
        HpcragError,
        match=r"attribute 'n' holds integers \(row 0\) and strings \(row 2\); give each attribute",
    ):
        infer_schema([{"n": 1}, {"n": 2}, {"n": "three"}])


@pytest.mark.parametrize(
    ("value", "kind"),
    [(True, r"a boolean \(true\)"), (1.5, r"a float \(1.5\)"), ([1], "a list"), ({"a": 1}, "an object")],
)
def test_infer_schema_names_the_allowed_types(value: object, kind: str) -> None:
    with pytest.raises(
        HpcragError, match=rf'attribute "x" of row 1 is {kind}; attributes may be int, string or ISO time'
    ):
        infer_schema([{"x": 1}, {"x": value}])


def test_infer_schema_refuses_an_attribute_that_is_always_null() -> None:
    with pytest.raises(HpcragError, match=r"attribute 'x' is null in every row"):
        infer_schema([{"x": None}, {"n": 1}])


def test_infer_schema_checks_names() -> None:
    with pytest.raises(HpcragError, match=r'attribute name "bad name" is not valid'):
        infer_schema([{"bad name": 1}])


def test_inferred_schema_encodes_its_rows() -> None:
    rows = [{"n": 1, "date": "2024-01-01"}, {"source": "faq"}]
    columns = encode_rows(infer_schema(rows), rows)
    np.testing.assert_array_equal(
        columns, [[1, NEW_YEAR_2024, MISSING], [MISSING, MISSING, string_hash("faq")]]
    )
