"""Filters: masks checked row by row against the raw attribute values, canonical keys, pickling,
the command-line form, and errors that name the offending attribute, operator or value."""

from __future__ import annotations

import hashlib
import json
import pickle
import random
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hpcrag.errors import HpcragError
from hpcrag.search.attributes import MISSING, AttributeSchema, encode_rows
from hpcrag.search.filters import MAX_DEPTH, MAX_IN_VALUES, Filter, compile_filter, parse_filter_args

SCHEMA = AttributeSchema((("n", "int"), ("source", "str"), ("date", "time"), ("tenant", "str")))
SOURCES = ["faq", "blog", "docs"]
TENANTS = ["a", "b", "c", "d"]


def _table(count: int = 400, seed: int = 5) -> list[dict[str, Any] | None]:
    """Random rows with every attribute absent, or null, in some of them."""
    rnd = random.Random(seed)
    rows: list[dict[str, Any] | None] = []
    for _ in range(count):
        if rnd.random() < 0.05:
            rows.append(None)
            continue
        full = {
            "n": rnd.randrange(-3, 10),
            "source": rnd.choice(SOURCES),
            "date": f"2024-{rnd.randrange(1, 13):02d}-{rnd.randrange(1, 29):02d}T{rnd.randrange(24):02d}:30",
            "tenant": rnd.choice(TENANTS),
        }
        row = {}
        for name, value in full.items():
            draw = rnd.random()
            if draw < 0.75:
                row[name] = value
            elif draw < 0.85:
                row[name] = None
        rows.append(row)
    return rows


ROWS = _table()
COLUMNS = encode_rows(SCHEMA, ROWS)


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") & ((1 << 63) - 1)


def _get(row: Mapping[str, Any] | None, name: str) -> Any:
    return None if row is None else row.get(name)


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _present(name: str, test: Callable[[Any], bool]) -> Callable[[Any], bool]:
    """A row predicate true where the attribute has a value that passes `test`."""
    return lambda row: _get(row, name) is not None and test(_get(row, name))


N_IS_3 = _present("n", lambda v: v == 3)
IS_FAQ = _present("source", lambda v: v == "faq")

CASES: list[tuple[Any, Callable[[Any], bool]]] = [
    ({"source": "faq"}, IS_FAQ),
    ({"n": 3}, N_IS_3),
    ({"n": {"eq": 3}}, N_IS_3),
    ({"n": {"ne": 3}}, _present("n", lambda v: v != 3)),
    ({"n": {"lt": 2}}, _present("n", lambda v: v < 2)),
    ({"n": {"lte": 2}}, _present("n", lambda v: v <= 2)),
    ({"n": {"gt": 2}}, _present("n", lambda v: v > 2)),
    ({"n": {"gte": 2}}, _present("n", lambda v: v >= 2)),
    ({"n": {"gte": -1, "lt": 4, "ne": 0}}, _present("n", lambda v: -1 <= v < 4 and v != 0)),
    ({"source": {"ne": "faq"}}, _present("source", lambda v: v != "faq")),
    ({"tenant": {"in": ["a", "c"]}}, _present("tenant", lambda v: v in ("a", "c"))),
    ({"n": {"in": [1, 5, 7, 100]}}, _present("n", lambda v: v in (1, 5, 7))),
    ({"n": {"in": []}}, lambda row: False),
    (
        {"date": {"gte": "2024-03-01", "lt": "2024-06-01T00:00:00Z"}},
        _present("date", lambda v: _time("2024-03-01") <= _time(v) < _time("2024-06-01")),
    ),
    (
        {"date": {"gt": 1_717_200_000}},  # 2024-06-01T00:00:00Z in seconds
        _present("date", lambda v: _time(v) > _time("2024-06-01")),
    ),
    ({"source": "faq", "n": {"lte": 4}}, lambda row: IS_FAQ(row) and _present("n", lambda v: v <= 4)(row)),
    ({"or": [{"source": "faq"}, {"n": 3}]}, lambda row: IS_FAQ(row) or N_IS_3(row)),
    ({"and": [{"source": "faq"}, {"n": 3}]}, lambda row: IS_FAQ(row) and N_IS_3(row)),
    ({"not": {"source": "faq"}}, lambda row: not IS_FAQ(row)),  # rows without a source match
    ({"not": {"not": {"n": 3}}}, N_IS_3),
    (
        {"and": [{"or": [{"tenant": "a"}, {"n": {"gt": 6}}]}, {"not": {"source": {"in": ["blog", "docs"]}}}]},
        lambda row: (
            (_get(row, "tenant") == "a" or _present("n", lambda v: v > 6)(row))
            and _get(row, "source") not in ("blog", "docs")
        ),
    ),
]


