"""Reconnect delays: capped exponential backoff with full jitter, clock and RNG injected.

Modelled on psycopg_pool's ``AttemptWithBackoff``, with full jitter (each delay is uniform between
zero and the exponential ceiling) so that replicas dropped by the same outage do not reconnect in
lockstep. A connection that stays up for ``reset_after`` seconds earns a fast reconnect: its
attempts start again from zero. One that flaps keeps backing off.

Typical use in a shell::

    while True:
        try:
            conn = connect()
            backoff.succeeded(monotonic())
            serve(conn)
        except OSError:
            pass
        backoff.failed(monotonic())
        sleep(backoff.next_delay())
"""

from __future__ import annotations

import math
import random
from typing import Final

__all__ = [
    "DEFAULT_CAP",
    "DEFAULT_INITIAL",
    "DEFAULT_MULTIPLIER",
    "DEFAULT_RESET_AFTER",
    "Backoff",
]

DEFAULT_INITIAL: Final = 0.5  # seconds: the ceiling of the first delay
DEFAULT_CAP: Final = 30.0  # seconds: no delay is ever longer
DEFAULT_MULTIPLIER: Final = 2.0
DEFAULT_RESET_AFTER: Final = 60.0  # seconds up that make the next failure start over


class Backoff:
    """The delays between attempts at one thing (a database connection, a reconnect).

    ``next_delay`` draws uniform(0, min(cap, initial * multiplier ** attempts)) and counts an
    attempt. ``succeeded(now)`` marks the start of an up period (further calls while up change
    nothing); ``failed(now)`` ends it, and if it lasted at least ``reset_after`` seconds the
    attempts start again from zero. ``now`` is monotonic seconds.
    """

    def __init__(
        self,
        *,
        initial: float = DEFAULT_INITIAL,
        cap: float = DEFAULT_CAP,
        multiplier: float = DEFAULT_MULTIPLIER,
        reset_after: float = DEFAULT_RESET_AFTER,
        rng: random.Random | None = None,
    ) -> None:
        if not (initial > 0 and cap >= initial and multiplier >= 1 and reset_after >= 0):
            raise ValueError(
                "backoff needs initial > 0, cap >= initial, multiplier >= 1, reset_after >= 0"
            )
        self.initial = initial
        self.cap = cap
        self.multiplier = multiplier
        self.reset_after = reset_after
        self._rng = rng if rng is not None else random.Random()
        self._attempts = 0
        # Start of the current up period; the first success counts, so a caller that reports
        # every successful operation does not keep pushing it forward.
        self._up_since: float | None = None

    @property
    def attempts(self) -> int:
        """How many delays have been drawn since the last reset."""
        return self._attempts

    def ceiling(self) -> float:
        """The upper bound of the next delay."""
        try:
            grown = self.initial * self.multiplier**self._attempts
        except OverflowError:  # float ** int raises past 1e308 instead of giving inf
            grown = math.inf
        return min(self.cap, grown)

    def next_delay(self) -> float:
        """The seconds to wait before the next attempt; counts the attempt."""
        delay = self._rng.uniform(0.0, self.ceiling())
        self._attempts += 1
        return delay

    def succeeded(self, now: float) -> None:
        """Records a success: the thing is up (again) from ``now``."""
        if self._up_since is None:
            self._up_since = now

    def failed(self, now: float) -> None:
        """Records a failure; attempts restart from zero if it had been up ``reset_after``."""
        if self._up_since is not None and now - self._up_since >= self.reset_after:
            self._attempts = 0
        # The up period is over: failures until the next success keep backing off.
        self._up_since = None
