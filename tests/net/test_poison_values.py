"""Poison values: no value a writer can store stops, slows or corrupts the stream (issue 10).

Real Postgres, a real `relay serve` process, real websocket and long-poll clients. Each value
below once made `relay serve` exit (and, after a restart, every replay or long-poll across its
position fail); now each arrives in its documented form and the stream goes on.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest

from tests.net.test_ws import connect
from tests.support.clients import poll
from tests.support.databases import write
from tests.support.processes import RelayProcess, relay_process

pytestmark = pytest.mark.pg

BIG_INT = "1" + "0" * 5000  # numeric 1e5000, as to_jsonb renders it
BIG_FRACTION = "1" + "0" * 400 + ".5"  # loads as inf in Python's json
# (statement on row 1, the row it leaves, or None: truncated, the column it changes)
POISON: list[tuple[str, dict[str, Any] | None, str]] = [
    (
        "UPDATE docs SET budget = 1e5000 WHERE id = 1",
        {"id": 1, "owner": "alice", "budget": BIG_INT, "doc": {}},
        "budget",
    ),
    (
        "UPDATE docs SET doc = (repeat('[', 2000) || repeat(']', 2000))::jsonb WHERE id = 1",
        None,
        "doc",
    ),
    (
        "UPDATE docs SET doc = ('{\"n\": 1' || repeat('0', 400) || '.5}')::jsonb WHERE id = 1",
        {"id": 1, "owner": "alice", "budget": 1, "doc": {"n": BIG_FRACTION}},
        "doc",
    ),
    (
        "UPDATE docs SET doc = ('{\"n\": 1' || repeat('0', 5000) || '}')::jsonb WHERE id = 1",
        {"id": 1, "owner": "alice", "budget": 1, "doc": {"n": BIG_INT}},
        "doc",
    ),
]


def setup_docs(dsn: str) -> None:
    write(
        dsn,
        "CREATE TABLE docs (id bigint PRIMARY KEY, owner text NOT NULL, budget numeric, doc jsonb)",
        "SELECT relay.track('docs', owner_column => 'owner')",
        "INSERT INTO docs VALUES (1, 'alice', 1, '{}'), (2, 'bob', 1, '{}')",
        # Into the log before the relay starts: subscriptions "from now" come after them.
        "SELECT relay.sequence_batch(1000)",
    )


def expected_events() -> list[dict[str, Any]]:
    """Each poison UPDATE, then an ordinary one putting the row back: the frames without sub,
    cursor and ts."""
    base: dict[str, Any] = {"type": "event", "schema": "public", "table": "docs",
                            "op": "UPDATE", "pk": {"id": 1}}  # fmt: skip
    expected = []
    for _, row, column in POISON:
        poisoned = {**base, "row": row, "changed": [column], "old": {"id": 1}}
        if row is None:
            poisoned["truncated"] = True
        expected.append(poisoned)
        back = {"id": 1, "owner": "alice", "budget": 1, "doc": {}}
        expected.append({**base, "row": back, "changed": [column], "old": {"id": 1}})
    return expected


def write_poison_and_repairs(dsn: str) -> None:
    for statement, _, column in POISON:
        write(dsn, statement)
        repair = "budget = 1" if column == "budget" else "doc = '{}'"
        write(dsn, f"UPDATE docs SET {repair} WHERE id = 1")


def strip(frame: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in frame.items() if k not in {"sub", "cursor", "ts"}}


def replayed(relay: RelayProcess, since: str) -> list[dict[str, Any]]:
    """Every event after `since`, by a websocket resume: the frames without `sub`."""
    client = connect(relay, "alice")
    client.subscribe("again", "docs", since=since)
    got = [f for f in client.frames if f["type"] == "event"]
    assert [] == client.quiet(0.3)
    client.close()
    return [{k: v for k, v in f.items() if k != "sub"} for f in got]


def polled(relay: RelayProcess, since: str, table: str = "docs") -> list[dict[str, Any]]:
    """Every event after `since`, by a long-poll."""
    status, body = poll(relay, "alice", table=table, since=since, wait=5)
    assert 200 == status, body
    events: list[dict[str, Any]] = body["events"]
    return events


def assert_no_value_logged(relay: RelayProcess) -> None:
    """The relay's log names poison events but never quotes their values."""
    text = "\n".join(json.dumps(line) for line in relay.lines)
    assert "0" * 400 not in text
    assert "[" * 50 not in text