def test_the_table_has_missing_values_in_every_column() -> None:
    assert (COLUMNS == MISSING).any(axis=0).all()
    assert (COLUMNS != MISSING).any(axis=0).all()


@pytest.mark.parametrize(("spec", "predicate"), CASES, ids=[json.dumps(spec) for spec, _ in CASES])
def test_mask_matches_the_rows_by_hand(spec: Any, predicate: Callable[[Any], bool]) -> None:
    mask = compile_filter(spec, SCHEMA).mask(COLUMNS)
    expected = np.array([predicate(row) for row in ROWS], dtype=bool)
    assert mask.dtype == np.bool_
    assert mask.shape == (len(ROWS),)
    np.testing.assert_array_equal(mask, expected)
    assert 0 < expected.sum() < len(ROWS) or spec == {"n": {"in": []}}


def test_mask_against_numpy_expressions() -> None:
    n, source, date, tenant = COLUMNS.T
    faq, tenant_a = _hash("faq"), _hash("a")
    march = 1_709_251_200_000_000  # 2024-03-01T00:00:00Z in microseconds
    checks = [
        ({"source": "faq"}, source == faq),
        ({"n": {"lt": 0}}, (n < 0) & (n != MISSING)),
        ({"date": {"lte": "2024-03-01"}}, (date <= march) & (date != MISSING)),
        ({"not": {"date": {"gte": "2024-03-01"}}}, ~(date >= march)),
        ({"tenant": {"ne": "a"}, "n": {"gt": -3}}, (tenant != tenant_a) & (tenant != MISSING) & (n > -3)),
        ({"tenant": {"in": ["a", "zzz"]}}, tenant == tenant_a),
    ]
    for spec, expected in checks:
        np.testing.assert_array_equal(compile_filter(spec, SCHEMA).mask(COLUMNS), expected)


_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": lambda v, x: v == x,
    "ne": lambda v, x: v != x,
    "lt": lambda v, x: v < x,
    "lte": lambda v, x: v <= x,
    "gt": lambda v, x: v > x,
    "gte": lambda v, x: v >= x,
    "in": lambda v, x: v in x,
}


def _evaluate(spec: Mapping[str, Any], row: Mapping[str, Any] | None) -> bool:
    """The filter language's meaning, on one raw row, written out plainly."""
    results = []
    for name, value in spec.items():
        if name == "and":
            results.append(all(_evaluate(part, row) for part in value))
        elif name == "or":
            results.append(any(_evaluate(part, row) for part in value))
        elif name == "not":
            results.append(not _evaluate(value, row))
        else:
            have = _get(row, name)
            conditions = value if isinstance(value, dict) else {"eq": value}
            results.append(have is not None and all(_OPS[op](have, x) for op, x in conditions.items()))
    return all(results)


_ATOMS = st.one_of(
    st.builds(
        lambda op, x: {"n": {op: x}},
        st.sampled_from(["eq", "ne", "lt", "lte", "gt", "gte"]),
        st.integers(-4, 10),
    ),
    st.builds(lambda x: {"n": x}, st.integers(-4, 10)),
    st.builds(lambda xs: {"tenant": {"in": xs}}, st.lists(st.sampled_from([*TENANTS, "z"]), max_size=4)),
    st.builds(lambda x: {"source": x}, st.sampled_from(SOURCES)),
    st.builds(lambda op, x: {"source": {op: x}}, st.sampled_from(["eq", "ne"]), st.sampled_from(SOURCES)),
)
_SPECS = st.recursive(
    _ATOMS,
    lambda inner: st.one_of(
        st.builds(lambda parts: {"and": parts}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda parts: {"or": parts}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda part: {"not": part}, inner),
    ),
    max_leaves=8,
)


@settings(max_examples=150, deadline=None)
@given(_SPECS, st.randoms(use_true_random=False))
def test_random_filters_match_a_plain_evaluation(spec: dict[str, Any], rnd: random.Random) -> None:
    flt = compile_filter(spec, SCHEMA)
    expected = np.array([_evaluate(spec, row) for row in ROWS], dtype=bool)
    np.testing.assert_array_equal(flt.mask(COLUMNS), expected)
    shuffled = _shuffled(spec, rnd)
    assert compile_filter(shuffled, SCHEMA).key == flt.key


def _shuffled(spec: Any, rnd: random.Random) -> Any:
    """The same filter with every list and object in another order."""
    if isinstance(spec, list):
        items = [_shuffled(item, rnd) for item in spec]
        rnd.shuffle(items)
        return items
    if isinstance(spec, dict):
        items = [(key, _shuffled(value, rnd)) for key, value in spec.items()]
        rnd.shuffle(items)
        return dict(items)
    return spec


