"""Rows that move, end to end: real Postgres, a real `relay serve`, real websocket clients.

Each scenario runs twice: live (the clients are subscribed when the rows move) and resumed (the
clients subscribe, note their cursors and leave; the rows move; they come back with ``since``).
Both must give the same frames, exactly: a filter move-out and entry, an audience hand-over in
both directions, an audience function whose answer changes. No frame a user receives may hold a
value of a row version that user was not in the audience of.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.support.clients import Client, poll
from tests.support.databases import write
from tests.support.processes import RelayProcess, relay_process

pytestmark = pytest.mark.pg

TEAMS = """
CREATE TABLE teams (id int PRIMARY KEY, members text[] NOT NULL);
INSERT INTO teams VALUES (1, ARRAY['alice', 'carol']), (2, ARRAY['bob', 'carol']);
CREATE TABLE docs (id int PRIMARY KEY, team int NOT NULL, title text NOT NULL);
CREATE FUNCTION doc_readers(d docs) RETURNS text[] LANGUAGE sql STABLE
    AS 'SELECT members FROM public.teams WHERE id = d.team';
SELECT relay.track('docs', audience => 'doc_readers');
"""

Subs = dict[str, dict[str, dict[str, Any]]]  # user -> subscription id -> subscribe options


@pytest.fixture
def relay(relay_db: str) -> Iterator[RelayProcess]:
    """`relay serve` on the example schema plus docs, readable by the members of their team."""
    write(relay_db, TEAMS)
    with relay_process(relay_db) as process:
        yield process


def strip(event: dict[str, Any]) -> dict[str, Any]:
    """An event frame without the fields that vary from run to run."""
    return {k: v for k, v in event.items() if k not in {"cursor", "ts"}}


def settled(relay: RelayProcess) -> None:
    """Returns once the relay has routed every row written so far: a probe user's row written
    now reaches the probe (the relay routes in log order)."""
    probe = Client(relay.url, "probe")
    probe.ready()
    probe.subscribe("p", "generations")
    write(relay.dsn, "INSERT INTO generations (user_id, project_id) VALUES ('probe', 'p')")
    assert ["probe"] == [e["row"]["user_id"] for e in probe.events(1)]
    probe.close()


def observe(
    relay: RelayProcess, subs: Subs, change: Callable[[], None], *, resumed: bool, expect: int
) -> dict[str, list[dict[str, Any]]]:
    """Each user's event frames (by subscription id, in order) caused by ``change``: received
    live, or replayed on a resume after it; ``expect`` events in all, then quiet."""
    settled(relay)  # the rows written before are routed: subscriptions start after them
    clients = {user: Client(relay.url, user) for user in subs}
    cursors: dict[str, dict[str, str]] = {}
    for user, client in clients.items():
        client.ready()
        cursors[user] = {
            sid: client.subscribe(sid, **opts)["cursor"] for sid, opts in subs[user].items()
        }
    if resumed:
        for client in clients.values():
            client.close()
    change()
    got: dict[str, list[dict[str, Any]]] = {user: [] for user in subs}
    if resumed:
        settled(relay)  # every replay covers the change
        for user in subs:
            client = clients[user] = Client(relay.url, user)
            client.ready()
            for sid, opts in subs[user].items():
                before = len(client.frames)
                client.subscribe(sid, since=cursors[user][sid], **opts)
                got[user] += [f for f in client.frames[before:] if f["type"] == "event"]
    else:
        deadline = time.monotonic() + 10.0
        while sum(map(len, got.values())) < expect and time.monotonic() < deadline:
            for user, client in clients.items():
                with contextlib.suppress(TimeoutError):
                    if (frame := client.recv(0.05))["type"] == "event":
                        got[user].append(frame)
    assert expect == sum(len(events) for events in got.values()), got
    for user, client in clients.items():
        assert [] == client.quiet(0.3), user
        client.close()
    return {user: [strip(e) for e in events] for user, events in got.items()}


def frames_text(events: list[dict[str, Any]]) -> str:
    return json.dumps(events)


@pytest.mark.parametrize("resumed", [False, True], ids=["live", "resumed"])
def test_filter_move_out_and_entry(relay: RelayProcess, relay_db: str, resumed: bool) -> None:
    """A thumbnail moved from project p1 to p2 leaves the p1 subscription (a DELETE, moved out,
    its key only) and enters the p2 one (an INSERT, moved in, the new values)."""
    write(
        relay_db,
        "INSERT INTO thumbnails (user_id, project_id, title) VALUES ('alice', 'p1', 'cat')",
    )
    subs: Subs = {"alice": {
        "p1": {"table": "thumbnails", "filter": {"project_id": "p1"}},
        "p2": {"table": "thumbnails", "filter": {"project_id": "p2"}},
    }}  # fmt: skip
    got = observe(relay, subs, lambda: write(relay_db, "UPDATE thumbnails SET project_id = 'p2', title = 'dog'"),
                  resumed=resumed, expect=2)  # fmt: skip
    base = {"type": "event", "schema": "public", "table": "thumbnails", "changed": []}
    assert {"alice": [
        {**base, "sub": "p1", "op": "DELETE", "pk": {"id": 1}, "row": None, "old": {"id": 1},
         "moved": "out"},
        {**base, "sub": "p2", "op": "INSERT", "pk": {"id": 1}, "moved": "in",
         "row": {"id": 1, "user_id": "alice", "project_id": "p2", "title": "dog",
                 "share_click_count": 0}},
    ]} == got  # fmt: skip


@pytest.mark.parametrize("resumed", [False, True], ids=["live", "resumed"])
def test_audience_hand_over_both_ways(relay: RelayProcess, relay_db: str, resumed: bool) -> None:
    """alice hands her thumbnail to bob, who hands it back: the one leaving gets a move-out with
    the key only, the one entering an entry; neither ever sees the other's version."""
    write(
        relay_db, "INSERT INTO thumbnails (user_id, project_id, title) VALUES ('alice', 'p1', 'a1')"
    )
    subs: Subs = {user: {"t": {"table": "thumbnails"}} for user in ("alice", "bob")}

    def hand_over_and_back() -> None:
        write(relay_db, "UPDATE thumbnails SET user_id = 'bob', title = 'bob-secret'",
              "UPDATE thumbnails SET share_click_count = 7",
              "UPDATE thumbnails SET user_id = 'alice', title = 'a2'")  # fmt: skip

    got = observe(relay, subs, hand_over_and_back, resumed=resumed, expect=5)
    base = {"type": "event", "sub": "t", "schema": "public", "table": "thumbnails"}
    out: dict[str, Any] = {**base, "op": "DELETE", "pk": {"id": 1}, "row": None, "changed": [], "old": {"id": 1},
           "moved": "out"}  # fmt: skip
    row = {"id": 1, "project_id": "p1", "share_click_count": 7}
    assert {
        "alice": [
            out,
            {**base, "op": "INSERT", "pk": {"id": 1}, "changed": [], "moved": "in",
             "row": {**row, "user_id": "alice", "title": "a2"}},
        ],
        "bob": [
            {**base, "op": "INSERT", "pk": {"id": 1}, "changed": [], "moved": "in",
             "row": {**row, "share_click_count": 0, "user_id": "bob", "title": "bob-secret"}},
            {**base, "op": "UPDATE", "pk": {"id": 1}, "old": {"id": 1},
             "changed": ["share_click_count"], "row": {**row, "user_id": "bob", "title": "bob-secret"}},
            out,
        ],
    } == got  # fmt: skip
    assert "bob-secret" not in frames_text(got["alice"]) and "a2" not in frames_text(got["bob"])