def test_poison_values_flow_live_by_replay_by_poll_and_after_a_restart(relay_db: str) -> None:
    """numeric 1e5000, jsonb nested 2000 deep, a fractional overflow and a 5001-digit integer:
    the relay stays up, each arrives exactly as documented (exact digits as strings, or
    truncated with its key), later events flow, other users are served on time, and replay
    and long-poll across the positions give the same frames, before and after a restart."""
    setup_docs(relay_db)
    expected = expected_events()
    with relay_process(relay_db) as relay:
        alice, bob = connect(relay, "alice"), connect(relay, "bob")
        since = alice.subscribe("s", "docs")["cursor"]
        alice.subscribe("f", "docs", filter={"budget": 1, "owner": "alice"})
        bob.subscribe("b", "docs")
        live_poll: list[tuple[int, dict[str, Any]]] = []
        waiting = threading.Thread(
            target=lambda: live_poll.append(poll(relay, "alice", table="docs", since=since))
        )
        waiting.start()
        time.sleep(0.3)  # the long-poll is waiting live when the poison arrives

        write_poison_and_repairs(relay_db)
        started = time.monotonic()
        write(relay_db, "UPDATE docs SET budget = 2 WHERE id = 2")
        assert [{"id": 2, "owner": "bob", "budget": 2, "doc": {}}] == [
            e["row"] for e in bob.events(1, timeout=5)
        ]
        bob_latency = time.monotonic() - started

        # "f" filters on budget 1: budget=1e5000 moves the row out of it, budget=1 back in.
        frames = alice.events(len(expected) + 8, timeout=10)
        by_sub = {sub: [f for f in frames if f["sub"] == sub] for sub in ("s", "f")}
        assert expected == [strip(f) for f in by_sub["s"]]
        base = {"type": "event", "schema": "public", "table": "docs", "pk": {"id": 1},
                "changed": []}  # fmt: skip
        assert [
            {**base, "op": "DELETE", "row": None, "old": {"id": 1}, "moved": "out"},
            {**base, "op": "INSERT", "row": expected[1]["row"], "moved": "in"},
            *[strip(f) for f in by_sub["s"][2:]],
        ] == [strip(f) for f in by_sub["f"]]
        assert [] == alice.quiet(0.3)
        live = [{k: v for k, v in f.items() if k != "sub"} for f in by_sub["s"]]

        waiting.join(10)
        assert 200 == live_poll[0][0]
        assert live[:1] == live_poll[0][1]["events"][:1]  # what had arrived when it answered
        assert live == replayed(relay, since)
        assert live == polled(relay, since)
        assert bob_latency < 5.0  # not stuck behind the poison (it took ~0.1 s)

        assert relay.process is not None and relay.process.poll() is None  # alive
        assert 1.0 == relay.metric("relay_events_unencodable_total", 'reason="too_deep"')
        truncated = relay.wait_log("event_truncated")
        assert {"schema": "public", "table": "docs", "reason": "too_deep"} == {
            k: truncated[k] for k in ("schema", "table", "reason")
        }
        assert live[2]["cursor"].endswith(f".{truncated['pos']}")
        assert_no_value_logged(relay)
        assert 0 == relay.stop()

    with relay_process(relay_db) as again:
        assert live == replayed(again, since)
        assert live == polled(again, since)
        assert_no_value_logged(again)


def test_a_primary_key_too_deep_to_carry_arrives_as_its_json_text(relay_db: str) -> None:
    """A jsonb key nested 500 deep (Postgres indexes it) is carried as a string of its text in a
    truncated event, live and by long-poll; the next event flows."""
    write(
        relay_db,
        "CREATE TABLE keyed (k jsonb PRIMARY KEY, owner text NOT NULL)",
        "SELECT relay.track('keyed', owner_column => 'owner')",
    )
    deep = "[" * 500 + "]" * 500
    with relay_process(relay_db) as relay:
        alice = connect(relay, "alice")
        since = alice.subscribe("s", "keyed")["cursor"]
        write(
            relay_db,
            "INSERT INTO keyed VALUES ((repeat('[', 500) || repeat(']', 500))::jsonb, 'alice')",
            "INSERT INTO keyed VALUES ('[1]', 'alice')",
        )
        frames = [strip(f) for f in alice.events(2)]
        base = {"type": "event", "schema": "public", "table": "keyed", "op": "INSERT",
                "changed": []}  # fmt: skip
        assert [
            {**base, "pk": {"k": deep}, "row": None, "truncated": True},
            {**base, "pk": {"k": [1]}, "row": {"k": [1], "owner": "alice"}},
        ] == frames
        assert frames == [strip(e) for e in polled(relay, since, "keyed")]
