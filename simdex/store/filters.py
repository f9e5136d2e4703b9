"""Metadata filters: JSON text -> validated conditions -> one SQL boolean expression.

Grammar (all conditions AND together):
    {"field": value}                      equality (value: string, number, bool or null)
    {"field": {"$in": [v1, v2, ...]}}     any of the values
    {"field": {"$ne": value}}             not equal (missing fields match, as in MongoDB)
    {"field": {"$gte": a, "$lte": b}}     range; also $gt and $lt; bounds are numbers or strings

Type-strict like JSON: 1 matches the number 1, never the string "1"; true never matches 1.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Float, and_, case, cast, false, func, literal, not_, or_, true

from simdex.errors import InvalidArgument

FIELD_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]{0,127}$")
RANGE_OPS = {"$gt": "__gt__", "$gte": "__ge__", "$lt": "__lt__", "$lte": "__le__"}
ALL_OPS = {"$in", "$ne", *RANGE_OPS}
MAX_IN = 10000


@dataclass(frozen=True)
class Cond:
    field: str
    op: str          # "$eq", "$in", "$ne", "$gt", "$gte", "$lt", "$lte"
    value: Any


Filter = tuple[Cond, ...]


def _scalar(v: Any, where: str) -> Any:
    if v is None or isinstance(v, (str, bool)):
        return v
    if isinstance(v, (int, float)):
        if v != v or v in (float("inf"), float("-inf")):
            raise InvalidArgument(f"filter: {where}: non-finite number")
        return v
    raise InvalidArgument(f"filter: {where}: expected a string, number, bool or null, got {type(v).__name__}")


def parse(text: str | dict | None) -> Filter:
    """Validate a filter (JSON text or dict). Empty text or {} means no filter."""
    if text is None or text == "" or text == {}:
        return ()
    if isinstance(text, str):
        try:
            spec = json.loads(text)
        except ValueError as exc:
            raise InvalidArgument(f"filter: not valid JSON ({exc})") from None
    else:
        spec = text
    if not isinstance(spec, dict):
        raise InvalidArgument(f"filter: must be a JSON object of field conditions, got {type(spec).__name__}")
    conds: list[Cond] = []
    for field, rule in spec.items():
        if not isinstance(field, str) or not FIELD_RE.match(field):
            raise InvalidArgument(
                f"filter: field name {field!r} is invalid (letters, digits, '_' and '-', starting with a letter)")
        if not isinstance(rule, dict):
            conds.append(Cond(field, "$eq", _scalar(rule, field)))
            continue
        if not rule:
            raise InvalidArgument(f"filter: {field}: empty operator object")
        for op, v in rule.items():
            if op not in ALL_OPS:
                raise InvalidArgument(f"filter: {field}: unknown operator {op!r} (use one of {sorted(ALL_OPS)})")
            if op == "$in":
                if not isinstance(v, list) or not v:
                    raise InvalidArgument(f"filter: {field}.$in must be a non-empty list")
                if len(v) > MAX_IN:
                    raise InvalidArgument(f"filter: {field}.$in has {len(v)} values; at most {MAX_IN}")
                conds.append(Cond(field, op, tuple(_scalar(x, f"{field}.$in") for x in v)))
            elif op == "$ne":
                conds.append(Cond(field, op, _scalar(v, f"{field}.$ne")))
            else:
                if isinstance(v, bool) or not isinstance(v, (int, float, str)):
                    raise InvalidArgument(f"filter: {field}.{op} needs a number or a string, got {v!r}")
                conds.append(Cond(field, op, _scalar(v, f"{field}.{op}")))
    return tuple(conds)


class _Json:
    """The few JSON accessors the compiler needs, per dialect (SQLite json1 or PostgreSQL jsonb)."""

    def __init__(self, col, dialect: str, field: str):
        self.pg = dialect == "postgresql"
        self.col, self.field = col, field
        self.path = f'$."{field}"'

    def type_(self):
        # SQLite: integer real text true false null object array; PostgreSQL: number string boolean null ...
        if self.pg:
            return func.jsonb_typeof(self.col.op("->")(self.field))
        return func.json_type(self.col, self.path)

    def is_number(self):
        return self.type_() == "number" if self.pg else self.type_().in_(["integer", "real"])

    def number(self):
        if self.pg:  # the CASE keeps PostgreSQL from casting text that is not a number
            return case((self.is_number(), cast(self.col.op("->>")(self.field), Float)), else_=None)
        return func.json_extract(self.col, self.path)

    def is_string(self):
        return self.type_() == ("string" if self.pg else "text")

    def string(self):
        if self.pg:
            return self.col.op("->>")(self.field)
        return func.json_extract(self.col, self.path)


def _eq(j: _Json, v: Any):
    if v is None:
        return j.type_() == "null"
    if isinstance(v, bool):
        if j.pg:
            return and_(j.type_() == "boolean", j.string() == ("true" if v else "false"))
        return j.type_() == ("true" if v else "false")
    if isinstance(v, (int, float)):
        return and_(j.is_number(), j.number() == literal(float(v), Float))
    return and_(j.is_string(), j.string() == v)


def _cond_sql(c: Cond, col, dialect: str):
    j = _Json(col, dialect, c.field)
    if c.op == "$eq":
        return _eq(j, c.value)
    if c.op == "$in":
        return or_(*[_eq(j, v) for v in c.value])
    if c.op == "$ne":
        return or_(j.type_().is_(None), not_(func.coalesce(_eq(j, c.value), false())))
    cmp = RANGE_OPS[c.op]
    if isinstance(c.value, str):
        return and_(j.is_string(), getattr(j.string(), cmp)(c.value))
    return and_(j.is_number(), getattr(j.number(), cmp)(literal(float(c.value), Float)))


def compile_sql(spec: Filter, col, dialect: str):
    """One SQL boolean expression over the JSON column `col` for the whole filter."""
    if not spec:
        return true()
    return and_(*[_cond_sql(c, col, dialect) for c in spec])