@pytest.mark.parametrize("resumed", [False, True], ids=["live", "resumed"])
def test_audience_function_answer_that_changes(
    relay: RelayProcess, relay_db: str, resumed: bool
) -> None:
    """A doc moved from team 1 (alice, carol) to team 2 (bob, carol): alice gets a move-out,
    bob an entry, carol the UPDATE; an UPDATE of a team's doc reaches only that team."""
    write(relay_db, "INSERT INTO docs VALUES (1, 1, 'plan')")
    subs: Subs = {user: {"d": {"table": "docs"}} for user in ("alice", "bob", "carol")}
    got = observe(relay, subs, lambda: write(relay_db, "UPDATE docs SET team = 2, title = 'moved'",
                                             "UPDATE docs SET title = 'team 2 only'"),
                  resumed=resumed, expect=5)  # fmt: skip
    base = {"type": "event", "sub": "d", "schema": "public", "table": "docs"}
    moved = {"id": 1, "team": 2, "title": "moved"}
    later = {**base, "op": "UPDATE", "pk": {"id": 1}, "old": {"id": 1}, "changed": ["title"],
             "row": {**moved, "title": "team 2 only"}}  # fmt: skip
    assert {
        "alice": [{**base, "op": "DELETE", "pk": {"id": 1}, "row": None, "changed": [],
                   "old": {"id": 1}, "moved": "out"}],
        "bob": [{**base, "op": "INSERT", "pk": {"id": 1}, "row": moved, "changed": [],
                 "moved": "in"}, later],
        "carol": [{**base, "op": "UPDATE", "pk": {"id": 1}, "old": {"id": 1},
                   "changed": ["team", "title"], "row": moved}, later],
    } == got  # fmt: skip
    assert "moved" not in json.dumps([e.get("row") for e in got["alice"]])


def test_long_poll_resumes_with_the_same_move_out(relay: RelayProcess, relay_db: str) -> None:
    """A long-poll from a cursor taken before the hand-over answers with alice's move-out."""
    status, body = poll(relay, "alice", table="thumbnails", wait=0)
    assert 200 == status
    write(
        relay_db, "INSERT INTO thumbnails (user_id, project_id, title) VALUES ('alice', 'p1', 'x')"
    )
    status, body = poll(relay, "alice", table="thumbnails", since=body["cursor"], wait=5)
    assert (200, ["INSERT"]) == (status, [e["op"] for e in body["events"]])
    write(relay_db, "UPDATE thumbnails SET user_id = 'bob', title = 'bob-secret'")
    status, body = poll(relay, "alice", table="thumbnails", since=body["cursor"], wait=5)
    assert (200, [
        {"type": "event", "schema": "public", "table": "thumbnails", "op": "DELETE",
         "pk": {"id": 1}, "row": None, "changed": [], "old": {"id": 1}, "moved": "out"},
    ]) == (status, [strip(e) for e in body["events"]])  # fmt: skip
