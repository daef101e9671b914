"""A filter's equality clauses as SQL needs them, to narrow a replay read.

Used by relay/pg/replay_query.py. The exact match stays ``RowFilter.matches``
(relay/core/filters.py): this view only lets a query leave out rows that cannot match, never one
that could.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal

from relay.core.jsonkeys import FALSE, TRUE, Keys

__all__ = ["ColumnValues", "column_values"]


@dataclass(frozen=True, slots=True)
class ColumnValues:
    """One filter column's values split by JSON type: what a query needs to narrow a read in SQL.

    ``numbers`` holds each number as its nearest double, leaving out those beyond the double
    range (``beyond_doubles`` says some were): a query that compares numbers as doubles below
    that range and lets every larger number through accepts every number ``RowFilter.matches``
    accepts, and perhaps a few more (relay/pg/replay_query.py). A narrowing, never a drop: the exact
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


def column_values(column: str, keys: Keys) -> ColumnValues:
    """One equality clause's values as a query needs them."""
    strings: list[str] = []
    numbers: set[float] = set()
    booleans: list[bool] = []
    beyond = False
    for value in keys:
        if value is TRUE or value is FALSE:
            booleans.append(value is TRUE)
        elif isinstance(value, str):
            strings.append(value)
        elif isinstance(value, int | float | Decimal):
            number = _as_double(value)
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
