"""The log as a ``LogSource`` (relay/core/log.py) for replays and long-polls, over a pool.

A pool connection is held for one query only, never across pages nor while the caller waits on
its client: slow clients cannot starve the pool, and replays and long-polls take turns at it (the
pool serves waiters in order, and at most ``max_waiting`` wait). Each query examines a bounded
number of rows (``fetch_replay``). Every failure to read (no connection within ``wait``, a query
past ``query_timeout``, a database error) is raised as ``LogUnavailable``.
"""

from __future__ import annotations

from typing import Any

import anyio
import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from relay.core.log import LogState, ReplayPage
from relay.core.subscription import Subscription
from relay.errors import LogUnavailable
from relay.pg.queries import fetch_replay, read_log_state

__all__ = ["PoolLogSource"]


class PoolLogSource:
    """Reads the log's state and replay pages through a connection pool."""

    def __init__(self, pool: AsyncConnectionPool[Any], *, wait: float, query_timeout: float):
        self.pool = pool
        self.wait = wait  # longest wait for a pool connection
        self.query_timeout = query_timeout

    async def state(self) -> LogState:
        try:
            async with self.pool.connection(timeout=self.wait) as conn:
                with anyio.fail_after(self.query_timeout):
                    return await read_log_state(conn)
        except (psycopg.Error, PoolTimeout, TimeoutError) as exc:
            raise LogUnavailable(type(exc).__name__) from exc

    async def page(
        self, user: str, sub: Subscription, after: int, upto: int, limit: int
    ) -> ReplayPage:
        try:
            async with self.pool.connection(timeout=self.wait) as conn:
                with anyio.fail_after(self.query_timeout):
                    return await fetch_replay(
                        conn, user=user, table=sub.table, schema=sub.schema, after=after,
                        upto=upto, limit=limit, ops=sub.ops, row_filter=sub.filter,
                    )  # fmt: skip
        except (psycopg.Error, PoolTimeout, TimeoutError) as exc:
            raise LogUnavailable(type(exc).__name__) from exc
