"""Filters on attributes: a small JSON language, compiled against an index's schema into a picklable
tree of int64 comparisons and evaluated as a vectorised NumPy mask over the attribute columns.

    {"source": "faq"}                                    equality; the keys of one object are AND-ed
    {"tenant": {"in": ["a", "b"]}}                       membership, at most 10,000 values
    {"date": {"gte": "2024-01-01", "lt": "2025-01-01"}}  ranges gt, gte, lt, lte (int and time only)
    {"n": {"eq": 3}}, {"n": {"ne": 3}}                   equality, inequality
    {"and": [F, ...]}, {"or": [F, ...]}, {"not": F}      logic, at most 16 objects deep

A row without the attribute (MISSING) matches no comparison: not eq, ne, in, nor a range. "not" is
the plain logical negation of its filter's mask, so {"not": {"source": "faq"}} also matches the rows
that have no source. An empty "in" list matches nothing.

On the command line (`parse_filter_args`) each argument is name=value, name!=value, name>=value,
name>value, name<=value, name<value or name in a,b,c (name=a,b compares with the text "a,b"), or a
JSON object; the arguments are AND-ed.

Two filters that mean the same (keys in another order, and/or parts reordered or repeated, "in"
values reordered or repeated, one time written two ways) get equal `Filter.key`s; a Filter compares
and hashes by its key, which groups requests into batches.
"""

from __future__ import annotations

import json
import operator
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import numpy as np

from hpcrag.errors import HpcragError
from hpcrag.search.attributes import EPOCH, MISSING, AttributeSchema, encode_value, kind_of, shown_value

OPERATORS = ("eq", "ne", "in", "gt", "gte", "lt", "lte")
RANGE_OPERATORS = ("gt", "gte", "lt", "lte")
MAX_IN_VALUES = 10_000
MAX_DEPTH = 16

