"""The sequencer: the one replica that moves committed inbox rows into the log, and prunes it.

Policy: every replica competes for an advisory session lock, polling for it every
``TAKEOVER_INTERVAL``. The holder moves committed inbox rows into the log
(``relay.sequence_log``, one transaction and one ``relay_log`` notification per batch) by an
adaptive poll of the inbox (relay/core/pacing.py): ``batch_window`` after a batch that moved rows
(stretched under heavy load), backing off to ``poll_interval`` while the inbox stays empty;
with notify on, a writer's doorbell cuts the wait short. The rows of each batch come back from
the same call, committed, and are handed to this process's log reader (``on_batch``), which
delivers them without reading the log (relay/pg/reader.py); the other replicas learn of them from
the doorbell. It prunes the log to its retention at most every ``prune_interval``.
If the holder dies its backend goes, the lock is released and another replica takes over within
``TAKEOVER_INTERVAL``. Its connection is kept by the supervised loop (relay/pg/supervise.py);
every query runs under ``query_timeout``.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, TypeVar

import anyio
import structlog

from relay.core.pacing import PollPacer
from relay.pg.queries import (
    AsyncConn,
    listen,
    ping,
    prune,
    sequence_log,
    try_sequencer_lock,
)
from relay.pg.supervise import Supervisor

__all__ = ["PRUNE_BATCH", "TAKEOVER_INTERVAL", "Sequencer"]

TAKEOVER_INTERVAL: Final = 1.0  # seconds between attempts at the lock
PRUNE_BATCH: Final = 10000  # log rows deleted per statement

log = structlog.get_logger("relay.pg.sequencer")
T = TypeVar("T")


def _ignore_batch(rows: Sequence[Sequence[Any]]) -> None:
    pass


class Sequencer:
    """Competes for the sequencer lock; while held, moves inbox rows into the log.

    ``on_leader`` is told True when this replica takes the role and False when it loses it;
    ``on_batch`` is handed the rows of each batch that moved rows, committed, in position order
    (LOG_COLUMNS), before the next look. Both are synchronous and must not block.
    The log is pruned on the leader's connection after batches, at most every
    ``prune_interval`` seconds, of rows older than ``retention`` seconds.
    """

    def __init__(
        self,
        dsn: str,
        *,
        on_leader: Callable[[bool], None],
        on_batch: Callable[[Sequence[Sequence[Any]]], None] = _ignore_batch,
        query_timeout: float,
        poll_interval: float,
        batch_window: float,
        batch: int,
        retention: float,
        prune_interval: float,
        application_name: str = "pgrelay-sequencer",
        rng: random.Random | None = None,
    ) -> None:
        self.on_leader = on_leader
        self.on_batch = on_batch
        self.query_timeout = query_timeout
        self.poll_interval = poll_interval
        self.batch_window = batch_window
        self.batch = batch
        self.retention = retention
        self.prune_interval = prune_interval
        self.supervisor = Supervisor(
            dsn,
            application_name=application_name,
            timeout=query_timeout,
            lost_event="sequencer_lost",
            on_down=lambda: self._set_leader(False),
            rng=rng,
        )
        self.leader = False
        self._next_prune = 0.0

    async def run(self) -> None:
        """Competes for the role and serves it until cancelled (the role ends with it: its
        connection closes, and ``on_leader`` is told False)."""
        try:
            await self.supervisor.run(self._serve)
        finally:
            self._set_leader(False)

    def _set_leader(self, leader: bool) -> None:
        if leader != self.leader:
            self.leader = leader
            log.info("sequencer_leader" if leader else "sequencer_follower")
            self.on_leader(leader)

    async def _timed(self, query: Awaitable[T]) -> T:
        with anyio.fail_after(self.query_timeout):
            return await query

    async def _serve(self, conn: AsyncConn) -> None:
        await self._timed(ping(conn))
        self.supervisor.up()
        # Polling, not blocking: a blocked pg_advisory_lock would hide a dead connection.
        while not await self._timed(try_sequencer_lock(conn)):  # noqa: ASYNC110
            await anyio.sleep(TAKEOVER_INTERVAL)
        await self._timed(listen(conn, "relay_inbox"))
        self._set_leader(True)
        pacer = PollPacer(self.batch_window, self.poll_interval)
        while True:
            started = anyio.current_time()
            rows = await self._timed(sequence_log(conn, self.batch))
            if rows:
                self.on_batch(rows)
            # Events logged: as many as rows taken but for UPDATEs that changed nothing carried,
            # so a full batch holding one is followed after the window, not at once.
            taken = len(rows)
            await self._maybe_prune(conn)
            # The window runs from the start of the look: what committed while the batch was
            # sequenced is already waiting. A full batch waits not at all.
            wait = pacer.after(taken, self.batch) - (anyio.current_time() - started)
            if wait <= 0:
                continue
            # With notify on (relay.configure), a writer's doorbell ends the wait early; without
            # it (the default), this is the poll.
            async for _ in conn.notifies(timeout=wait, stop_after=1):
                pass

    async def _maybe_prune(self, conn: AsyncConn) -> None:
        now = anyio.current_time()
        if now < self._next_prune:
            return
        self._next_prune = now + self.prune_interval
        total = 0
        while True:
            deleted = await self._timed(prune(conn, self.retention, PRUNE_BATCH))
            total += deleted
            if deleted < PRUNE_BATCH:
                break
        if total:
            log.info("log_pruned", deleted=total)
