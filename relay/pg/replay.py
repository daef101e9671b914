"""The log as a ``LogSource`` (relay/core/log.py) for replays and long-polls, over a pool.

A pool connection is held for one query only, never across pages nor while the caller waits on
its client: slow clients cannot starve the pool, and replays and long-polls take turns at it (the
pool serves waiters in order, and at most ``max_waiting`` wait). Each query examines a bounded
number of rows (``fetch_replay``).

Dead connections are retried, not reported: a pooled connection whose backend went away while it
sat idle (``pg_terminate_backend``, a server restart) fails its next query at once. Such a query
(its connection ``broken``) is run once more, on a connection proven alive first with one round
trip (psycopg_pool's ``check_connection``); the dead connections met on the way are discarded and
the pool replaces them, all within ``wait``. Every other failure to read (no live connection
within ``wait``, a query past ``query_timeout``, a database error, or the retry failing too) is
raised as ``LogUnavailable``: the database is unreachable, too slow, or refused the query.

The pool reconnects promptly: after a restart psycopg_pool would retry each lost connection 1 s,
2 s, 4 s ... apart (for up to five minutes), so a pool could stay empty for as long again as the
outage lasted, and resumes waiting on it would be refused after the database came back. Here a
reconnect attempt gives up after ``POOL_RECONNECT_TIMEOUT`` and the pool starts a new one at once
(``pool.check()``): while the database is down the pool tries about once a second, and once it
answers a connection follows within about a second.

Why retry instead of checking every connection on checkout (``check=`` on the pool): the check
costs a round trip per query, on every replay page and long-poll, to catch a fault that comes
with a database outage; and after every backend was killed, the pool's checked checkout sleeps
1 s, 2 s, 4 s ... between the dead connections it meets (with 8 dead, one read waited its full
30 s and failed). Retrying costs nothing until a connection is dead, and then one round trip per
dead connection met (figures in docs/operations.md, section 1).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, TypeVar

import anyio
import psycopg
import structlog
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from relay.core.log import LogState, ReplayPage
from relay.core.subscription import Subscription
from relay.errors import LogUnavailable
from relay.pg.queries import AsyncConn, read_log_state
from relay.pg.replay_query import fetch_replay
from relay.pg.supervise import one_line

__all__ = ["POOL_RECONNECT_TIMEOUT", "PoolLogSource", "replay_pool"]

# Seconds one reconnect attempt of the pool lasts (psycopg_pool tries at 0, 1 and 2 s) before the
# pool gives up on it and starts another: its attempts are never more than about 1 s apart.
POOL_RECONNECT_TIMEOUT: Final = 2.0

T = TypeVar("T")
log = structlog.get_logger("relay.pg.replay")


def replay_pool(dsn: str, *, size: int, max_waiting: int) -> AsyncConnectionPool[Any]:
    """The pool replays and long-polls read through (not opened yet): at most ``size``
    connections, ``max_waiting`` callers queued, reconnecting promptly (see above)."""

    async def try_again(pool: AsyncConnectionPool[Any]) -> None:
        if not pool.closed:
            await pool.check()  # grows the pool again: a new reconnect attempt starts now

    return AsyncConnectionPool(
        dsn,
        min_size=1,
        max_size=size,
        max_waiting=max_waiting,
        open=False,
        reconnect_timeout=POOL_RECONNECT_TIMEOUT,
        reconnect_failed=try_again,
        kwargs={"autocommit": True, "application_name": "pgrelay-replay"},
    )


class _DeadConnection(Exception):
    """The connection the pool handed out was dead (its backend gone): worth one retry."""


class PoolLogSource:
    """Reads the log's state and replay pages through a connection pool."""

    def __init__(self, pool: AsyncConnectionPool[Any], *, wait: float, query_timeout: float):
        self.pool = pool
        self.wait = wait  # longest wait for a (live) pool connection
        self.query_timeout = query_timeout

    async def state(self) -> LogState:
        return await self._read(read_log_state)

    async def page(
        self, keys: Sequence[str], sub: Subscription, after: int, upto: int, limit: int
    ) -> ReplayPage:
        async def query(conn: AsyncConn) -> ReplayPage:
            return await fetch_replay(
                conn, keys=keys, table=sub.table, schema=sub.schema, after=after, upto=upto,
                limit=limit, ops=sub.ops, row_filter=sub.filter,
            )  # fmt: skip

        return await self._read(query)

    async def _read(self, query: Callable[[AsyncConn], Awaitable[T]]) -> T:
        """Runs ``query`` on a pool connection; once more on a live one if that one was dead."""
        deadline = anyio.current_time() + self.wait
        try:
            try:
                return await self._run(query, self.wait)
            except _DeadConnection as exc:
                log.warning("replay_retried", error=one_line(exc.__cause__ or exc))
                return await self._run_on_live(query, deadline)
        except (_DeadConnection, PoolTimeout, psycopg.Error, TimeoutError) as exc:
            cause = exc.__cause__ if isinstance(exc, _DeadConnection) else exc
            raise LogUnavailable(type(cause).__name__) from exc

    async def _run(self, query: Callable[[AsyncConn], Awaitable[T]], wait: float) -> T:
        async with self.pool.connection(timeout=wait) as conn:
            try:
                with anyio.fail_after(self.query_timeout):
                    return await query(conn)
            except psycopg.OperationalError as exc:
                if conn.broken:
                    raise _DeadConnection from exc
                raise

    async def _run_on_live(self, query: Callable[[AsyncConn], Awaitable[T]], deadline: float) -> T:
        """Takes pool connections until one answers a check (discarding the dead ones), then runs
        ``query`` on it; PoolTimeout when none does before ``deadline``."""
        while (wait := deadline - anyio.current_time()) > 0:
            async with self.pool.connection(timeout=wait) as conn:
                try:
                    with anyio.fail_after(self.query_timeout):
                        await self.pool.check_connection(conn)
                except psycopg.OperationalError:
                    if conn.broken:
                        continue  # dead too: the pool discards it on return
                    raise
                with anyio.fail_after(self.query_timeout):
                    try:
                        return await query(conn)
                    except psycopg.OperationalError as exc:
                        if conn.broken:
                            raise _DeadConnection from exc
                        raise
        raise PoolTimeout(f"no live connection within {self.wait:g} s")
