"""Row filters: the column conditions a subscription puts on the rows it receives.

A client sends a filter as a JSON object mapping column names to conditions::

    {"status": "open", "team_id": {"in": [3, 4, 5]}}

Every condition must hold (AND). A condition is either a JSON scalar (string, number, boolean or
null), meaning the column equals it, or ``{"in": [scalars...]}`` (1 to 100 values), meaning the
column equals one of them. Nothing else: no nesting, no ranges, no matching inside JSON columns.

Memory: each parsed filter carries ``cost``, an estimate in bytes of the memory its parsed form
holds, computed once at parse time from the number of columns and values and the length of
string values: cheap, deterministic, and measured to be at least the memory tracemalloc sees for
every value type and at most three times it (tests/test_hostile_limits.py pins both). The
protocol sums it over a connection's subscriptions against ``RELAY_MAX_FILTER_BYTES``.

Equality is JSON (jsonb) equality, not Python's: numbers compare by decimal value (``1`` equals
``1.0``, ``1e30`` equals ``1000000000000000000000000000000``), a boolean is not a number (``true``
does not equal ``1``), a string is not a number (``"1"`` does not equal ``1``) and ``null`` equals
only ``null``. Objects and arrays in a row never match. Each filter value is normalised once, at
parse time, into a hashable key, so matching an ``in`` of 100 values is one set lookup per event.

Where ``json.loads`` floats fall short of jsonb's exact numerics: a float is compared as its
shortest decimal repr, so two number texts past 17 significant digits that parse to the same float
compare equal (jsonb would say no), and a number past the float range (``1e400``) parses to
infinity and is rejected. A row number past the float range travels as a ``BigNumber`` (a string
of its exact text) and compares by its exact decimal value, so it never equals a string.

A column the row does not carry is looked up in the primary key (key columns are sent to clients
in ``pk`` whether or not the table's whitelist carries them in ``row``); a column in neither does
not match. A truncated event (``row`` is None: the row was over the database's size cap, its
values are unknown) is checked against its primary key only; conditions on other columns are
treated as matching. This fails open on purpose: a filter narrows
what a client asked for, it is not access control. The audience check in the router is what keeps
rows from users who may not see them, and it never fails open.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Final

from relay.core.events import BigNumber, Event, JSONValue
from relay.errors import ProtocolError

__all__ = [
    "CLAUSE_BYTES",
    "MAX_COLUMNS",
    "MAX_IN_VALUES",
    "MAX_NAME_BYTES",
    "SET_BYTES",
    "STRING_BYTES",
    "VALUE_BYTES",
    "ColumnValues",
    "RowFilter",
]

MAX_COLUMNS: Final = 16
MAX_IN_VALUES: Final = 100
MAX_NAME_BYTES: Final = 63  # PostgreSQL's NAMEDATALEN - 1

# The cost model of a parsed filter (CPython 3.11+, 64-bit), from tracemalloc measurements:
# a clause holds a (column, keys) tuple, its column name and its keys (a 1-tuple, or a frozenset
# of 200 bytes plus a table of 16 bytes a slot, 2 to 4 slots a value); a value holds its slot
# (up to 64 bytes) and its key object: a float 24 bytes, an int 28 to 36 plus 4 bytes per 30
# bits, a Decimal 104, a str 49 to 80 plus its characters (1, 2 or 4 bytes each); None and the
# booleans are shared.
CLAUSE_BYTES: Final = 160  # plus the column name's characters
SET_BYTES: Final = 224  # a clause of two or more values: its frozenset
VALUE_BYTES: Final = 104  # a number; an int adds its bytes, a Decimal 80
STRING_BYTES: Final = 144  # a string, plus its characters (4 bytes each unless ASCII)


class _Sentinel:
    """A distinct hashable object standing for a value that Python would conflate."""

    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


# Python says True == 1 and hash(True) == hash(1); jsonb does not, so booleans get their own keys.
# Strings, None and ints are their own keys: str and None never equal another type, and ints
# compare exactly. A float stands for the decimal of its shortest repr, the decimal the JSON text
# most likely said: JSON "1e30" parses to a float that is not exactly 10**30, but jsonb says the
# two are equal. Below 2**53 a float is its own key (24 bytes, where a Decimal takes 104): two
# floats are equal exactly when their shortest reprs are, and an integral one equals the int of
# the same value; from 2**53 up (where every float is integral but not every integer a float),
# the key is the Decimal of its repr, and Decimal("1e+30") == 10**30. Python hashes equal ints,
# Decimals and floats alike, so one set lookup compares numerically.
_TRUE: Final = _Sentinel("<true>")
_FALSE: Final = _Sentinel("<false>")
# The key of a row value no filter value can equal (objects, arrays, non-finite numbers).
_UNMATCHABLE: Final = _Sentinel("<unmatchable>")
_EXACT_FLOATS: Final = 2.0**53  # below it, every integer is a float


def _key(value: object) -> object:
    """The normalised comparison key of a JSON value; ``_UNMATCHABLE`` if it is not a scalar.

    Never raises for a row value: a BigNumber (a number past a double, carried as its text)
    keys as its exact Decimal, as jsonb compares it; a RawJSON (a value too deep to carry)
    matches nothing.
    """
    if value is True:
        return _TRUE
    if value is False:
        return _FALSE
    if isinstance(value, str):
        if value.__class__ is str:
            return value
        return Decimal(value) if isinstance(value, BigNumber) else _UNMATCHABLE
    if value is None or isinstance(value, int):  # bool was handled above
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            return _UNMATCHABLE
        return value if abs(value) < _EXACT_FLOATS else Decimal(repr(value))
    if isinstance(value, Decimal):  # a row decoded with parse_float=Decimal
        return _decimal_key(value)
    return _UNMATCHABLE


def _decimal_key(value: Decimal) -> object:
    """A Decimal's key: the float whose shortest repr it equals (as ``_key`` keys that float),
    itself when integral, else unmatchable (no filter value, parsed from JSON as a float, can
    stand for a decimal that is not a float's shortest repr)."""
    if not value.is_finite():
        return _UNMATCHABLE
    as_float = float(value)
    if abs(as_float) < _EXACT_FLOATS and Decimal(repr(as_float)) == value:
        return as_float
    return value if value == value.to_integral_value() else _UNMATCHABLE


# The keys a column's value must be one of: a 1-tuple for a single value (48 bytes, where a
# frozenset of one takes 216; ``in`` on it compares with ==, which agrees with hashing for keys),
# else a frozenset sized for its values.
Keys = tuple[object] | frozenset[object]


def _keys(keys: list[object]) -> Keys:
    # A frozenset built from a dict is sized for its length at once; built from a list or a
    # generator it grows by steps and ends with a table up to twice as large (8 KiB for 100).
    unique = dict.fromkeys(keys)
    return (keys[0],) if len(unique) == 1 else frozenset(unique)


def _value_cost(key: object) -> int:
    """Estimated bytes one filter value holds: its set slot and its key (see CLAUSE_BYTES)."""
    if isinstance(key, str):
        return STRING_BYTES + (len(key) if key.isascii() else 4 * len(key))
    if isinstance(key, int):
        return VALUE_BYTES + key.bit_length() // 7  # 4 bytes per 30 bits
    if isinstance(key, Decimal):
        return VALUE_BYTES + 80
    return VALUE_BYTES


def _clause_cost(column: str, keys: Keys) -> int:
    name = len(column) if column.isascii() else 4 * len(column)
    values = sum(_value_cost(key) for key in keys)
    return CLAUSE_BYTES + name + values + (SET_BYTES if isinstance(keys, frozenset) else 0)


@dataclass(frozen=True, slots=True)
class ColumnValues:
    """One filter column's values split by JSON type: what a query needs to narrow a read in SQL.

    ``numbers`` holds each number as its nearest double, leaving out those beyond the double
    range (``beyond_doubles`` says some were): a query that compares numbers as doubles below
    that range and lets every larger number through accepts every number ``RowFilter.matches``
    accepts, and perhaps a few more (relay/pg/queries.py). A narrowing, never a drop: the exact
    match is still ``matches``.
    """

    column: str
    strings: tuple[str, ...]
    numbers: tuple[float, ...]
    booleans: tuple[bool, ...]
    null: bool
    beyond_doubles: bool = False


def _as_double(key: int | float | Decimal) -> float | None:
    try:
        number = float(key)
    except OverflowError:  # an int past the double range
        return None
    return number if math.isfinite(number) else None


def _column_values(column: str, keys: Keys) -> ColumnValues:
    strings: list[str] = []
    numbers: set[float] = set()
    booleans: list[bool] = []
    beyond = False
    for key in keys:
        if key is _TRUE or key is _FALSE:
            booleans.append(key is _TRUE)
        elif isinstance(key, str):
            strings.append(key)
        elif isinstance(key, int | float | Decimal):
            number = _as_double(key)
            if number is None:
                beyond = True
            else:
                numbers.add(number)
    return ColumnValues(
        column=column,
        strings=tuple(sorted(strings)),
        numbers=tuple(sorted(numbers)),
        booleans=tuple(sorted(booleans)),
        null=None in keys,
        beyond_doubles=beyond,
    )


def _quote(column: str) -> str:
    """A column name for an error message: JSON-quoted (one line, ASCII), bounded in length."""
    # ensure_ascii escapes control characters and U+2028/U+2029 too: the message stays one line.
    text = json.dumps(column, ensure_ascii=True)
    return text if len(text) <= 80 else text[:76] + '..."'


def _bad(message: str) -> ProtocolError:
    return ProtocolError("bad_message", message)


def _scalar_key(column: str, value: object, what: str) -> object:
    """The key of one filter value, or ProtocolError if it is not a finite JSON scalar."""
    key = _key(value)
    if key is _UNMATCHABLE:
        problem = (
            "a finite number"
            if isinstance(value, float | Decimal)
            else f"a JSON scalar (string, number, boolean or null), not {_json_kind(value)}"
        )
        raise _bad(f"filter on column {_quote(column)}: {what} must be {problem}")
    return key


def _parse_column(column: object) -> str:
    if not isinstance(column, str):
        raise _bad(f"filter column names must be strings, not {type(column).__name__}")
    if not column:
        raise _bad("filter column names must not be empty")
    if len(column.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise _bad(f"filter column {_quote(column)} is longer than {MAX_NAME_BYTES} bytes")
    return column


def _parse_condition(column: str, condition: object) -> Keys:
    if isinstance(condition, list):
        raise _bad(
            f'filter on column {_quote(column)}: use {{"in": [...]}} to match one of several '
            "values, not a bare array"
        )
    if not isinstance(condition, dict):
        return (_scalar_key(column, condition, "the value"),)
    if set(condition) != {"in"}:
        raise _bad(
            f"filter on column {_quote(column)}: an object condition must be exactly "
            '{"in": [...]}'
        )
    values = condition["in"]
    if not isinstance(values, list):
        raise _bad(f'filter on column {_quote(column)}: "in" must be an array')
    if not 1 <= len(values) <= MAX_IN_VALUES:
        raise _bad(
            f'filter on column {_quote(column)}: "in" must have 1 to {MAX_IN_VALUES} values, '
            f"not {len(values)}"
        )
    return _keys([_scalar_key(column, value, '"in" values') for value in values])


@dataclass(frozen=True, slots=True)
class RowFilter:
    """A parsed filter: per column, the normalised keys its value must be one of.

    ``clauses`` is sorted by column name, so two filters with the same conditions compare equal
    whatever the key order of the JSON they came from. The empty filter matches every row.
    ``cost`` is the estimated bytes the parsed filter holds (module docstring); 0 when empty.
    """

    clauses: tuple[tuple[str, Keys], ...] = ()
    cost: int = field(default=0, compare=False)

    @classmethod
    def parse(cls, raw: object) -> RowFilter:
        """Parses a client's ``filter``; None is the empty filter.

        Raises ``ProtocolError("bad_message", ...)`` naming the column and the problem.
        """
        if raw is None:
            return _EMPTY
        if not isinstance(raw, dict):
            raise _bad(f"filter must be a JSON object or null, not {_json_kind(raw)}")
        if len(raw) > MAX_COLUMNS:
            raise _bad(f"filter has {len(raw)} columns; at most {MAX_COLUMNS} are allowed")
        clauses = []
        for column, condition in raw.items():
            name = _parse_column(column)
            clauses.append((name, _parse_condition(name, condition)))
        if not clauses:
            return _EMPTY
        clauses.sort(key=lambda clause: clause[0])
        return cls(tuple(clauses), sum(_clause_cost(column, keys) for column, keys in clauses))

    @property
    def columns(self) -> tuple[str, ...]:
        """The filtered columns, sorted (for checking them against a table's whitelist)."""
        return tuple(column for column, _ in self.clauses)

    def by_type(self) -> tuple[ColumnValues, ...]:
        """Each clause's values split by JSON type, for narrowing a log read in SQL."""
        return tuple(_column_values(column, keys) for column, keys in self.clauses)

    def matches(self, event: Event) -> bool:
        """Whether the event's row meets every condition.

        Evaluated against ``event.row`` (the new values, or the old ones for a DELETE), and for a
        key column the whitelist leaves out, against ``event.pk``; a column neither has does not
        match. When ``event.row`` is None (a truncated event, its values unknown) only conditions
        on primary-key columns are checked, against ``event.pk``, and the others are treated as
        matching. That fails open deliberately: a filter is a client's
        narrowing, not access control; the router's audience check is what protects users.
        """
        row = event.row
        if row is None:
            return self._key_holds(event.pk)
        pk = event.pk
        for column, keys in self.clauses:  # the hot path of routing: written out, no call
            if column in row:
                value = row[column]
            elif column in pk:
                value = pk[column]
            else:
                return False
            if _key(value) not in keys:
                return False
        return True

    def matched_before(self, event: Event) -> bool:
        """Whether the row as it was before an UPDATE met every condition, as ``matches`` says:
        ``row`` with the old values of the columns the UPDATE changed (``old_values``) in place
        of the new ones, and the key before the change (``old_key``). A truncated UPDATE is
        checked on its old key only; one whose old values are unknown (logged before the
        database recorded them) as ``matches`` checks it."""
        row, before = event.row, event.old_values
        key = event.pk if event.old_key is None else event.old_key
        if row is None:
            return self._key_holds(key)
        if before is None:
            return self.matches(event)
        for column, keys in self.clauses:
            if column in before:
                value = before[column]
            elif column in row:
                value = row[column]
            elif column in key:
                value = key[column]
            else:
                return False
            if _key(value) not in keys:
                return False
        return True

    def _key_holds(self, pk: Mapping[str, JSONValue]) -> bool:
        """The conditions on key columns, against ``pk``; the others count as met (a truncated
        event's values are unknown)."""
        for column, keys in self.clauses:
            if column in pk and _key(pk[column]) not in keys:
                return False
        return True


def _json_kind(value: object) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float | Decimal):
        return "a number"
    return f"a {type(value).__name__}"


_EMPTY: Final = RowFilter()
