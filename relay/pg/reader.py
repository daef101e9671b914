"""The log reader: tails ``relay.log`` by position and hands each batch to the hub.

Policy: it LISTENs on ``relay_log`` and waits for the doorbell in windows
(``notifies(timeout=listen_window)``); between windows it reads the log, which doubles as the
heartbeat query. The sequencer rings once per batch with the new head as the payload: a doorbell
for a head already read (batches that one read took together) costs no query. On the leader (the
replica whose sequencer holds the role: ``lead``), the sequencer hands the reader the rows of each
batch it committed (``hand``), and the reader delivers them without a doorbell or a query when they
continue its position (relay/core/handoff.py: bounded; past the bound, or at a gap, it reads the
log); while leading it does not LISTEN on relay_log, so its own doorbells cost it nothing, and when
the role is lost it LISTENs again and reads the log. Every database
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
from collections.abc import Callable, Sequence
from typing import Any, Final

import anyio
import structlog

from relay.core.events import Event
from relay.core.handoff import READ_LOG, WAIT, Handoff
from relay.core.log import LogState
from relay.pg.queries import (
    READ_BATCH,
    AsyncConn,
    check_direct_connection,
    listen,
    read_log_after,
    read_log_state,
    unlisten,
)
from relay.pg.rows import decode_event
from relay.pg.supervise import Supervisor

__all__ = ["FROM_HANDOFF", "FROM_LOG", "LogReader", "rung_head"]

FROM_LOG: Final = "log"  # on_batch: a batch read from relay.log
FROM_HANDOFF: Final = "handoff"  # on_batch: a batch this process's sequencer handed over

log = structlog.get_logger("relay.pg.reader")


def _ignore_uncarriable(event: Event, reason: str) -> None:
    pass


def _nothing() -> None:
    pass


def _ignore_batch(source: str) -> None:
    pass


def rung_head(payload: str) -> int | None:
    """The head a ``relay_log`` doorbell carries; None for one without (an older sequencer)."""
    return int(payload) if payload.isascii() and payload.isdigit() else None


class LogReader:
    """Tails relay.log and hands each batch of events, in position order, to ``deliver``.

    ``deliver`` is synchronous and must not block: it routes into bounded queues.
    ``on_state`` is told when the reader connects (with the log state) and disconnects (None).
    ``on_reconnect`` is told of each lost connection; ``on_caught_up`` each time the log was read
    up to its head (or up to a batch its sequencer handed, the head then). ``on_uncarriable`` is
    told of each event read whose row could not be carried (it travels truncated), with the reason:
    once per event, as the reader reads each position once. ``on_batch`` is told where each
    delivered batch came from (``FROM_LOG`` or ``FROM_HANDOFF``).
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
        on_batch: Callable[[str], None] = _ignore_batch,
        application_name: str = "pgrelay-listener",
        rng: random.Random | None = None,
    ) -> None:
        self.last_pos = start_after
        self.deliver = deliver
        self.on_state = on_state
        self.on_reconnect = on_reconnect
        self.on_caught_up = on_caught_up
        self.on_uncarriable = on_uncarriable
        self.on_batch = on_batch
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
        self.handoff: Handoff[Sequence[Any]] = Handoff()
        self.leading = False  # this process's sequencer holds the role (``lead``)
        self._listening = False  # LISTENing on relay_log on the current connection
        self._waiting: anyio.CancelScope | None = None  # the wait for news, while it waits
        self._must_read = False  # hand() found a gap while the reader waited

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Reads the log until cancelled; ready (``task_status``) once read up to its head."""
        self._task_status = task_status
        await self.supervisor.run(self._serve)

    def hand(self, rows: Sequence[Sequence[Any]]) -> None:
        """The rows this process's sequencer just moved and committed, in position order
        (LOG_COLUMNS): delivered without reading the log when they continue the position.

        A reader parked waiting for news (no query in flight) delivers them at once, in this
        call; a busy one takes them at its next look. Where they do not continue the position,
        the parked reader is woken to read the log.
        """
        if not rows:
            return
        self.handoff.offer(rows[0][0], rows)
        if self._waiting is not None and not self._take_handed():
            self._must_read = True
            self._wake()

    @property
    def waiting(self) -> bool:
        """True while the reader waits for news: no query in flight, ``hand`` delivers at once."""
        return self._waiting is not None

    def lead(self, leading: bool) -> None:
        """Whether this process's sequencer holds the role: while it does, its batches come
        through ``hand`` and the reader stops listening on relay_log."""
        self.leading = leading
        self._wake()

    def _wake(self) -> None:
        if self._waiting is not None:
            self._waiting.cancel()

    def _down(self) -> None:
        self.on_state(None)
        self.on_reconnect()

    async def _serve(self, conn: AsyncConn) -> None:
        self._listening = False
        with anyio.fail_after(self.query_timeout):
            await check_direct_connection(conn)
            await self._listen_unless_leading(conn)
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
        self.handoff.clear()  # read from the log now, from last_pos
        self.supervisor.up()
        self.on_state(state)
        log.info("listener_up", head=state.head, notify=state.notify)
        while True:
            with anyio.fail_after(self.query_timeout):
                await self._listen_unless_leading(conn)
            await self._read_all(conn)
            if self._task_status is not None:  # ready once the log was read up to its head
                self._task_status.started()
                self._task_status = None
            await self._follow(conn)

    async def _listen_unless_leading(self, conn: AsyncConn) -> None:
        """LISTENs on relay_log unless this process's sequencer leads (its batches are handed);
        first LISTEN, then read: a doorbell rung meanwhile is not missed."""
        if self._listening != self.leading:
            return
        if self.leading:
            await unlisten(conn, "relay_log")
        else:
            await listen(conn, "relay_log")
        self._listening = not self.leading

    async def _follow(self, conn: AsyncConn) -> None:
        """Delivers the handed batches that continue the position; returns when the log is to be
        read: a doorbell for a head past ``last_pos`` (or one without a head), a handed batch
        that does not continue it, a change of leadership, or ``listen_window`` without news."""
        deadline = anyio.current_time() + self.listen_window
        while True:
            if not self._take_handed() or self._listening == self.leading:
                return  # a gap, or LISTEN or UNLISTEN: then read the log
            remaining = deadline - anyio.current_time()
            self._must_read = False
            if remaining <= 0 or await self._news(conn, remaining) or self._must_read:
                return

    def _take_handed(self) -> bool:
        """Delivers the handed batches that continue the position; False when the next
        positions must be read from the log."""
        while True:
            taken = self.handoff.take(self.last_pos)
            if taken == WAIT:
                return True
            if taken == READ_LOG:
                return False
            assert not isinstance(taken, str)
            self._deliver(taken, FROM_HANDOFF)
            self.on_caught_up()

    async def _news(self, conn: AsyncConn, timeout: float) -> bool:
        """Waits up to ``timeout`` for a doorbell; True for one with news, False when the wait
        ended without (a doorbell for a head already read, ``hand`` or ``lead``, the timeout).
        While it waits, ``hand`` may deliver: no query is in flight."""
        news = False
        with anyio.CancelScope() as scope:
            self._waiting = scope
            try:
                async for note in conn.notifies(timeout=timeout, stop_after=1):
                    head = rung_head(note.payload)
                    news = news or head is None or self.last_pos is None or head > self.last_pos
            finally:
                self._waiting = None
        return news

    async def _read_all(self, conn: AsyncConn) -> None:
        while True:
            assert self.last_pos is not None
            with anyio.fail_after(self.query_timeout):
                rows = await read_log_after(conn, self.last_pos, READ_BATCH)
            if rows:
                self._deliver(rows, FROM_LOG)
            if len(rows) < READ_BATCH:
                self.on_caught_up()
                return

    def _deliver(self, rows: Sequence[Sequence[Any]], source: str) -> None:
        events = []
        for row in rows:
            event, problem = decode_event(row)
            if problem is not None:
                self.on_uncarriable(event, problem)
            events.append(event)
        self.last_pos = events[-1].pos
        self.deliver(events)
        self.on_batch(source)
