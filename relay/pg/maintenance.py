"""Maintenance: the tracked-table catalog, the log's head, and heartbeats, on a timer.

Policy: every ``heartbeat_interval`` seconds (every ``DEFAULT_INTERVAL`` when heartbeats are
off) it reloads the catalog of tracked tables and reads the log's head, and reports them through
the callbacks it was handed (``on_catalog``, ``on_column_types``, ``on_head``): it never writes
another object's state.
With heartbeats on it then writes one (``relay.heartbeat``), which travels inbox, sequencer, log,
every replica. Each round runs under ``query_timeout``; its connection is kept by the supervised
loop (relay/pg/supervise.py), which logs ``maintenance_failed`` and reconnects with backoff.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Final

import anyio

from relay.core.phoenix import ColumnTypes
from relay.pg.queries import (
    AsyncConn,
    Catalog,
    read_catalog,
    read_column_types,
    read_head,
    write_heartbeat,
)
from relay.pg.supervise import Supervisor

__all__ = ["DEFAULT_INTERVAL", "Maintenance"]

DEFAULT_INTERVAL: Final = 5.0  # seconds between rounds when heartbeats are off


class Maintenance:
    """Reloads the catalog and the head, and writes heartbeats, reporting through callbacks."""

    def __init__(
        self,
        dsn: str,
        *,
        replica_id: str,
        heartbeat_interval: float,
        query_timeout: float,
        on_catalog: Callable[[Catalog], None],
        on_head: Callable[[int], None],
        on_column_types: Callable[[ColumnTypes], None] | None = None,
        application_name: str = "pgrelay-maintenance",
        rng: random.Random | None = None,
    ) -> None:
        self.replica_id = replica_id
        self.heartbeat_interval = heartbeat_interval  # 0: no heartbeats
        self.query_timeout = query_timeout
        self.on_catalog = on_catalog
        self.on_head = on_head
        self.on_column_types = on_column_types
        self.supervisor = Supervisor(
            dsn,
            application_name=application_name,
            timeout=query_timeout,
            lost_event="maintenance_failed",
            rng=rng,
        )

    async def run(self) -> None:
        """Runs rounds until cancelled."""
        await self.supervisor.run(self._serve)

    async def _serve(self, conn: AsyncConn) -> None:
        interval = self.heartbeat_interval or DEFAULT_INTERVAL
        while True:
            with anyio.fail_after(self.query_timeout):
                catalog = await read_catalog(conn)
                self.on_catalog(catalog)
                if self.on_column_types is not None:
                    self.on_column_types(await read_column_types(conn, catalog))
                head = await read_head(conn)
                if head is not None:
                    self.on_head(head)
            if self.heartbeat_interval:
                with anyio.fail_after(self.query_timeout):
                    await write_heartbeat(conn, self.replica_id)
            self.supervisor.up()
            await anyio.sleep(interval)