def test_mask_on_no_rows() -> None:
    mask = compile_filter({"n": 3}, SCHEMA).mask(np.empty((0, 4), dtype=np.int64))
    assert mask.shape == (0,)
    assert mask.dtype == np.bool_


def test_mask_refuses_columns_of_another_schema() -> None:
    flt = compile_filter({"n": 3}, SCHEMA)
    with pytest.raises(HpcragError, match=r"shape \(400, 3\).*compiled for 4 int64 columns"):
        flt.mask(COLUMNS[:, :3])
    with pytest.raises(HpcragError, match=r"dtype int32"):
        flt.mask(COLUMNS.astype(np.int32))


# --- canonical keys -----------------------------------------------------------------------------

SAME_MEANING = [
    ({"n": 3, "source": "faq"}, {"source": "faq", "n": 3}),
    ({"n": 3}, {"n": {"eq": 3}}),
    ({"n": 3}, {"n": {"in": [3, 3]}}),
    ({"n": 3}, {"and": [{"n": 3}, {"n": 3}]}),
    ({"n": 3}, {"not": {"not": {"n": 3}}}),
    ({"tenant": {"in": ["a", "b"]}}, {"tenant": {"in": ["b", "a", "b"]}}),
    ({"date": {"gte": "2024-01-01"}}, {"date": {"gte": "2024-01-01T01:00:00+01:00"}}),
    ({"date": {"gte": "2024-01-01"}}, {"date": {"gte": 1_704_067_200}}),
    ({"n": {"gte": 1, "lt": 5}}, {"n": {"lt": 5, "gte": 1}}),
    ({"n": {"gte": 1, "lt": 5}}, {"and": [{"n": {"lt": 5}}, {"n": {"gte": 1}}]}),
    ({"or": [{"n": 1}, {"n": 2}]}, {"or": [{"n": 2}, {"n": 1}]}),
    ({"or": [{"n": 1}, {"or": [{"n": 2}, {"n": 3}]}]}, {"or": [{"n": 3}, {"n": 2}, {"n": 1}]}),
    ({"and": [{"n": 1}, {"and": [{"source": "faq"}]}]}, {"source": "faq", "n": 1}),
    ({"n": 1, "and": [{"tenant": "a"}]}, {"and": [{"tenant": "a"}, {"n": 1}]}),
]


@pytest.mark.parametrize(("first", "second"), SAME_MEANING)
def test_filters_that_mean_the_same_have_equal_keys(first: Any, second: Any) -> None:
    a, b = compile_filter(first, SCHEMA), compile_filter(second, SCHEMA)
    assert a.key == b.key
    assert a == b
    assert hash(a) == hash(b)
    np.testing.assert_array_equal(a.mask(COLUMNS), b.mask(COLUMNS))


DIFFERENT = [
    {"n": 3},
    {"n": 4},
    {"n": {"ne": 3}},
    {"n": {"lt": 3}},
    {"n": {"lte": 3}},
    {"n": {"gt": 3}},
    {"n": {"gte": 3}},
    {"n": {"in": [3, 4]}},
    {"not": {"n": 3}},
    {"tenant": "a"},
    {"source": "a"},
    {"and": [{"n": 1}, {"n": 2}]},
    {"or": [{"n": 1}, {"n": 2}]},
]


def test_filters_that_differ_have_different_keys() -> None:
    keys = {compile_filter(spec, SCHEMA).key for spec in DIFFERENT}
    assert len(keys) == len(DIFFERENT)


def test_key_and_describe_values() -> None:
    flt = compile_filter(
        {"source": "faq", "n": {"gte": 3}, "or": [{"date": {"lt": 0}}, {"not": {"n": 5}}]}, SCHEMA
    )
    assert flt.key == f"and(eq(source,{_hash('faq')}),gte(n,3),or(lt(date,0),not(eq(n,5))))"
    assert flt.describe() == (
        'source = "faq" and n >= 3 and (date < 1970-01-01T00:00:00+00:00 or not (n = 5))'
    )
    # "in" values are ordered by their encoding: hashes for strings
    listed = sorted(["a", "b", "c"], key=_hash)
    assert compile_filter({"tenant": {"in": ["c", "a", "b", "a"]}}, SCHEMA).describe() == (
        f"tenant in [{', '.join(json.dumps(t) for t in listed)}]"
    )
    assert compile_filter({"n": {"in": [5, -1, 5]}}, SCHEMA).describe() == "n in [-1, 5]"
    assert compile_filter({"date": {"in": ["2024-01-01"]}}, SCHEMA).describe() == (
        "date = 2024-01-01T00:00:00+00:00"
    )


