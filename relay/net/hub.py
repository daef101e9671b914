"""What the connections of one process share: the router, the log's state, readiness, metrics.

The log reader feeds the hub (``deliver``, ``on_log_state``, ``caught_up``) and maintenance tells
it the catalog and the log's head (``catalog_loaded``, ``head_seen``); the hub routes each event
through the router into the connections (relay/net/connection.py: their ``offer`` writes or
queues; routing never awaits) and counts, from what the router returns, the deliveries written at
once (a connection counts those it writes later: ``delivered``). The hub never reaches into a
connection beyond ``close_soon`` on a log discontinuity.
"""

from __future__ import annotations

import time
import traceback
from datetime import datetime
from typing import Final, Protocol

import anyio
import structlog

from relay.core.events import Event
from relay.core.log import LogState
from relay.core.phoenix import ColumnTypes
from relay.core.requests import Tracked
from relay.core.router import Router
from relay.ops.config import Settings
from relay.ops.heap import HeapTrim
from relay.ops.metrics import Metrics

__all__ = ["CLOSE_EPOCH_CHANGED", "HEARTBEAT", "Closable", "Hub", "Wakeup"]

READY_LAG: Final = 10.0  # /readyz fails when the log was last read up to its head longer ago
HEARTBEAT: Final = "HEARTBEAT"
CLOSE_EPOCH_CHANGED: Final = 1012  # "service restart": reconnect and resume with the cursor

log = structlog.get_logger("relay.net.hub")


class Closable(Protocol):
    """What the hub and the shell's sweeper ask of a registered connection."""

    def close_soon(self, code: int, reason: str) -> None:
        """Close with this code and reason, without awaiting."""

    def check(self, now: float, monotonic: float) -> None:
        """Enforce the timers due at this time (auth timeout, token expiry, slow client)."""


class Wakeup:
    """A level-triggered wake-up for one waiting task (anyio's Event cannot be cleared)."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = anyio.Event()

    def set(self) -> None:
        self._event.set()

    async def wait(self, timeout: float | None) -> None:
        with anyio.move_on_after(timeout):
            await self._event.wait()
        if self._event.is_set():
            self._event = anyio.Event()


class Hub:
    """Everything the connections of one process share: routing, the log's state, metrics."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.router = Router()
        self.epoch: str | None = None
        self.listener_up = False
        self.caught_up_at = -1e9  # monotonic time the log was last read up to its head
        self.last_event_at: float | None = None  # monotonic
        self.db_head = 0
        self.tables: Tracked = {}
        self.types: ColumnTypes = {}  # the Supabase dialect's column types (relay/core/phoenix.py)
        self.connections: dict[str, Closable] = {}
        self.polls = 0  # long-polls in flight; they count against max_connections too
        self.accepting = True
        self.heap = HeapTrim()  # gives closed connections' filter memory back to the system
        metrics.last_event_age.set_function(self._last_event_age)
        metrics.log_backlog.set_function(lambda: max(0, self.db_head - self.router.head))
        metrics.connections.polls = lambda: self.polls

    def _last_event_age(self) -> float:
        if self.last_event_at is None:
            return float("nan")
        return time.monotonic() - self.last_event_at

    # -- fed by the log reader ------------------------------------------------------------------

    def on_log_state(self, state: LogState | None) -> None:
        """The log reader connected (the log's state) or lost its connection (None)."""
        self.listener_up = state is not None
        self.metrics.listener_up.set(1 if state else 0)
        if state is None:
            return
        went_back = state.head < self.router.head  # a restore from backup keeps the epoch
        # Down longer than the retention: events this relay never read were pruned meanwhile.
        pruned_past_us = state.pruned_through > self.router.head
        if self.epoch is not None and (state.epoch != self.epoch or went_back or pruned_past_us):
            # Reinstalled or restored: every cursor handed out is meaningless. Clients reconnect
            # and resume with their cursors, which now get an explicit epoch_changed reset.
            log.warning(
                "log_discontinuity",
                epoch_changed=state.epoch != self.epoch,
                went_back=went_back,
                pruned_past_us=pruned_past_us,
            )
            for connection in list(self.connections.values()):
                connection.close_soon(CLOSE_EPOCH_CHANGED, "epoch_changed")
            self.router = Router(state.head)
        elif self.epoch is None:
            self.router = Router(state.head)
        self.epoch = state.epoch
        self.db_head = max(self.db_head, state.head)

    def on_uncarriable(self, event: Event, reason: str) -> None:
        """The log reader read an event whose row cannot be carried: it travels truncated.
        Counted and logged once, without the value."""
        self.metrics.uncarriable.labels(reason).inc()
        log.warning(
            "event_truncated", schema=event.schema, table=event.table, pos=event.pos, reason=reason
        )

    def deliver(self, events: list[Event]) -> None:
        now = time.time()
        metrics = self.metrics
        for event in events:
            # One event must never stop the stream: an unexpected failure routing it is contained
            # (counted, logged) and the batch goes on. No cost unless something raises.
            try:
                if event.op == HEARTBEAT:
                    self.router.route(event, now)  # no audience: only advances the head
                    continue
                metrics.events.labels(event.table, event.op).inc()
                if (event.schema, event.table) not in self.tables:  # tracked since last refresh
                    self.tables = {**self.tables, (event.schema, event.table): _columns_of(event)}
                written = self.router.route(event, now).written
                if written:
                    self.delivered(event.committed_at, time.time(), written)
            except Exception as exc:
                self._event_failed(event, exc)
        self.last_event_at = time.monotonic()
        self.db_head = max(self.db_head, self.router.head)

    def _event_failed(self, event: Event, exc: Exception) -> None:
        """Counts and logs a routing failure: where it happened, never the message (which may
        quote a value)."""
        self.metrics.drops.labels("error").inc()
        frames = traceback.extract_tb(exc.__traceback__)
        where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else ""
        log.error(
            "event_not_routed",
            schema=event.schema,
            table=event.table,
            pos=event.pos,
            error=type(exc).__name__,
            where=where,
        )

    def delivered(self, committed_at: datetime, now: float, count: int = 1) -> None:
        """``count`` frames of an event committed at ``committed_at`` reached sockets at ``now``
        (Unix time): the deliveries and their commit-to-socket lag, observed once."""
        self.metrics.deliveries.inc(count)
        self.metrics.delivery_lag.observe(max(0.0, now - committed_at.timestamp()), count)

    def caught_up(self) -> None:
        """The log reader read the log up to its head: recorded for readiness."""
        self.caught_up_at = time.monotonic()

    # -- fed by maintenance -----------------------------------------------------------------------

    def catalog_loaded(self, tables: Tracked) -> None:
        """The tracked tables and their carried columns, as the database lists them now."""
        self.tables = tables

    def types_loaded(self, types: ColumnTypes) -> None:
        """The tracked tables' carried columns with their PostgreSQL type names."""
        self.types = types

    def column_types(self) -> ColumnTypes:
        return self.types

    def head_seen(self, pos: int) -> None:
        """The log's head as the database reported it (for the backlog gauge); never goes back."""
        self.db_head = max(self.db_head, pos)

    def ready(self) -> bool:
        return (
            self.accepting
            and self.listener_up
            and self.epoch is not None
            and time.monotonic() - self.caught_up_at
            < max(READY_LAG, 2 * self.settings.listen_window)
        )

    def tracked(self) -> Tracked:
        return self.tables


def _columns_of(event: Event) -> frozenset[str]:
    """A table's carried columns as one event shows them, until the catalog is refreshed."""
    return frozenset(event.pk) | frozenset(event.row or ())
