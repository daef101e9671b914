"""The leader's path: its sequencer hands each batch to its own log reader, in process, against a
real server; every position is delivered once, in order, through lost connections, a reader
reconnecting with batches pending, and the role moving to another replica."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio
import psycopg
import pytest

from relay.core.events import Event
from relay.core.log import LogState
from relay.pg.reader import FROM_HANDOFF, FROM_LOG, LogReader
from relay.pg.sequencer import Sequencer

pytestmark = pytest.mark.pg

TIMEOUT = 20.0  # seconds any one step may take before the test fails


class Replica:
    """A log reader and a sequencer wired as relay/app.py wires them, recording what the reader
    delivers (positions, and where each batch came from)."""

    def __init__(self, dsn: str, name: str) -> None:
        self.name = name
        self.positions: list[int] = []
        self.sources: list[str] = []
        self.states: list[LogState | None] = []
        self.on_down: Callable[[], None] = lambda: None
        self.reader = LogReader(
            dsn,
            start_after=None,
            deliver=self._deliver,
            on_state=self._state,
            on_batch=self.sources.append,
            listen_window=60.0,  # no reads on the interval: each read below has a cause
            query_timeout=5.0,
            application_name=f"test-reader-{name}",
        )
        self.sequencer = Sequencer(
            dsn,
            on_leader=self.reader.lead,
            on_batch=self.reader.hand,
            query_timeout=5.0,
            poll_interval=0.02,
            batch_window=0.001,
            batch=1000,
            retention=86400.0,
            prune_interval=3600.0,
            application_name=f"test-sequencer-{name}",
        )

    def _deliver(self, events: list[Event]) -> None:
        self.positions.extend(event.pos for event in events)

    def _state(self, state: LogState | None) -> None:
        self.states.append(state)
        if state is None:
            self.on_down()


async def until(predicate: Callable[[], object], what: str) -> None:
    """Waits (yielding to the relay's tasks) until predicate is true; fails naming what did not
    happen within TIMEOUT."""
    with anyio.move_on_after(TIMEOUT):
        while not predicate():  # noqa: ASYNC110 - the relay's tasks change what it reads
            await anyio.sleep(0.005)
        return
    raise AssertionError(f"not within {TIMEOUT}s: {what}")


def has(items: Sequence[object], count: int) -> Callable[[], bool]:
    """True once ``items`` holds ``count`` items."""
    return lambda: len(items) == count


def more_than(items: Sequence[object], count: int) -> Callable[[], bool]:
    """True once ``items`` holds more than ``count`` items."""
    return lambda: len(items) > count


async def write(dsn: str, *projects: str) -> None:
    """One committed INSERT per project into the example's generations table."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        for project in projects:
            await conn.execute(
                "INSERT INTO generations (user_id, project_id) VALUES ('u1', %s)", (project,)
            )


async def terminate(dsn: str, application_name: str) -> None:
    """pg_terminate_backend for the one backend of that application_name."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (application_name,),
        )
        assert [(True,)] == await cur.fetchall()


def run(body: Callable[[], Awaitable[None]]) -> None:
    async def main() -> None:
        with anyio.fail_after(4 * TIMEOUT):
            await body()

    anyio.run(main)


async def settled(replica: Replica, dsn: str, first: int) -> int:
    """Writes one event at a time from ``first`` on until one reached the reader through the
    handoff (the reader then follows its sequencer, no longer listening); returns the next
    number to write."""
    number = first
    while FROM_HANDOFF not in replica.sources:
        assert number < first + 50, "no batch was ever handed to the reader"
        await write(dsn, str(number))
        await until(has(replica.positions, number), f"event {number} delivered")
        number += 1
    return number


def test_the_leaders_reader_delivers_its_own_batches_without_reading_the_log(relay_db: str) -> None:
    """Once leading, every batch of the leader's sequencer reaches its reader through the
    handoff: no log read, every position once and in order."""

    async def body() -> None:
        replica = Replica(relay_db, "a")
        async with anyio.create_task_group() as tasks:
            await tasks.start(replica.reader.run)
            tasks.start_soon(replica.sequencer.run)
            await until(lambda: replica.sequencer.leader, "the sequencer leads")
            number = await settled(replica, relay_db, 1)
            sources = len(replica.sources)
            for i in range(number, number + 20):
                await write(relay_db, str(i))
                await until(has(replica.positions, i), f"event {i} delivered")
            assert [FROM_HANDOFF] * 20 == replica.sources[sources:]
            assert list(range(1, number + 20)) == replica.positions
            tasks.cancel_scope.cancel()

    run(body)


def test_a_waiting_reader_delivers_a_handed_batch_within_the_hand_call(relay_db: str) -> None:
    """The test plays the leader's sequencer (relay.sequence_log on its own connection): a batch
    handed to a reader that waits for news is delivered before ``hand`` returns, no log read."""

    async def body() -> None:
        replica = Replica(relay_db, "a")
        reader = replica.reader
        reader.lead(True)
        async with (
            await psycopg.AsyncConnection.connect(relay_db, autocommit=True) as conn,
            anyio.create_task_group() as tasks,
        ):
            await tasks.start(reader.run)
            for i in range(1, 4):
                await until(lambda: reader.waiting, "the reader waits")
                await write(relay_db, str(i))
                cur = await conn.execute("SELECT * FROM relay.sequence_log(1000)")
                reader.hand(await cur.fetchall())
                assert list(range(1, i + 1)) == replica.positions
            assert [FROM_HANDOFF] * 3 == replica.sources
            tasks.cancel_scope.cancel()

    run(body)


def test_a_batch_never_handed_is_read_from_the_log_in_order(relay_db: str) -> None:
    """A batch the reader is not handed (its answer lost): the next handed batch does not
    continue the position, so the reader reads the log: nothing skipped, nothing twice."""

    async def body() -> None:
        replica = Replica(relay_db, "a")
        lose = [False]

        def hand(rows: Sequence[Sequence[Any]]) -> None:
            if lose[0]:
                lose[0] = False
                return
            replica.reader.hand(rows)

        replica.sequencer.on_batch = hand
        async with anyio.create_task_group() as tasks:
            await tasks.start(replica.reader.run)
            tasks.start_soon(replica.sequencer.run)
            await until(lambda: replica.sequencer.leader, "the sequencer leads")
            number = await settled(replica, relay_db, 1)
            sources = len(replica.sources)
            lose[0] = True
            await write(relay_db, str(number))  # sequenced, never handed
            await until(lambda: not lose[0], "a batch was lost")
            await write(relay_db, str(number + 1))
            await until(lambda: len(replica.positions) == number + 1, "both events delivered")
            assert list(range(1, number + 2)) == replica.positions
            assert [FROM_LOG] == replica.sources[sources:]  # both in one read
            await write(relay_db, str(number + 2))
            await until(lambda: len(replica.positions) == number + 2, "the next one delivered")
            assert [FROM_LOG, FROM_HANDOFF] == replica.sources[sources:]
            tasks.cancel_scope.cancel()

    run(body)


def test_leader_losing_its_connection_mid_batch_neither_skips_nor_duplicates(
    relay_db: str,
) -> None:
    """The sequencer's backend is terminated while its batch waits on relay.head's lock: the
    reader goes back to the log, the reconnected sequencer moves the batch, and every position
    is delivered once, in order; the handoff resumes after."""

    async def body() -> None:
        replica = Replica(relay_db, "a")
        async with anyio.create_task_group() as tasks:
            await tasks.start(replica.reader.run)
            tasks.start_soon(replica.sequencer.run)
            await until(lambda: replica.sequencer.leader, "the sequencer leads")
            number = await settled(replica, relay_db, 1)
            async with await psycopg.AsyncConnection.connect(relay_db) as blocker:
                await blocker.execute("SELECT pos FROM relay.head FOR UPDATE")
                await write(relay_db, *(str(i) for i in range(number, number + 5)))
                async with await psycopg.AsyncConnection.connect(
                    relay_db, autocommit=True
                ) as watcher:

                    async def sequencer_blocked() -> bool:
                        cur = await watcher.execute(
                            "SELECT count(*) FROM pg_stat_activity WHERE application_name ="
                            " 'test-sequencer-a' AND wait_event_type = 'Lock'"
                        )
                        return (1,) == await cur.fetchone()

                    with anyio.fail_after(TIMEOUT):
                        while not await sequencer_blocked():  # noqa: ASYNC110 - a server's state
                            await anyio.sleep(0.005)
                await terminate(relay_db, "test-sequencer-a")
                await until(lambda: not replica.sequencer.leader, "the role is lost")
                await blocker.rollback()
            await until(lambda: replica.sequencer.leader, "the role is taken again")
            await until(lambda: len(replica.positions) == number + 4, "the batch delivered")
            sources = len(replica.sources)
            await write(relay_db, str(number + 5))
            await until(lambda: len(replica.positions) == number + 5, "the next one delivered")
            assert list(range(1, number + 6)) == replica.positions
            assert FROM_HANDOFF in replica.sources[sources:]
            tasks.cancel_scope.cancel()

    run(body)


def test_reader_reconnecting_with_batches_pending_reads_the_log_once(relay_db: str) -> None:
    """Batches handed while the reader's connection is down are not taken after it reconnects
    (it reads the log from its position): every position once, in order; the handoff resumes."""

    async def body() -> None:
        replica = Replica(relay_db, "a")
        held: list[Sequence[Sequence[Any]]] = []
        holding = [False]

        def hand(rows: Sequence[Sequence[Any]]) -> None:
            if holding[0]:
                held.append(rows)
            else:
                replica.reader.hand(rows)

        def down() -> None:  # the reader's connection is lost: the held batches go in now
            for rows in held:
                replica.reader.hand(rows)
            held.clear()

        replica.sequencer.on_batch = hand
        replica.on_down = down
        async with anyio.create_task_group() as tasks:
            await tasks.start(replica.reader.run)
            tasks.start_soon(replica.sequencer.run)
            await until(lambda: replica.sequencer.leader, "the sequencer leads")
            number = await settled(replica, relay_db, 1)
            holding[0] = True
            for i in range(number, number + 3):
                await write(relay_db, str(i))
                await until(more_than(held, len(held)), f"event {i} sequenced")
            holding[0] = False
            await terminate(relay_db, "test-reader-a")
            await until(lambda: len(replica.positions) == number + 2, "the held events delivered")
            assert None in replica.states and 0 == len(replica.reader.handoff)
            sources = len(replica.sources)
            await write(relay_db, str(number + 3))
            await until(lambda: len(replica.positions) == number + 3, "the next one delivered")
            assert list(range(1, number + 4)) == replica.positions
            assert [FROM_HANDOFF] == replica.sources[sources:]
            tasks.cancel_scope.cancel()

    run(body)


def test_role_moving_to_another_replica_keeps_both_readers_gap_free(relay_db: str) -> None:
    """Replica A leads (its reader follows its sequencer), then A's sequencer stops: B takes the
    role, A's reader listens again and reads B's batches from the log, B's reader takes them
    from its handoff; both deliver every position once, in order."""

    async def body() -> None:
        a, b = Replica(relay_db, "a"), Replica(relay_db, "b")
        async with anyio.create_task_group() as tasks:
            await tasks.start(a.reader.run)
            await tasks.start(b.reader.run)
            a_sequencer = anyio.CancelScope()

            async def run_a() -> None:
                with a_sequencer:
                    await a.sequencer.run()

            tasks.start_soon(run_a)
            await until(lambda: a.sequencer.leader, "A leads")
            tasks.start_soon(b.sequencer.run)
            number = await settled(a, relay_db, 1)
            await until(lambda: len(b.positions) == number - 1, "B caught up")
            a_sequencer.cancel()
            await until(lambda: b.sequencer.leader, "B takes the role")
            assert not a.reader.leading
            a_sources = len(a.sources)
            number = await settled(b, relay_db, number)
            for i in range(number, number + 10):
                await write(relay_db, str(i))
                await until(has(a.positions, i), f"event {i} at A")
                await until(has(b.positions, i), f"event {i} at B")
            assert list(range(1, number + 10)) == a.positions == b.positions
            assert FROM_HANDOFF not in a.sources[a_sources:]
            assert [FROM_HANDOFF] * 10 == b.sources[-10:]
            tasks.cancel_scope.cancel()

    run(body)
