"""The one reconnect loop that keeps each long-lived database role alive.

Policy: a role (the log reader, the sequencer, maintenance) serves on a connection of its own.
Any database error, timeout or network error (``SUPERVISED_ERRORS``: a dropped connection, a
restart, the schema dropped and reinstalled, a hung backend) ends that connection; the loop then
tells the role it is down (``on_down``), logs one line under the role's event name with the
error's first line and the delay, waits a capped, jittered delay and connects again. Reconnecting
one connection per role and replica cannot overload Postgres, so it retries fast
(``DB_BACKOFF_INITIAL``), caps low (``DB_BACKOFF_CAP``), and counts a connection healthy again
once it stayed up ``DB_BACKOFF_RESET_AFTER`` seconds after the role called ``up()``: the next
failure then retries from the shortest delay. (A 60 s reset made repeated kills within a minute
look like flapping: recovery grew to 30 s with nothing delivered.) Any other exception is a bug
and is not caught: it ends the relay, loudly.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import Final

import anyio
import psycopg
import structlog

from relay.core.backoff import Backoff
from relay.errors import DatabaseError
from relay.pg.queries import AsyncConn, connect

__all__ = [
    "DB_BACKOFF_CAP",
    "DB_BACKOFF_INITIAL",
    "DB_BACKOFF_RESET_AFTER",
    "SUPERVISED_ERRORS",
    "Supervisor",
    "one_line",
]

DB_BACKOFF_INITIAL: Final = 0.1  # seconds: the ceiling of the first delay
DB_BACKOFF_CAP: Final = 5.0  # seconds: no delay is longer
DB_BACKOFF_RESET_AFTER: Final = 5.0  # seconds up that count a connection healthy again

# What a supervised loop survives by reconnecting.
SUPERVISED_ERRORS: Final = (psycopg.Error, DatabaseError, TimeoutError, OSError)

log = structlog.get_logger("relay.pg.supervise")


def _nothing() -> None:
    pass


class Supervisor:
    """Connects as ``application_name`` and runs a role's body; reconnects it after failures."""

    def __init__(
        self,
        dsn: str,
        *,
        application_name: str,
        timeout: float,
        lost_event: str,
        on_down: Callable[[], None] = _nothing,
        rng: random.Random | None = None,
    ) -> None:
        self.dsn = dsn
        self.application_name = application_name
        self.timeout = timeout  # bounds each connection attempt
        self.lost_event = lost_event  # the log line of each failure: SREs alert on these names
        self.on_down = on_down
        self.backoff = Backoff(
            initial=DB_BACKOFF_INITIAL,
            cap=DB_BACKOFF_CAP,
            reset_after=DB_BACKOFF_RESET_AFTER,
            rng=rng,
        )

    def up(self) -> None:
        """The body's connection works: its healthy period starts now (later calls change
        nothing until the next failure)."""
        self.backoff.succeeded(anyio.current_time())

    async def run(self, serve: Callable[[AsyncConn], Awaitable[None]]) -> None:
        """Runs ``serve`` on a fresh connection, again after each failure, backing off between
        attempts; returns when ``serve`` returns."""
        while True:
            try:
                async with await connect(self.dsn, self.application_name, self.timeout) as conn:
                    await serve(conn)
                return
            except SUPERVISED_ERRORS as exc:
                self.on_down()
                self.backoff.failed(anyio.current_time())
                delay = self.backoff.next_delay()
                log.warning(self.lost_event, error=one_line(exc), retry_in=round(delay, 3))
                await anyio.sleep(delay)


def one_line(exc: BaseException) -> str:
    """An exception as one short line: its type and the first line of its message."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
