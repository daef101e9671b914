"""Sequencing: the inbox numbered into the log gap-free, the relay_log doorbell, heartbeats, prune."""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import pytest

from tests.support.relaylog import connect, sequence_all

pytestmark = pytest.mark.pg


def test_sequencer_rings_relay_log_once_per_batch_with_the_head(relay_db: str) -> None:
    """A batch that moved rows rings relay_log once with the new head as the payload; an empty
    batch rings nothing."""
    with connect(relay_db) as listener, connect(relay_db) as conn:
        listener.execute("LISTEN relay_log")
        conn.execute("INSERT INTO generations (user_id, project_id) VALUES ('u1', 'p1')")
        conn.execute("SELECT relay.sequence_batch()")
        conn.execute("SELECT relay.sequence_batch()")
        for i in range(3):
            conn.execute(
                "INSERT INTO generations (user_id, project_id) VALUES ('u1', %s)", (str(i),)
            )
        conn.execute("SELECT relay.sequence_batch()")
        assert [("relay_log", "1"), ("relay_log", "4")] == [
            (n.channel, n.payload) for n in listener.notifies(timeout=1.0, stop_after=3)
        ]


def test_prune_deletes_old_rows_and_records_the_horizon(relay_db: str) -> None:
    """prune deletes log rows older than the interval, in bounded chunks, and records pruned_through."""
    with connect(relay_db) as conn:
        for i in range(5):
            conn.execute(
                "INSERT INTO generations (user_id, project_id) VALUES ('u1', %s)", (str(i),)
            )
        sequence_all(conn)
        conn.execute("UPDATE relay.log SET sequenced_at = now() - interval '2 days' WHERE pos <= 3")
        assert (2,) == conn.execute("SELECT relay.prune(interval '1 day', 2)").fetchone()
        assert (1,) == conn.execute("SELECT relay.prune(interval '1 day', 2)").fetchone()
        assert (0,) == conn.execute("SELECT relay.prune(interval '1 day', 2)").fetchone()
        assert [(4,), (5,)] == conn.execute("SELECT pos FROM relay.log ORDER BY pos").fetchall()
        assert (5, 3) == conn.execute("SELECT pos, pruned_through FROM relay.head").fetchone()


def test_long_open_transaction_does_not_hold_back_other_events(relay_db: str) -> None:
    """A transaction open for 10 s delays only its own event; others are sequenced meanwhile."""
    with connect(relay_db) as slow, connect(relay_db) as fast:
        slow.execute("BEGIN")
        slow.execute("INSERT INTO generations (user_id, project_id) VALUES ('u1', 'slow')")
        deadline = time.monotonic() + 10.0
        seen: list[str] = []
        while time.monotonic() < deadline:
            fast.execute("INSERT INTO generations (user_id, project_id) VALUES ('u1', 'fast')")
            sequence_all(fast)
            seen = [r[0] for r in fast.execute(
                "SELECT row_data ->> 'project_id' FROM relay.log ORDER BY pos").fetchall()]  # fmt: skip
            time.sleep(0.5)
        assert ["fast"] * len(seen) == seen and len(seen) >= 15
        slow.execute("COMMIT")
        sequence_all(fast)
        assert ("slow",) == fast.execute(
            "SELECT row_data ->> 'project_id' FROM relay.log ORDER BY pos DESC LIMIT 1"
        ).fetchone()


