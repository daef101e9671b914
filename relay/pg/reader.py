"""The log reader: tails ``relay.log`` by position and hands each batch to the hub.

Policy: it LISTENs on ``relay_log`` and waits for the doorbell in windows
(``notifies(timeout=listen_window)``); between windows it reads the log, which doubles as the
heartbeat query. The sequencer rings once per batch with the new head as the payload: a doorbell
for a head already read (batches that one read took together) costs no query. Every database
call runs under ``query_timeout``, so a backend that hangs (SIGSTOP, a dead network path) is
detected in about one window plus one timeout; a killed backend or a restart fails at once. On
any failure the supervised loop (relay/pg/supervise.py) reconnects with capped, jittered
backoff; the reader LISTENs again and reads on from its last position: nothing committed during
the gap is lost. If the log's epoch changed, or its head or pruning horizon no longer contain the
last position (a restore, or events pruned while it was away), it reads from the head: the hub
resets its clients.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import anyio
import structlog

from relay.core.events import Event
from relay.core.log import LogState
from relay.pg.queries import (
    READ_BATCH,
    AsyncConn,
    check_direct_connection,
    listen,
    read_log_after,
    read_log_state,
)
from relay.pg.rows import decode_event
from relay.pg.supervise import Supervisor

__all__ = ["LogReader", "rung_head"]

log = structlog.get_logger("relay.pg.reader")


def _ignore_uncarriable(event: Event, reason: str) -> None:
    pass


def _nothing() -> None:
    pass


def rung_head(payload: str) -> int | None:
    """The head a ``relay_log`` doorbell carries; None for one without (an older sequencer)."""
    return int(payload) if payload.isascii() and payload.isdigit() else None


class LogReader:
    """Tails relay.log and hands each batch of events, in position order, to ``deliver``.

    ``deliver`` is synchronous and must not block: it routes into bounded queues.
    ``on_state`` is told when the reader connects (with the log state) and disconnects (None).
    ``on_reconnect`` is told of each lost connection; ``on_caught_up`` each time the log was read
    up to its head. ``on_uncarriable`` is told of each event read whose row could not be carried
    (it travels truncated), with the reason: once per event, as the reader reads each position
    once.
    """

    def __init__(
        self,
        dsn: str,
        *,
        start_after: int | None,
        deliver: Callable[[list[Event]], None],
        on_state: Callable[[LogState | None], None],
        listen_window: float,
        query_timeout: float,
        on_reconnect: Callable[[], None] = _nothing,
        on_caught_up: Callable[[], None] = _nothing,
        on_uncarriable: Callable[[Event, str], None] = _ignore_uncarriable,
        application_name: str = "pgrelay-listener",
        rng: random.Random | None = None,
    ) -> None:
        self.last_pos = start_after
        self.deliver = deliver
        self.on_state = on_state
        self.on_reconnect = on_reconnect
        self.on_caught_up = on_caught_up
        self.on_uncarriable = on_uncarriable
        self.listen_window = listen_window
        self.query_timeout = query_timeout
        self.supervisor = Supervisor(
            dsn,
            application_name=application_name,
            timeout=query_timeout,
            lost_event="listener_lost",
            on_down=self._down,
            rng=rng,
        )
        self.epoch: str | None = None
        self._task_status: anyio.abc.TaskStatus[None] | None = None  # until ready

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Reads the log until cancelled; ready (``task_status``) once read up to its head."""
        self._task_status = task_status
        await self.supervisor.run(self._serve)

    def _down(self) -> None:
        self.on_state(None)
        self.on_reconnect()

    async def _serve(self, conn: AsyncConn) -> None:
        with anyio.fail_after(self.query_timeout):
            await check_direct_connection(conn)
            await listen(conn, "relay_log")
            state = await read_log_state(conn)
        if self.epoch is not None and state.epoch != self.epoch:
            # Reinstalled or restored under us: positions of the old epoch mean nothing now.
            log.warning("epoch_changed", old=self.epoch, new=state.epoch)
            self.last_pos = None
        self.epoch = state.epoch
        if self.last_pos is None or not state.pruned_through <= self.last_pos <= state.head:
            # From now: a head behind us means a restore, a horizon past us that events we
            # never read were pruned. The hub resets its clients in both cases.
            self.last_pos = state.head
        self.supervisor.up()
        self.on_state(state)
        log.info("listener_up", head=state.head, notify=state.notify)
        # The sequencer rings relay_log after every batch whatever the notify setting (that
        # setting only spares the writers' commits), so the reader always waits a full window.
        window = self.listen_window
        while True:
            await self._read_all(conn)
            if self._task_status is not None:  # ready once the log was read up to its head
                self._task_status.started()
                self._task_status = None
            await self._wait_for_news(conn, window)

    async def _wait_for_news(self, conn: AsyncConn, window: float) -> None:
        """Returns on a doorbell for a head past ``last_pos`` (or one without a head), or when
        ``window`` passes without one."""
        while True:
            news = False
            rang = False
            async for note in conn.notifies(timeout=window, stop_after=1):
                rang = True
                head = rung_head(note.payload)
                news = head is None or self.last_pos is None or head > self.last_pos
            if news or not rang:
                return

    async def _read_all(self, conn: AsyncConn) -> None:
        while True:
            assert self.last_pos is not None
            with anyio.fail_after(self.query_timeout):
                rows = await read_log_after(conn, self.last_pos, READ_BATCH)
            if rows:
                events = []
                for row in rows:
                    event, problem = decode_event(row)
                    if problem is not None:
                        self.on_uncarriable(event, problem)
                    events.append(event)
                self.last_pos = events[-1].pos
                self.deliver(events)
            if len(rows) < READ_BATCH:
                self.on_caught_up()
                return
