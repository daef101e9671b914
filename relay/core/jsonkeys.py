"""JSON values as comparison keys: jsonb equality and ordering, normalised once.

Equality is JSON (jsonb) equality, not Python's: numbers compare by decimal value (``1`` equals
``1.0``, ``1e30`` equals ``1000000000000000000000000000000``), a boolean is not a number (``true``
does not equal ``1``), a string is not a number (``"1"`` does not equal ``1``) and ``null`` equals
only ``null``. Objects and arrays never match. ``key`` turns a value into a hashable key with
exactly that equality, so a set of keys answers ``in`` with one lookup (relay/core/filters.py).

Ordering (``rank``) compares values of one kind only, as SQL compares values of one type:
numbers by value, strings by code point (PostgreSQL's "C" collation), ``false`` before ``true``.
A value of another kind, ``null``, an object or an array has no rank against a bound.
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Final, Literal

from relay.core.events import BigNumber

__all__ = ["FALSE", "TRUE", "UNMATCHABLE", "Keys", "Kind", "key", "keys_of", "rank"]


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
TRUE: Final = _Sentinel("<true>")
FALSE: Final = _Sentinel("<false>")
# The key of a row value no filter value can equal (objects, arrays, non-finite numbers).
UNMATCHABLE: Final = _Sentinel("<unmatchable>")
_EXACT_FLOATS: Final = 2.0**53  # below it, every integer is a float

# The keys a column's value must be one of: a 1-tuple for a single value (48 bytes, where a
# frozenset of one takes 216; ``in`` on it compares with ==, which agrees with hashing for keys),
# else a frozenset sized for its values.
Keys = tuple[object, ...] | frozenset[object]

Kind = Literal["number", "string", "boolean"]


def key(value: object) -> object:
    """The normalised comparison key of a JSON value; ``UNMATCHABLE`` if it is not a scalar.

    Never raises for a row value: a BigNumber (a number past a double, carried as its text)
    keys as its exact Decimal, as jsonb compares it; a RawJSON (a value too deep to carry)
    matches nothing.
    """
    if value is True:
        return TRUE
    if value is False:
        return FALSE
    if isinstance(value, str):
        if value.__class__ is str:
            return value
        return Decimal(value) if isinstance(value, BigNumber) else UNMATCHABLE
    if value is None or isinstance(value, int):  # bool was handled above
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            return UNMATCHABLE
        return value if abs(value) < _EXACT_FLOATS else Decimal(repr(value))
    if isinstance(value, Decimal):  # a row decoded with parse_float=Decimal
        return _decimal_key(value)
    return UNMATCHABLE


def _decimal_key(value: Decimal) -> object:
    """A Decimal's key: the float whose shortest repr it equals (as ``key`` keys that float),
    itself when integral, else unmatchable (no filter value, parsed from JSON as a float, can
    stand for a decimal that is not a float's shortest repr)."""
    if not value.is_finite():
        return UNMATCHABLE
    as_float = float(value)
    if abs(as_float) < _EXACT_FLOATS and Decimal(repr(as_float)) == value:
        return as_float
    return value if value == value.to_integral_value() else UNMATCHABLE


def keys_of(keys: list[object]) -> Keys:
    """Keys for an ``in``: a 1-tuple when they are all one key, else a frozenset."""
    # A frozenset built from a dict is sized for its length at once; built from a list or a
    # generator it grows by steps and ends with a table up to twice as large (8 KiB for 100).
    unique = dict.fromkeys(keys)
    return (keys[0],) if len(unique) == 1 else frozenset(unique)


def rank(value_key: object) -> tuple[Kind, object] | None:
    """A key's kind and the value ordering compares within it; None when it has no order
    (null, objects, arrays, non-finite numbers)."""
    if isinstance(value_key, str):
        return "string", value_key
    if value_key is TRUE or value_key is FALSE:
        return "boolean", value_key is TRUE
    if isinstance(value_key, int | float | Decimal):  # bool keys are sentinels, never ints
        return "number", value_key
    return None