def test_pickle_round_trip() -> None:
    flt = compile_filter(CASES[-1][0], SCHEMA)
    copy = pickle.loads(pickle.dumps(flt))
    assert isinstance(copy, Filter)
    assert copy == flt
    assert copy.key == flt.key
    assert copy.width == flt.width == 4
    assert copy.describe() == flt.describe()
    np.testing.assert_array_equal(copy.mask(COLUMNS), flt.mask(COLUMNS))


def test_filters_are_immutable() -> None:
    flt = compile_filter({"n": 3}, SCHEMA)
    with pytest.raises(AttributeError):
        flt.key = "x"  # type: ignore[misc]


# --- errors -------------------------------------------------------------------------------------


def _nested_not(levels: int) -> dict[str, Any]:
    spec: dict[str, Any] = {"n": 1}
    for _ in range(levels):
        spec = {"not": spec}
    return spec


def test_nesting_up_to_the_limit() -> None:
    assert MAX_DEPTH == 16
    assert compile_filter(_nested_not(MAX_DEPTH - 1), SCHEMA).key == "not(eq(n,1))"
    with pytest.raises(HpcragError, match=r"nests objects more than 16 deep; flatten it"):
        compile_filter(_nested_not(MAX_DEPTH), SCHEMA)
    deep_and: dict[str, Any] = {"n": 1}
    for _ in range(MAX_DEPTH):
        deep_and = {"and": [deep_and]}
    with pytest.raises(HpcragError, match=r"more than 16 deep"):
        compile_filter(deep_and, SCHEMA)


def test_in_list_up_to_the_limit() -> None:
    assert MAX_IN_VALUES == 10_000
    flt = compile_filter({"n": {"in": list(range(MAX_IN_VALUES))}}, SCHEMA)
    n = COLUMNS[:, 0]
    np.testing.assert_array_equal(flt.mask(COLUMNS), (n >= 0) & (n < MAX_IN_VALUES))
    with pytest.raises(HpcragError, match=r'filter on \'n\': "in" lists 10001 values, more than 10000'):
        compile_filter({"n": {"in": list(range(MAX_IN_VALUES + 1))}}, SCHEMA)


ERRORS = [
    ({"colour": "red"}, r'unknown attribute "colour"; this index has: n, source, date, tenant'),
    ({"or": [{"n": 1}, {"colour": "red"}]}, r'unknown attribute "colour"'),
    ({"n": "three"}, r'filter on \'n\' must be an integer, got a string \("three"\)'),
    ({"n": {"gt": 2.5}}, r"filter on 'n' must be an integer, got a float \(2.5\)"),
    ({"n": True}, r"filter on 'n' must be an integer, got a boolean"),
    ({"n": None}, r"filter on 'n' must be an integer, got null"),
    ({"source": 3}, r"filter on 'source' must be a string, got an integer \(3\)"),
    ({"date": {"gte": "last week"}}, r'filter on \'date\': "last week" is not an ISO 8601 time'),
    ({"tenant": {"in": ["a", 1]}}, r"filter on 'tenant' must be a string, got an integer \(1\)"),
    (
        {"n": {"between": [1, 2]}},
        r'unknown operator "between" in the filter on \'n\'; valid operators: eq, ne, in',
    ),
    ({"source": {"gte": "a"}}, r"filter on 'source': gte is a range, and 'source' is a str attribute"),
    ({"tenant": {"lt": "b"}}, r"ranges work on int and time attributes only: use eq, ne or in"),
    ({"and": []}, r'"and" takes a non-empty list of filters'),
    ({"or": []}, r'"or" takes a non-empty list of filters'),
    ({"or": {"n": 1}}, r'"or" takes a non-empty list of filters.*got an object'),
    ({"not": [{"n": 1}]}, r'"not" takes one filter object.*got a list'),
    ({"n": {"in": "a,b"}}, r'filter on \'n\': "in" takes a list of values.*got a string \("a,b"\)'),
    ({"n": {"in": 3}}, r'"in" takes a list of values'),
    (
        {"tenant": ["a", "b"]},
        r'filter on \'tenant\' is a list; to match any of several values write \{"tenant": \{"in"',
    ),
    ({}, r"the filter object is empty; give a condition"),
    ({"or": [{}]}, r"the filter object is empty"),
    (
        {"n": {}},
        r"the condition on 'n' is an empty object; give an operator \(eq, ne, in, gt, gte, lt, lte\)",
    ),
    ([{"n": 1}], r"a filter is an object like .*, got a list"),
    ("n=1", r'a filter is an object like .*, got a string \("n=1"\)'),
    ({"n": 2**63}, r"filter on 'n' is 9223372036854775808, outside"),
]


