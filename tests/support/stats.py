"""The one percentile of the chaos checker and the benchmarks: nearest rank, no interpolation."""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["percentile", "percentile_or_nan"]


def percentile(values: Sequence[float], q: float) -> float | None:
    """The smallest value with at least a fraction `q` of the values at or below it (nearest
    rank); None when there are no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def percentile_or_nan(values: Sequence[float], q: float) -> float:
    """percentile(), with NaN for no values (a table cell that prints as 'n/a')."""
    value = percentile(values, q)
    return math.nan if value is None else value
