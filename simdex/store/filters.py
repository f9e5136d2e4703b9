"""Metadata filters: JSON text -> validated conditions -> one SQL boolean expression.

Grammar (all conditions AND together):
    {"field": value}                      equality (value: string, number, bool or null)
    {"field": {"$in": [v1, v2, ...]}}     any of the values (at most MAX_IN)
    {"field": {"$ne": value}}             not equal (missing fields match, as in MongoDB)
    {"field": {"$gte": a, "$lte": b}}     range; also $gt and $lt; bounds are numbers or strings

Type-strict like JSON: 1 matches the number 1, never the string "1"; true never matches 1. Numbers compare by
value and integers exactly (9007199254740993 never matches 9007199254740992): SQLite compares its INTEGER and
REAL values exactly, PostgreSQL compares jsonb numbers (arbitrary-precision numeric), never through a float.

The JSON values the store holds and compares (`scalar_problem`, shared with the metadata gate of the service):
integers in the signed 64-bit range, finite floats, and text without NUL (U+0000) or lone surrogates. A filter
naming any other value is refused, so no value can make a query fail on the database.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import BigInteger, Float, and_, cast, false, func, literal, not_, or_, select, true
from sqlalchemy.dialects.postgresql import JSONB

from simdex.errors import InvalidArgument, not_a_json_object

# \A...\Z: a whole-string match even through re.match ("a\n" is not "a"; `$` would match before the newline).
FIELD_RE = re.compile(r"\A[A-Za-z_][A-Za-z0-9_\-]{0,127}\Z")
RANGE_OPS = {"$gt": "__gt__", "$gte": "__ge__", "$lt": "__lt__", "$lte": "__le__"}
ALL_OPS = {"$in", "$ne", *RANGE_OPS}
MAX_IN = 10_000  # values of one $in list: one bound JSON array, so the SQL stays flat at any length up to this
INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1


@dataclass(frozen=True)
class Cond:
    field: str
    op: str          # "$eq", "$in", "$ne", "$gt", "$gte", "$lt", "$lte"
    value: Any


Filter = tuple[Cond, ...]


# ---- the values the store can hold ---------------------------------------------------------------------------
def text_problem(s: str) -> str | None:
    """What keeps the text `s` out of the database (None when nothing): NUL, which PostgreSQL text and jsonb
    cannot hold, or a lone surrogate, which is not Unicode and cannot be encoded as UTF-8."""
    if "\x00" in s:
        return f"holds a NUL character (U+0000) at position {s.index(chr(0))}, which the database cannot store"
    if s.isascii():  # O(1) in CPython: the common case needs no encoding
        return None
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"holds a lone surrogate {s[exc.start]!r} at position {exc.start}, which is not Unicode text"
    return None


def scalar_problem(v: Any) -> str | None:
    """What keeps the JSON scalar `v` out of the database (None when nothing): integers outside the signed 64-bit
    range, non-finite floats, and text per `text_problem`."""
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, int):
        if not INT64_MIN <= v <= INT64_MAX:
            shown = str(v) if len(str(v)) <= 40 else f"of {len(str(v))} digits"
            return (f"integer {shown} is outside the signed 64-bit range [-2**63, 2**63 - 1] that stored "
                    "integers keep; write it as a string, or as a float if it is approximate")
        return None
    if isinstance(v, float):
        return None if math.isfinite(v) else f"non-finite number {v!r} (JSON numbers are finite)"
    if isinstance(v, str):
        return text_problem(v)
    return None


def _scalar(v: Any, where: str) -> Any:
    if not (v is None or isinstance(v, (str, bool, int, float))):
        raise InvalidArgument(f"filter: {where}: expected a string, number, bool or null, got {type(v).__name__}")
    problem = scalar_problem(v)
    if problem:
        raise InvalidArgument(f"filter: {where}: {problem}")
    return v


# ---- parsing -------------------------------------------------------------------------------------------------
def _load(text: str | dict) -> dict:
    if isinstance(text, str):
        try:
            spec = json.loads(text)
        except ValueError as exc:
            raise not_a_json_object("filter", text, f"not valid JSON: {exc}") from None
        except RecursionError:
            raise InvalidArgument("filter: nested too deeply (a filter is {field: value} or {field: {op: value}})"
                                  ) from None
    else:
        spec = text
    if not isinstance(spec, dict):
        raise not_a_json_object("filter", text, f"a JSON {type(spec).__name__}, not an object of field conditions")
    return spec


def _rule(field: str, op: str, v: Any) -> Cond:
    if op not in ALL_OPS:
        raise InvalidArgument(f"filter: {field}: unknown operator {op!r} (use one of {sorted(ALL_OPS)})")
    if op == "$in":
        if not isinstance(v, list) or not v:
            raise InvalidArgument(f"filter: {field}.$in must be a non-empty list")
        if len(v) > MAX_IN:
            raise InvalidArgument(f"filter: {field}.$in has {len(v)} values; at most {MAX_IN}")
        return Cond(field, op, tuple(_scalar(x, f"{field}.$in[{i}]") for i, x in enumerate(v)))
    if op == "$ne":
        return Cond(field, op, _scalar(v, f"{field}.$ne"))
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise InvalidArgument(f"filter: {field}.{op} needs a number or a string, got {v!r}")
    return Cond(field, op, _scalar(v, f"{field}.{op}"))


def parse(text: str | dict | None) -> Filter:
    """Validate a filter (JSON text or dict). Empty text or {} means no filter."""
    if text is None or text == "" or text == {}:
        return ()
    conds: list[Cond] = []
    for field, rule in _load(text).items():
        if not isinstance(field, str) or not FIELD_RE.fullmatch(field):
            raise InvalidArgument(
                f"filter: field name {field!r} is invalid (1-128 letters, digits, '_' and '-', starting with a "
                "letter or '_')")
        if not isinstance(rule, dict):
            conds.append(Cond(field, "$eq", _scalar(rule, field)))
            continue
        if not rule:
            raise InvalidArgument(f"filter: {field}: empty operator object")
        conds.extend(_rule(field, op, v) for op, v in rule.items())
    return tuple(conds)


def cache_key(spec: Filter) -> tuple:
    """A hashable key equal only for filters that match the same items: Cond's own equality is Python's, where
    True == 1 == 1.0, but JSON types are strict here (true never matches 1), so each value carries its type."""
    def typed(v: Any) -> tuple:
        return (type(v).__name__, tuple(map(typed, v)) if isinstance(v, tuple) else v)

    return tuple((c.field, c.op, typed(c.value)) for c in spec)


# ---- SQL -----------------------------------------------------------------------------------------------------
def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


class _SQLite:
    """json1: json_type names integer real text true false null object array; json_extract gives SQL values
    (INTEGER and REAL compare exactly with each other and with bound Python ints and floats)."""

    def __init__(self, col, field: str):
        self.col, self.path = col, f'$."{field}"'  # FIELD_RE admits no quote: the path cannot be escaped

    def type_(self):
        return func.json_type(self.col, self.path)

    def value(self):
        return func.json_extract(self.col, self.path)

    @staticmethod
    def number(v: int | float):
        """A bound number: an int as INTEGER (exact to the last digit), a float as REAL."""
        return literal(v, BigInteger if isinstance(v, int) else Float)

    def eq(self, v: Any):
        if v is None or isinstance(v, bool):
            return self.type_() == ("null" if v is None else "true" if v else "false")
        if _is_number(v):
            return and_(self.type_().in_(["integer", "real"]), self.value() == self.number(v))
        return and_(self.type_() == "text", self.value() == v)

    def any_of(self, values: tuple):
        """One IN over a bound JSON array per type (numbers, strings), plus the few literal types: flat at any
        length (an OR per value nests past SQLite's expression depth of 1000)."""
        nums = [v for v in values if _is_number(v)]
        strs = [v for v in values if isinstance(v, str)]
        parts = [self.eq(v) for v in dict.fromkeys(v for v in values if v is None or isinstance(v, bool))]
        for group, types in ((nums, ["integer", "real"]), (strs, ["text"])):
            if group:
                each = func.json_each(literal(json.dumps(group, ensure_ascii=False))).table_valued("value")
                parts.append(and_(self.type_().in_(types), self.value().in_(select(each.c.value))))
        return or_(*parts)

    def compare(self, op: str, v: int | float | str):
        if isinstance(v, str):
            return and_(self.type_() == "text", getattr(self.value(), RANGE_OPS[op])(v))
        return and_(self.type_().in_(["integer", "real"]), getattr(self.value(), RANGE_OPS[op])(self.number(v)))


class _Postgres:
    """jsonb: values compared as jsonb, so numbers compare as arbitrary-precision numeric (exact, and never a
    cast that a stored value could overflow) and types never mix (jsonb '1' is not '"1"' nor 'true')."""

    def __init__(self, col, field: str):
        self.col, self.field = col, field

    def type_(self):
        return func.jsonb_typeof(self.value())

    def value(self):
        return self.col.op("->")(self.field)

    @staticmethod
    def bound(v: Any):
        return cast(literal(json.dumps(v, ensure_ascii=False)), JSONB)

    def eq(self, v: Any):
        return self.value() == self.bound(v)

    def any_of(self, values: tuple):
        """One IN over the elements of a bound jsonb array: flat at any length."""
        each = func.jsonb_array_elements(self.bound(list(values))).table_valued("value")
        return self.value().in_(select(each.c.value))

    def compare(self, op: str, v: Any):
        if isinstance(v, str):  # text order of the database's collation, as for any text column
            return and_(self.type_() == "string", getattr(self.col.op("->>")(self.field), RANGE_OPS[op])(v))
        return and_(self.type_() == "number", getattr(self.value(), RANGE_OPS[op])(self.bound(v)))


def _cond_sql(c: Cond, col, dialect: str):
    j = _Postgres(col, c.field) if dialect == "postgresql" else _SQLite(col, c.field)
    if c.op == "$eq":
        return j.eq(c.value)
    if c.op == "$in":
        return j.any_of(c.value)
    if c.op == "$ne":
        return or_(j.type_().is_(None), not_(func.coalesce(j.eq(c.value), false())))
    return j.compare(c.op, c.value)


def compile_sql(spec: Filter, col, dialect: str):
    """One SQL boolean expression over the JSON column `col` for the whole filter."""
    if not spec:
        return true()
    return and_(*[_cond_sql(c, col, dialect) for c in spec])
