"""Row filters: the column conditions a subscription puts on the rows it receives.

A client sends a filter as a JSON object mapping column names to conditions::

    {"status": "open", "team_id": {"in": [3, 4, 5]}}

Every condition must hold (AND). A condition is either a JSON scalar (string, number, boolean or
null), meaning the column equals it, or an object of operators, each of which must hold:
``{"in": [scalars...]}`` (1 to 100 values: the column equals one of them), ``{"eq": v}``,
``{"neq": v}``, ``{"lt": v}``, ``{"lte": v}``, ``{"gt": v}``, ``{"gte": v}``, and ``{"not": {op:
v}}`` negating one of those (``{"age": {"gte": 18, "lt": 65}}``). No nesting beyond that, no
matching inside JSON columns. Equality clauses (a scalar, ``eq``, ``in``) are sets of keys, the
fast path replays also narrow in SQL; the other operators are ``Condition`` objects
(relay/core/conditions.py, where their rules are written), which replays check in Python only.
The Supabase dialect's text syntax builds the same filter (relay/core/postgrest.py, ``build``).

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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Final

from relay.core.conditions import COMPARISONS, OPERATORS, Condition
from relay.core.events import Event, JSONValue
from relay.core.jsonkeys import UNMATCHABLE, Keys, key, keys_of, rank
from relay.core.prefilter import ColumnValues, column_values
from relay.errors import ProtocolError

__all__ = [
    "CLAUSE_BYTES",
    "CONDITION_BYTES",
    "MAX_COLUMNS",
    "MAX_CONDITIONS",
    "MAX_IN_VALUES",
    "MAX_NAME_BYTES",
    "SET_BYTES",
    "STRING_BYTES",
    "VALUE_BYTES",
    "RowFilter",
]

MAX_COLUMNS: Final = 16
MAX_CONDITIONS: Final = 32  # equality clauses and conditions, over all columns
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
CONDITION_BYTES: Final = 128  # a Condition beyond a clause: its object and its bounds tuple


def _value_cost(value: object) -> int:
    """Estimated bytes one filter value holds: its set slot and its key (see CLAUSE_BYTES)."""
    if isinstance(value, str):
        return STRING_BYTES + (len(value) if value.isascii() else 4 * len(value))
    if isinstance(value, int):
        return VALUE_BYTES + value.bit_length() // 7  # 4 bytes per 30 bits
    if isinstance(value, Decimal):
        return VALUE_BYTES + 80
    return VALUE_BYTES


def _clause_cost(column: str, keys: Keys) -> int:
    name = len(column) if column.isascii() else 4 * len(column)
    values = sum(_value_cost(value) for value in keys)
    return CLAUSE_BYTES + name + values + (SET_BYTES if isinstance(keys, frozenset) else 0)


def _quote(column: str) -> str:
    """A column name for an error message: JSON-quoted (one line, ASCII), bounded in length."""
    # ensure_ascii escapes control characters and U+2028/U+2029 too: the message stays one line.
    text = json.dumps(column, ensure_ascii=True)
    return text if len(text) <= 80 else text[:76] + '..."'


def _bad(message: str) -> ProtocolError:
    return ProtocolError("bad_message", message)


def _scalar_key(column: str, value: object, what: str) -> object:
    """The key of one filter value, or ProtocolError if it is not a finite JSON scalar."""
    value_key = key(value)
    if value_key is UNMATCHABLE:
        problem = (
            "a finite number"
            if isinstance(value, float | Decimal)
            else f"a JSON scalar (string, number, boolean or null), not {_json_kind(value)}"
        )
        raise _bad(f"filter on column {_quote(column)}: {what} must be {problem}")
    return value_key


def _parse_column(column: object) -> str:
    if not isinstance(column, str):
        raise _bad(f"filter column names must be strings, not {type(column).__name__}")
    if not column:
        raise _bad("filter column names must not be empty")
    if len(column.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise _bad(f"filter column {_quote(column)} is longer than {MAX_NAME_BYTES} bytes")
    return column


def _in_keys(column: str, values: object) -> Keys:
    if not isinstance(values, list):
        raise _bad(f'filter on column {_quote(column)}: "in" must be an array')
    if not 1 <= len(values) <= MAX_IN_VALUES:
        raise _bad(
            f'filter on column {_quote(column)}: "in" must have 1 to {MAX_IN_VALUES} values, '
            f"not {len(values)}"
        )
    return keys_of([_scalar_key(column, value, '"in" values') for value in values])


def _operator(column: str, op: str, operand: object, negate: bool) -> Condition:
    """One operator of an object condition as a Condition."""
    if op == "in":
        return Condition(column, op, keys=_in_keys(column, operand), negate=negate)
    value_key = _scalar_key(column, operand, f'the value of "{op}"')
    if op in COMPARISONS:
        ranked = rank(value_key)
        if ranked is None:
            raise _bad(
                f'filter on column {_quote(column)}: "{op}" compares with a number, a string '
                "or a boolean, not null"
            )
        return Condition(column, op, bounds=(ranked,), negate=negate)
    return Condition(column, op, keys=(value_key,), negate=negate)


_OPERATOR_LIST: Final = ", ".join(OPERATORS)


def _parse_condition(column: str, condition: object) -> list[Condition]:
    """A column's condition as Conditions; plain equality ones become clauses in ``build``."""
    if isinstance(condition, list):
        raise _bad(
            f'filter on column {_quote(column)}: use {{"in": [...]}} to match one of several '
            "values, not a bare array"
        )
    if not isinstance(condition, dict):
        return [Condition(column, "eq", keys=(_scalar_key(column, condition, "the value"),))]
    if not condition:
        raise _bad(f"filter on column {_quote(column)}: an object condition needs an operator")
    conditions = []
    for op, operand in condition.items():
        if op == "not":
            if not isinstance(operand, dict) or len(operand) != 1 or next(iter(operand)) == "not":
                raise _bad(
                    f'filter on column {_quote(column)}: "not" takes an object of one operator '
                    f"({_OPERATOR_LIST})"
                )
            ((op, operand),) = operand.items()
            negate = True
        else:
            negate = False
        if op not in OPERATORS:
            raise _bad(
                f"filter on column {_quote(column)}: unknown operator {_quote(str(op))}; an object "
                f"condition takes {_OPERATOR_LIST} and not"
            )
        conditions.append(_operator(column, op, operand, negate))
    return conditions