def test_concurrent_writers_gap_free_exactly_once(relay_db: str) -> None:
    """16 writers committing out of order, some rolling back: the log holds each committed event once,
    and a reader tailing it concurrently sees all of them with strictly increasing positions."""
    writers, target_events = 16, 10_000
    committed: list[list[int]] = [[] for _ in range(writers)]
    stop = threading.Event()
    errors: list[BaseException] = []
    counter = iter(range(10**9))
    counter_lock = threading.Lock()
    produced = [0]

    def write(index: int) -> None:
        rng = random.Random(index)
        with connect(relay_db) as conn:
            while True:
                with counter_lock:
                    if produced[0] >= target_events:
                        return
                    size = min(rng.randint(1, 8), target_events - produced[0])
                    batch = [next(counter) for _ in range(size)]
                    produced[0] += len(batch)
                rollback = rng.random() < 0.15
                try:
                    with conn.transaction():
                        for marker in batch:
                            conn.execute(
                                "INSERT INTO generations (user_id, project_id, shot_id)"
                                " VALUES (%s, 'p', %s)",
                                (f"u{marker % 7}", str(marker)),
                            )
                        time.sleep(rng.random() * 0.01)
                        if rollback:
                            raise _Rollback
                except _Rollback:
                    with counter_lock:
                        produced[0] -= len(batch)
                    continue
                committed[index].extend(batch)

    def sequence() -> None:
        with connect(relay_db) as conn:
            while not stop.is_set():
                if not conn.execute("SELECT relay.sequence_batch(500)").fetchone()[0]:  # type: ignore[index]
                    time.sleep(0.002)

    tailed: list[tuple[int, int]] = []

    def tail() -> None:
        last = 0
        with connect(relay_db) as conn:
            while not stop.is_set() or last < target_events:
                rows = conn.execute(
                    "SELECT pos, (row_data ->> 'shot_id')::int FROM relay.log"
                    " WHERE pos > %s ORDER BY pos LIMIT 1000",
                    (last,),
                ).fetchall()
                tailed.extend(rows)
                if rows:
                    last = rows[-1][0]
                else:
                    time.sleep(0.002)
                if stop.is_set() and not rows:
                    return

    def guarded(fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except BaseException as exc:  # surfaced to the test below
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(write, i)) for i in range(writers)]
    background = [threading.Thread(target=guarded, args=(fn,)) for fn in (sequence, tail)]
    for thread in threads + background:
        thread.start()
    for thread in threads:
        thread.join(120)
    with connect(relay_db) as conn:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(tailed) < target_events:
            time.sleep(0.05)
    stop.set()
    for thread in background:
        thread.join(30)
    assert [] == errors

    expected = sorted(m for per_writer in committed for m in per_writer)
    assert target_events == len(expected)
    positions = [pos for pos, _ in tailed]
    assert list(range(1, target_events + 1)) == positions  # gap-free, strictly increasing
    assert expected == sorted(marker for _, marker in tailed)  # each committed event exactly once
    with connect(relay_db) as conn:
        assert [(target_events,)] == conn.execute("SELECT count(*) FROM relay.log").fetchall()
        assert [(0,)] == conn.execute("SELECT count(*) FROM relay.inbox").fetchall()


class _Rollback(Exception):
    """Raised inside a writer's transaction to roll it back on purpose."""


def test_heartbeat_travels_the_event_path_to_nobody(relay_db: str) -> None:
    """relay.heartbeat() rings the inbox doorbell with notify on and lands in the log with an
    empty audience."""
    with connect(relay_db) as listener, connect(relay_db) as conn:
        listener.execute("LISTEN relay_inbox")
        conn.execute("SELECT relay.configure(notify => true)")
        conn.execute("SELECT relay.heartbeat('replica-1')")
        assert ["relay_inbox"] == [n.channel for n in listener.notifies(timeout=1.0, stop_after=1)]
        assert 1 == sequence_all(conn)
        assert [("relay", "heartbeat", "HEARTBEAT", {"source": "replica-1"}, [])] == conn.execute(
            "SELECT table_schema, table_name, op, pk, audience FROM relay.log"
        ).fetchall()


def test_prune_bisects_to_the_end_of_the_expired_prefix(relay_db: str) -> None:
    """prune deletes exactly the rows sequenced before the horizon, found by bisection over the
    positions (each age boundary from 0 to 40 of 40 rows), at most max_rows a call."""
    with connect(relay_db) as conn:
        conn.execute(
            "INSERT INTO generations (user_id, project_id) SELECT 'u1', g::text"
            " FROM generate_series(1, 40) AS g"
        )
        assert 40 == sequence_all(conn)
        for expired in range(41):
            with conn.transaction(force_rollback=True):
                conn.execute(
                    "UPDATE relay.log SET sequenced_at = now() - (100 - pos) * interval '1 hour'"
                    " - CASE WHEN pos <= %s THEN interval '1000 hours' ELSE interval '0' END",
                    (expired,),
                )  # older the lower the position; the first `expired` ones past 200 h
                calls = []
                while deleted := conn.execute(
                    "SELECT relay.prune(interval '200 hours', 7)"
                ).fetchone()[0]:  # type: ignore[index]
                    calls.append(deleted)
                assert sum(calls) == expired and all(n <= 7 for n in calls)
                assert [7] * (expired // 7) == calls[: expired // 7]
                assert (40, expired) == conn.execute(
                    "SELECT pos, pruned_through FROM relay.head"
                ).fetchone()
                assert list(range(expired + 1, 41)) == [
                    pos for (pos,) in conn.execute("SELECT pos FROM relay.log ORDER BY pos")
                ]
