"""The Supabase dialect's filter syntax (PostgREST style) as the core's one filter engine.

``parse_filter("status=in.(open,held),age=not.lt.18", types)`` builds the same ``RowFilter``
(relay/core/filters.py) a protocol v1 client gets from ``{"status": {"in": ["open", "held"]},
"age": {"not": {"lt": 18}}}``. The grammar is what @supabase/realtime-js emits and Supabase
Realtime parses (docs/supabase.md)::

    filter := cond ("," cond)*          comma is AND; an empty or blank filter is no filter
    cond   := column "=" ["not."] op "." value
    op     := eq | neq | lt | lte | gt | gte | in
    value  := raw | '"' escaped '"'     quotes protect , ( ) " and \\ (backslash escapes)
    in     := "(" item ("," item)* ")"  items trimmed, each raw or quoted

Values are text; Supabase casts them to the column's type in SQL. Here a value is compared with
a column value of its own JSON kind: with the column's PostgreSQL type known (``types``), it is
read as that type (a number for the numeric types, a boolean for ``bool``, a canonical UUID,
a JSON scalar for ``json``/``jsonb``, else the text) and a value that type cannot read is
refused, as Supabase refuses it; with the type unknown it stands for every kind it can be read
as (``200`` is the string and the number; ``t`` the string and ``true``), each compared only
with column values of that kind. Operators Supabase knows and the relay does not (``like``,
``ilike``, ``is``, ``match``, ``imatch``, ``isdistinct``) are refused, never ignored.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from typing import Final

from relay.core.conditions import COMPARISONS, OPERATORS, Condition
from relay.core.filters import MAX_IN_VALUES, MAX_NAME_BYTES, RowFilter
from relay.core.jsonkeys import FALSE, TRUE, UNMATCHABLE, Kind, key, keys_of, rank
from relay.errors import ProtocolError

__all__ = ["NUMERIC_TYPES", "UNSUPPORTED_OPERATORS", "parse_filter"]

UNSUPPORTED_OPERATORS: Final = frozenset({"like", "ilike", "is", "match", "imatch", "isdistinct"})
NUMERIC_TYPES: Final = frozenset({"int2", "int4", "int8", "float4", "float8", "numeric", "oid"})
_NUMBER: Final = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_INTEGER: Final = re.compile(r"[+-]?\d{1,100}")
_TRUE_WORDS: Final = frozenset({"t", "true", "y", "yes", "on", "1"})
_FALSE_WORDS: Final = frozenset({"f", "false", "n", "no", "off", "0"})
_PREFIX: Final = "Error parsing `filter` params: "


def _error(detail: str) -> ProtocolError:
    return ProtocolError("bad_message", _PREFIX + detail)


def _elixir_list(parts: list[str]) -> str:
    """Parts shown as Supabase shows them (an Elixir list of strings), each cut to 40 chars."""
    return "[" + ", ".join(json.dumps(part[:40], ensure_ascii=True) for part in parts) + "]"


def _split(text: str, *, top: bool) -> list[str]:
    """Splits at commas outside double quotes (and, at the top level, outside parentheses); a
    quote opens only after ``.``, ``(`` or ``,`` as Supabase reads it (or, in an ``in`` list,
    after the blanks that start an item, as PostgreSQL's array input reads it)."""
    parts: list[str] = []
    current: list[str] = []
    depth, quoted, escaped, prev = 0, False, False, ","
    for char in text:
        if quoted:
            current.append(char)
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                quoted = False
        elif char == '"' and (prev in ".(," or (not top and not "".join(current).strip())):
            quoted = True
            current.append(char)
        elif char == "(" and top:
            depth += 1
            current.append(char)
        elif char == ")" and top:
            depth = max(0, depth - 1)
            current.append(char)
        elif char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
        prev = char
    parts.append("".join(current))
    return parts


def _unquote(value: str) -> str:
    """A quoted value's text (backslash escapes the next character); any other value as is."""
    if len(value) < 2 or not value.startswith('"') or not value.endswith('"'):
        return value
    out: list[str] = []
    chars = iter(value[1:-1])
    for char in chars:
        if char == "\\":
            out.append(next(chars, ""))
        elif char == '"':
            return value  # an unescaped quote inside: not a quoted value
        else:
            out.append(char)
    return "".join(out)


def _number(text: str) -> object | None:
    if _INTEGER.fullmatch(text):
        return int(text)
    if _NUMBER.fullmatch(text):
        number = key(float(text))
        return None if number is UNMATCHABLE else number
    return None


def _readings(column: str, text: str, type_name: str | None) -> list[object]:
    """The keys a text value stands for, compared by the column value's kind (module
    docstring). Raises for a value the column's known type cannot read."""
    if type_name is None:
        readings: list[object] = [text]
        if (number := _number(text.strip())) is not None:
            readings.append(number)
        word = text.strip().lower()
        if word in _TRUE_WORDS or word in _FALSE_WORDS:
            readings.append(TRUE if word in _TRUE_WORDS else FALSE)
        return readings
    what = f"invalid input syntax for type {type_name} on column {column}: {text[:40]!r}"
    if type_name in NUMERIC_TYPES:
        if (number := _number(text.strip())) is None:
            raise _error(what)
        return [number]
    if type_name == "bool":
        word = text.strip().lower()
        if word not in _TRUE_WORDS and word not in _FALSE_WORDS:
            raise _error(what)
        return [TRUE if word in _TRUE_WORDS else FALSE]
    if type_name == "uuid":
        try:
            return [str(uuid.UUID(text.strip()))]
        except ValueError:
            raise _error(what) from None
    if type_name in ("json", "jsonb"):
        try:
            value_key = key(json.loads(text))
        except (ValueError, RecursionError):
            raise _error(what) from None
        if value_key is UNMATCHABLE:
            raise _error(f"filters on json objects and arrays are not supported ({column})")
        return [value_key]
    return [text]


def _condition(segment: str, types: Mapping[str, str] | None) -> Condition:
    column, equals, rest = segment.partition("=")
    negate = rest.startswith("not.")
    if negate:
        rest = rest[4:]
    op, dot, value = rest.partition(".")
    if not equals or not dot:
        raise _error(_elixir_list([part for part in (column, rest) if part]))
    if op in UNSUPPORTED_OPERATORS:
        raise _error(f"operator {op} is not supported by pgrelay (use {', '.join(OPERATORS)})")
    if op not in OPERATORS:
        raise _error(_elixir_list([op, value]))
    if not column or len(column.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise _error(f"invalid column for filter {column[:40]!r}")
    type_name = None if types is None else types.get(column)
    if op == "in":
        if len(value) < 2 or not value.startswith("(") or not value.endswith(")"):
            raise _error("`in` filter value must be wrapped by parentheses")
        items = [_unquote(item.strip()) for item in _split(value[1:-1], top=False)]
        if not 1 <= len(items) <= MAX_IN_VALUES:
            raise _error(f"`in` takes 1 to {MAX_IN_VALUES} values, not {len(items)}")
        readings = [reading for item in items for reading in _readings(column, item, type_name)]
        return Condition(column, op, keys=keys_of(readings), negate=negate)
    readings = _readings(column, _unquote(value), type_name)
    if op in COMPARISONS:
        bounds: dict[Kind, object] = {}
        for reading in readings:
            if (ranked := rank(reading)) is not None:
                bounds.setdefault(*ranked)
        return Condition(column, op, bounds=tuple(bounds.items()), negate=negate)
    return Condition(column, op, keys=keys_of(readings), negate=negate)


def parse_filter(text: str, types: Mapping[str, str] | None = None) -> RowFilter:
    """The RowFilter a Supabase ``filter`` string stands for; ``types`` maps the table's columns
    to their PostgreSQL type names (pg_type.typname) when known. Raises ProtocolError
    ("bad_message", "Error parsing `filter` params: ...") naming the problem."""
    if not text.strip():
        return RowFilter.build(())
    conditions = []
    for segment in _split(text.strip(), top=True):
        segment = segment.strip()
        if not segment:
            raise _error("filter must not contain empty segments (check for extra commas)")
        conditions.append(_condition(segment, types))
    try:
        return RowFilter.build(conditions)
    except ProtocolError as exc:
        raise _error(exc.message) from None