def _condition_cost(condition: Condition) -> int:
    values = condition.keys or tuple(bound for _, bound in condition.bounds)
    return CONDITION_BYTES + _clause_cost(condition.column, values)


@dataclass(frozen=True, slots=True)
class RowFilter:
    """A parsed filter: per column, the normalised keys its value must be one of (``clauses``),
    and the other conditions it must meet (``conditions``).

    Both are sorted by column name, so two filters with the same conditions compare equal
    whatever the key order of the JSON they came from. The empty filter matches every row.
    ``cost`` is the estimated bytes the parsed filter holds (module docstring); 0 when empty.
    """

    clauses: tuple[tuple[str, Keys], ...] = ()
    cost: int = field(default=0, compare=False)
    conditions: tuple[Condition, ...] = ()

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
        conditions = []
        for column, condition in raw.items():
            name = _parse_column(column)
            conditions.extend(_parse_condition(name, condition))
        return cls.build(conditions)

    @classmethod
    def build(cls, conditions: Iterable[Condition]) -> RowFilter:
        """The filter requiring every condition: the first plain ``eq`` or ``in`` of each column
        becomes a clause, the rest stay conditions. Raises ProtocolError past MAX_COLUMNS or
        MAX_CONDITIONS."""
        clauses: dict[str, Keys] = {}
        others: list[Condition] = []
        for condition in conditions:
            column = condition.column
            if condition.op in ("eq", "in") and not condition.negate and column not in clauses:
                clauses[column] = condition.keys
            else:
                others.append(condition)
        columns = len(set(clauses) | {condition.column for condition in others})
        if columns > MAX_COLUMNS:
            raise _bad(f"filter has {columns} columns; at most {MAX_COLUMNS} are allowed")
        if len(clauses) + len(others) > MAX_CONDITIONS:
            raise _bad(
                f"filter has {len(clauses) + len(others)} conditions; at most {MAX_CONDITIONS} "
                "are allowed"
            )
        if not clauses and not others:
            return _EMPTY
        cost = sum(_clause_cost(column, keys) for column, keys in clauses.items())
        cost += sum(_condition_cost(condition) for condition in others)
        others.sort(key=lambda condition: condition.column)
        ordered = tuple(sorted(clauses.items(), key=lambda clause: clause[0]))
        return cls(ordered, cost, tuple(others))

    @property
    def empty(self) -> bool:
        """Whether the filter has no condition (it matches every row, before and after)."""
        return not self.clauses and not self.conditions

    @property
    def columns(self) -> tuple[str, ...]:
        """The filtered columns, sorted (for checking them against a table's whitelist)."""
        names = {column for column, _ in self.clauses}
        names.update(condition.column for condition in self.conditions)
        return tuple(sorted(names))

    def by_type(self) -> tuple[ColumnValues, ...]:
        """Each clause's values split by JSON type, for narrowing a log read in SQL. The other
        conditions are not narrowed in SQL (the read fails open for them)."""
        return tuple(column_values(column, keys) for column, keys in self.clauses)

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
            if key(value) not in keys:
                return False
        for condition in self.conditions:
            column = condition.column
            if column in row:
                value = row[column]
            elif column in pk:
                value = pk[column]
            else:
                return False
            if not condition.holds(value):
                return False
        return True

    def matched_before(self, event: Event) -> bool:
        """Whether the row as it was before an UPDATE met every condition, as ``matches`` says:
        ``row`` with the old values of the columns the UPDATE changed (``old_values``) in place
        of the new ones, and the key before the change (``old_key``). A truncated UPDATE is
        checked on its old key only; one whose old values are unknown (logged before the
        database recorded them) as ``matches`` checks it."""
        row, before = event.row, event.old_values
        old_key = event.pk if event.old_key is None else event.old_key
        if row is None:
            return self._key_holds(old_key)
        if before is None:
            return self.matches(event)
        missing = _MISSING
        for column, keys in self.clauses:
            value = _old_value(column, before, row, old_key)
            if value is missing or key(value) not in keys:
                return False
        for condition in self.conditions:
            value = _old_value(condition.column, before, row, old_key)
            if value is missing or not condition.holds(value):
                return False
        return True

    def _key_holds(self, pk: Mapping[str, JSONValue]) -> bool:
        """The conditions on key columns, against ``pk``; the others count as met (a truncated
        event's values are unknown)."""
        for column, keys in self.clauses:
            if column in pk and key(pk[column]) not in keys:
                return False
        for condition in self.conditions:
            column = condition.column
            if column in pk and not condition.holds(pk[column]):
                return False
        return True


_MISSING: Final = object()


def _old_value(
    column: str,
    before: Mapping[str, JSONValue],
    row: Mapping[str, JSONValue],
    old_key: Mapping[str, JSONValue],
) -> object:
    """A column's value before an UPDATE: its old value if the UPDATE changed it, else the row's
    (unchanged) value, else the old key's; ``_MISSING`` when none carries it."""
    if column in before:
        return before[column]
    if column in row:
        return row[column]
    return old_key.get(column, _MISSING)


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
