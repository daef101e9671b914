"""Filter conditions beyond plain equality: ``neq``, ``lt``, ``lte``, ``gt``, ``gte`` and the
negation of any operator (``not``), as one ``Condition`` both filter syntaxes build.

A ``RowFilter`` (relay/core/filters.py) keeps its equality clauses (``eq`` and ``in``) as sets of
keys, the fast path that replays also narrow in SQL; every other condition is a ``Condition``
here, checked after them. Protocol v1 writes them as JSON objects (``{"gte": 18, "lt": 65}``,
``{"not": {"in": [1, 2]}}``); the Supabase dialect as text (``age=gte.18,age=lt.65``,
``id=not.in.(1,2)``, relay/core/postgrest.py).

The rules, which are SQL's: a column whose value is ``null`` (or an object, an array) satisfies
no condition here, negated or not (``NOT NULL`` is still unknown); ``neq`` is "not equal" under
jsonb equality (relay/core/jsonkeys.py); an ordering compares a value with a bound of its own
kind only (numbers by value, strings by code point, ``false`` before ``true``), and a value with
no bound of its kind satisfies neither the comparison nor its negation.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from relay.core.jsonkeys import UNMATCHABLE, Keys, Kind, key, rank

__all__ = ["COMPARISONS", "EQUALITIES", "OPERATORS", "Condition"]

EQUALITIES: Final = ("eq", "neq", "in")
COMPARISONS: Final[dict[str, Callable[[Any, Any], bool]]] = {
    "lt": operator.lt,
    "lte": operator.le,
    "gt": operator.gt,
    "gte": operator.ge,
}
OPERATORS: Final = (*EQUALITIES, *COMPARISONS)  # the operators both syntaxes accept


@dataclass(frozen=True, slots=True)
class Condition:
    """One condition on one column.

    ``keys`` holds the values of ``eq``, ``neq`` and ``in``; ``bounds`` the bound of an ordering
    per kind (one for a JSON value; a Supabase text value may stand for a number, a string and
    a boolean at once, and is compared with the one of the column value's kind). ``negate``
    inverts the outcome for a value that has one (see the module docstring).
    """

    column: str
    op: str
    keys: Keys = ()
    bounds: tuple[tuple[Kind, object], ...] = ()
    negate: bool = False

    def holds(self, value: object) -> bool:
        """Whether a column value satisfies the condition."""
        value_key = key(value)
        if value_key is None or value_key is UNMATCHABLE:
            return False
        op = self.op
        if op == "neq":
            outcome = value_key not in self.keys
        elif op in ("eq", "in"):
            outcome = value_key in self.keys
        else:
            ranked = rank(value_key)
            if ranked is None:
                return False
            kind, comparable = ranked
            for bound_kind, bound in self.bounds:
                if bound_kind == kind:
                    outcome = COMPARISONS[op](comparable, bound)
                    break
            else:
                return False
        return outcome != self.negate