_EXAMPLE = '{"source": "faq", "date": {"gte": "2024-01-01"}}'
_SYMBOLS = {"eq": "=", "ne": "!=", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
_COMPARE: dict[str, Callable[[Any, int], Any]] = {
    "eq": operator.eq,
    "ne": operator.ne,
    "gt": operator.gt,
    "gte": operator.ge,
    "lt": operator.lt,
    "lte": operator.le,
}
# MISSING is the int64 minimum and no value encodes to it: eq, gt and gte never match it by
# themselves, ne, lt and lte would without the presence test.
_MATCH_MISSING = ("ne", "lt", "lte")


@dataclass(frozen=True)
class _Compare:
    column: int
    name: str
    op: str
    value: int
    shown: str

    @property
    def key(self) -> str:
        return f"{self.op}({self.name},{self.value})"

    def mask(self, columns: np.ndarray) -> np.ndarray:
        column = columns[:, self.column]
        hits = _COMPARE[self.op](column, self.value)
        return hits & (column != MISSING) if self.op in _MATCH_MISSING else hits

    def text(self) -> str:
        return f"{self.name} {_SYMBOLS[self.op]} {self.shown}"


@dataclass(frozen=True)
class _Member:
    column: int
    name: str
    values: tuple[int, ...]  # sorted, unique
    shown: tuple[str, ...]

    @property
    def key(self) -> str:
        return f"in({self.name},{','.join(map(str, self.values))})"

    def mask(self, columns: np.ndarray) -> np.ndarray:
        return np.isin(columns[:, self.column], np.array(self.values, dtype=np.int64))

    def text(self) -> str:
        return f"{self.name} in [{', '.join(self.shown)}]"


@dataclass(frozen=True)
class _All:
    parts: tuple[_Node, ...]  # two or more, sorted by key, none an _All

    @property
    def key(self) -> str:
        return f"and({','.join(part.key for part in self.parts)})"

    def mask(self, columns: np.ndarray) -> np.ndarray:
        result = self.parts[0].mask(columns)
        for part in self.parts[1:]:
            result &= part.mask(columns)
        return result

    def text(self) -> str:
        return " and ".join(_grouped(part) for part in self.parts)


@dataclass(frozen=True)
class _Any:
    parts: tuple[_Node, ...]  # two or more, sorted by key, none an _Any

    @property
    def key(self) -> str:
        return f"or({','.join(part.key for part in self.parts)})"

    def mask(self, columns: np.ndarray) -> np.ndarray:
        result = self.parts[0].mask(columns)
        for part in self.parts[1:]:
            result |= part.mask(columns)
        return result

    def text(self) -> str:
        return " or ".join(_grouped(part) for part in self.parts)


@dataclass(frozen=True)
class _Not:
    part: _Node  # never a _Not

    @property
    def key(self) -> str:
        return f"not({self.part.key})"

    def mask(self, columns: np.ndarray) -> np.ndarray:
        return ~self.part.mask(columns)

    def text(self) -> str:
        return f"not ({self.part.text()})"


_Node = _Compare | _Member | _All | _Any | _Not


def _grouped(node: _Node) -> str:
    return f"({node.text()})" if isinstance(node, (_All, _Any)) else node.text()


def _combine(kind: type[_All] | type[_Any], parts: Iterable[_Node]) -> _Node:
    """The canonical AND (or OR) of `parts`: nested ones flattened, repeats dropped, sorted by key."""
    unique: dict[str, _Node] = {}
    for part in parts:
        for piece in part.parts if isinstance(part, kind) else (part,):
            unique.setdefault(piece.key, piece)
    if len(unique) == 1:
        return next(iter(unique.values()))
    return kind(tuple(unique[key] for key in sorted(unique)))


def _negate(node: _Node) -> _Node:
    return node.part if isinstance(node, _Not) else _Not(node)


@dataclass(frozen=True)
class Filter:
    """A compiled filter. Picklable (it is broadcast to every rank); equal and hashed by `key`."""

    key: str
    root: _Node = field(compare=False, repr=False)
    width: int = field(compare=False)  # the number of attribute columns it was compiled for

    def mask(self, columns: np.ndarray) -> np.ndarray:
        """Which rows of an (n, A) int64 attribute array match, A >= width (a schema only grows, by
        appending columns): a bool array of n."""
        columns = np.asarray(columns)
        if columns.ndim != 2 or columns.shape[1] < self.width or columns.dtype != np.int64:
            raise HpcragError(
                f"attribute columns of shape {columns.shape} and dtype {columns.dtype} do not fit this "
                f"filter, compiled for {self.width} int64 columns; compile it against this index's schema"
            )
        return self.root.mask(columns)

    def describe(self) -> str:
        """The filter as a person reads it, e.g. 'source = "faq" and n >= 3'."""
        return self.root.text()


def compile_filter(spec: Any, schema: AttributeSchema) -> Filter:
    """The Filter of a JSON-like filter object, checked against `schema`."""
    root = _compile(spec, schema, 1)
    return Filter(root.key, root, len(schema.columns))


def _compile(spec: Any, schema: AttributeSchema, depth: int) -> _Node:
    if depth > MAX_DEPTH:
        raise HpcragError(
            f"the filter nests objects more than {MAX_DEPTH} deep; flatten it (one and/or takes any "
            "number of parts)"
        )
    if not isinstance(spec, Mapping):
        raise HpcragError(f"a filter is an object like {_EXAMPLE}, got {kind_of(spec)}")
    if not spec:
        raise HpcragError(f"the filter object is empty; give a condition, like {_EXAMPLE}, or no filter")
    parts = []
    for name, value in spec.items():
        if name in ("and", "or"):
            if not isinstance(value, (list, tuple)) or not value:
                raise HpcragError(
                    f'"{name}" takes a non-empty list of filters, like {{"{name}": [{{"source": "faq"}}, '
                    f'{{"source": "blog"}}]}}; got {kind_of(value)}'
                )
            nodes = [_compile(item, schema, depth + 1) for item in value]
            parts.append(_combine(_All if name == "and" else _Any, nodes))
        elif name == "not":
            if not isinstance(value, Mapping):
                raise HpcragError(
                    '"not" takes one filter object, like {"not": {"source": "faq"}}; '
                    f"got {kind_of(value)}"
                )
            parts.append(_negate(_compile(value, schema, depth + 1)))
        else:
            parts.append(_condition(name, value, schema))
    return _combine(_All, parts)


def _condition(name: Any, value: Any, schema: AttributeSchema) -> _Node:
    kind = schema.type_of(name)
    column = schema.index_of(name)
    if isinstance(value, Mapping):
        if not value:
            raise HpcragError(
                f"the condition on {name!r} is an empty object; give an operator "
                f'({", ".join(OPERATORS)}), like {{"{name}": {{"eq": ...}}}}'
            )
        return _combine(_All, [_operator(name, kind, column, op, operand) for op, operand in value.items()])
    if isinstance(value, (list, tuple)):
        raise HpcragError(
            f"the filter on {name!r} is a list; to match any of several values write "
            f'{{"{name}": {{"in": [...]}}}}'
        )
    return _operator(name, kind, column, "eq", value)


def _operator(name: str, kind: str, column: int, op: Any, operand: Any) -> _Node:
    where = f"filter on {name!r}"
    if op not in OPERATORS:
        raise HpcragError(
            f"unknown operator {shown_value(op)} in the {where}; valid operators: {', '.join(OPERATORS)}"
        )
    if op in RANGE_OPERATORS and kind == "str":
        raise HpcragError(
            f"{where}: {op} is a range, and {name!r} is a str attribute, compared by hash; ranges work on "
            "int and time attributes only: use eq, ne or in"
        )
    if op != "in":
        encoded = encode_value(kind, operand, where)
        return _Compare(column, name, op, encoded, _display(kind, encoded, operand))
    if not isinstance(operand, (list, tuple)):
        raise HpcragError(
            f'{where}: "in" takes a list of values, like {{"{name}": {{"in": [...]}}}}; '
            f"got {kind_of(operand)}"
        )
    if len(operand) > MAX_IN_VALUES:
        raise HpcragError(
            f'{where}: "in" lists {len(operand)} values, more than {MAX_IN_VALUES}; split the request or '
            "filter on a coarser attribute"
        )
    shown: dict[int, str] = {}
    for item in operand:
        encoded = encode_value(kind, item, where)
        shown.setdefault(encoded, _display(kind, encoded, item))
    if len(shown) == 1:
        ((value, text),) = shown.items()
        return _Compare(column, name, "eq", value, text)
    values = tuple(sorted(shown))
    return _Member(column, name, values, tuple(shown[value] for value in values))


def _display(kind: str, encoded: int, original: Any) -> str:
    if kind == "int":
        return str(encoded)
    if kind == "time":
        try:
            return (EPOCH + timedelta(microseconds=encoded)).isoformat()
        except OverflowError:  # a time beyond year 9999, given in seconds
            return f"{encoded} µs"
    return shown_value(original)


_NAME = r"\s*([A-Za-z_][A-Za-z0-9_.-]*)"
_MEMBERSHIP = re.compile(_NAME + r"\s+in\s+(.+?)\s*", re.DOTALL)
_CONDITION = re.compile(_NAME + r"\s*(!=|>=|<=|=|>|<)\s*(.*?)\s*", re.DOTALL)
_NUMBER = re.compile(r"[-+]?[0-9]+(\.[0-9]*)?([eE][-+]?[0-9]+)?")
_CLI_OPERATORS = {"=": "eq", "!=": "ne", ">=": "gte", ">": "gt", "<=": "lte", "<": "lt"}
_FORMS = (
    "name=value, name!=value, name>=value, name>value, name<=value, name<value, name in a,b,c, "
    f"or one JSON object like {_EXAMPLE}"
)


def parse_filter_args(args: Sequence[str], schema: AttributeSchema) -> Filter | None:
    """The AND of command-line filter arguments, or None when there are none."""
    if not args:
        return None
    nodes = []
    for arg in args:
        try:
            nodes.append(_compile(_parse_arg(arg, schema), schema, 1))
        except HpcragError as exc:
            raise HpcragError(f"filter argument {shown_value(arg)}: {exc}") from None
    root = _combine(_All, nodes)
    return Filter(root.key, root, len(schema.columns))


def _parse_arg(arg: str, schema: AttributeSchema) -> Any:
    if arg.lstrip().startswith("{"):
        try:
            return json.loads(arg)
        except RecursionError:
            raise HpcragError("the JSON nests too deeply; flatten it") from None
        except ValueError as exc:
            raise HpcragError(f"not valid JSON ({str(exc).splitlines()[0][:200]}); write {_FORMS}") from None
    match = _MEMBERSHIP.fullmatch(arg)
    if match:
        name, listed = match.groups()
        kind = schema.type_of(name)
        return {name: {"in": [_cli_value(name, kind, item.strip()) for item in listed.split(",")]}}
    match = _CONDITION.fullmatch(arg)
    if match:
        name, symbol, text = match.groups()
        return {name: {_CLI_OPERATORS[symbol]: _cli_value(name, schema.type_of(name), text)}}
    raise HpcragError(f"not a condition; write {_FORMS}")


def _cli_value(name: str, kind: str, text: str) -> Any:
    """A command-line value as the attribute's type takes it: int() for int, a number of seconds or
    an ISO string for time, the text itself for str."""
    if kind == "int":
        try:
            return int(text)
        except ValueError:
            several = f"; to match any of several values write '{name} in {text}'" if "," in text else ""
            raise HpcragError(
                f"{shown_value(text)} is not an integer ({name!r} is an int attribute){several}"
            ) from None
    if kind == "time" and _NUMBER.fullmatch(text):
        return int(text) if text.lstrip("+-").isdigit() else float(text)
    return text