@pytest.mark.parametrize(("spec", "message"), ERRORS, ids=[repr(spec)[:40] for spec, _ in ERRORS])
def test_compile_errors(spec: Any, message: str) -> None:
    with pytest.raises(HpcragError, match=message):
        compile_filter(spec, SCHEMA)


def test_filter_on_an_index_without_attributes() -> None:
    with pytest.raises(HpcragError, match=r'unknown attribute "n": this index has no attributes; declare'):
        compile_filter({"n": 1}, AttributeSchema())


# --- the command-line form ----------------------------------------------------------------------


def test_no_arguments_is_no_filter() -> None:
    assert parse_filter_args([], SCHEMA) is None


CLI = [
    (["source=faq"], {"source": "faq"}),
    (["n=3"], {"n": 3}),
    (["n = 3"], {"n": 3}),
    (["n!=3"], {"n": {"ne": 3}}),
    (["n>=3"], {"n": {"gte": 3}}),
    (["n>3"], {"n": {"gt": 3}}),
    (["n<=-3"], {"n": {"lte": -3}}),
    (["n<3"], {"n": {"lt": 3}}),
    (["tenant in a,b,c"], {"tenant": {"in": ["a", "b", "c"]}}),
    (["tenant in a, b"], {"tenant": {"in": ["a", "b"]}}),
    (["n in 1,2"], {"n": {"in": [1, 2]}}),
    (["source=a,b"], {"source": "a,b"}),  # only "in" is membership
    (["source=x=y"], {"source": "x=y"}),
    (["source=hello world"], {"source": "hello world"}),
    (["date>=2024-01-01"], {"date": {"gte": "2024-01-01"}}),
    (["date>=1704067200"], {"date": {"gte": "2024-01-01"}}),
    (["date<1704067200.5"], {"date": {"lt": 1_704_067_200.5}}),
    (["n>=1", "n<5", "source!=faq"], {"n": {"gte": 1, "lt": 5}, "source": {"ne": "faq"}}),
    (['{"or": [{"n": 1}, {"tenant": "a"}]}'], {"or": [{"n": 1}, {"tenant": "a"}]}),
    (['  {"n": 1}', "source=faq"], {"n": 1, "source": "faq"}),
]


@pytest.mark.parametrize(("args", "spec"), CLI, ids=[" ".join(args) for args, _ in CLI])
def test_command_line_forms(args: list[str], spec: Any) -> None:
    parsed = parse_filter_args(args, SCHEMA)
    assert parsed is not None
    assert parsed == compile_filter(spec, SCHEMA)
    np.testing.assert_array_equal(parsed.mask(COLUMNS), compile_filter(spec, SCHEMA).mask(COLUMNS))


def test_a_deep_json_argument_and_another_stay_within_the_limit() -> None:
    parsed = parse_filter_args([json.dumps(_nested_not(MAX_DEPTH - 1)), "source=faq"], SCHEMA)
    assert parsed is not None
    assert parsed.key.startswith("and(")


CLI_ERRORS = [
    (["n"], r'filter argument "n": not a condition; write name=value, name!=value, .*name in a,b,c'),
    (["=3"], r'filter argument "=3": not a condition'),
    (["n~3"], r'filter argument "n~3": not a condition'),
    (["colour=red"], r'filter argument "colour=red": unknown attribute "colour"; this index has: n,'),
    (["n=three"], r'filter argument "n=three": "three" is not an integer \(\'n\' is an int attribute\)$'),
    (["n=1,2"], r"\"1,2\" is not an integer .*; to match any of several values write 'n in 1,2'"),
    (["n in 1,x"], r'filter argument "n in 1,x": "x" is not an integer'),
    (["source>a"], r'filter argument "source>a": filter on \'source\': gt is a range'),
    (["date>=soon"], r'filter argument "date>=soon": filter on \'date\': "soon" is not an ISO 8601 time'),
    (['{"n": 1'], r'filter argument "\{\\"n\\": 1": not valid JSON'),
    (["{}"], r'filter argument "\{\}": the filter object is empty'),
    (["n=1", '{"n": {"bad": 1}}'], r'unknown operator "bad"'),
]


@pytest.mark.parametrize(("args", "message"), CLI_ERRORS, ids=[" ".join(args) for args, _ in CLI_ERRORS])
def test_command_line_errors(args: list[str], message: str) -> None:
    with pytest.raises(HpcragError, match=message):
        parse_filter_args(args, SCHEMA)
