"""GET /v1/sse and POST /v1/sse/ticket end to end: a real `relay serve`, real PostgreSQL, and a
raw-socket client that parses the stream as EventSource does (tests/support/sse.py)."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import psycopg
import pytest

from tests.support.clients import Client, position
from tests.support.databases import write
from tests.support.processes import RelayProcess, relay_process
from tests.support.sse import SseStream, open_stream, subs_param
from tests.support.tokens import token
from tests.support.waiting import wait_until

pytestmark = pytest.mark.pg

TWO = subs_param({"id": "t", "table": "thumbnails"}, {"id": "g", "table": "generations"})


def thumbnail(dsn: str, user: str, title: str) -> None:
    write(
        dsn,
        "INSERT INTO thumbnails (user_id, project_id, title) VALUES (%s, 'p', %s)",
        params=(user, title),
    )


def generation(dsn: str, user: str, project: str) -> None:
    write(
        dsn,
        "INSERT INTO generations (user_id, project_id) VALUES (%s, %s)",
        params=(user, project),
    )


def names(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Each event as (subscription id, its title or project)."""
    return [(e["sub"], e["row"].get("title") or e["row"]["project_id"]) for e in events]


def opened(stream: SseStream, subs: int = 1) -> dict[str, Any]:
    """Reads the stream's start: retry, ready, subscribed per subscription, then the position
    (an id and no data) at their cursor; the last subscribed frame."""
    assert (200, "text/event-stream") == (stream.status, stream.headers["content-type"])
    assert stream.next().retry is not None
    stream.expect("ready")
    subscribed = [stream.expect("subscribed") for _ in range(subs)]
    assert [None] * subs == [b.id for b in stream.blocks[-subs:]]
    assert (None, subscribed[-1]["cursor"]) == (lambda b: (b.data, b.id))(stream.next())
    return subscribed[-1]


def ticket_for(relay: RelayProcess, user: str, **headers: str) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{relay.port}/v1/sse/ticket",
        method="POST",
        headers={"Authorization": f"Bearer {token(user)}", **headers},
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_a_stream_carries_the_websocket_frames_with_cursors_as_ids(
    relay: RelayProcess, relay_db: str
) -> None:
    """The same frames as a websocket with the same subscriptions, each event's id its cursor,
    control frames named, in log order across subscriptions."""
    stream = open_stream(relay, "alice", subs=TWO)
    assert {"content-type": "text/event-stream", "cache-control": "no-store",
            "connection": "close", "x-accel-buffering": "no"} == stream.headers  # fmt: skip
    subscribed = opened(stream, 2)
    assert stream.blocks[0].retry in range(1000, 4001)
    ready = stream.blocks[1].frame()
    assert [("ready", "ready"), ("subscribed", "t"), ("subscribed", "g")] == [
        (b.event, b.frame().get("id", b.frame()["type"])) for b in stream.blocks[1:4]
    ]
    assert (ready["user"], ready["cursor"]) == ("alice", subscribed["cursor"])
    websocket = Client(relay.url, "alice")
    websocket.ready()
    websocket.subscribe("t", "thumbnails")
    websocket.subscribe("g", "generations")

    thumbnail(relay_db, "alice", "one")
    generation(relay_db, "alice", "two")
    thumbnail(relay_db, "bob", "not mine")
    thumbnail(relay_db, "alice", "three")
    events = stream.events(3)
    assert [("t", "one"), ("g", "two"), ("t", "three")] == names(events)
    assert websocket.events(3) == events
    assert [e["cursor"] for e in events] == [b.id for b in stream.blocks[-3:]]
    assert {"message"} == {b.event for b in stream.blocks[-3:]}
    assert [] == stream.quiet(0.5)
    websocket.close()
    stream.close()


def test_last_event_id_resumes_exactly_after_a_drop(relay: RelayProcess, relay_db: str) -> None:
    """A stream dropped mid-way and opened again with Last-Event-ID gets exactly what followed
    that id, for every subscription, in log order: nothing lost, nothing repeated."""
    stream = open_stream(relay, "alice", subs=TWO)
    opened(stream, 2)
    for n in range(3):
        thumbnail(relay_db, "alice", f"t{n}")
        generation(relay_db, "alice", f"g{n}")
    seen = names(stream.events(3))
    stream.close()  # the drop: events 4 to 6 may be in flight, written to a dead socket
    for n in range(3, 5):
        generation(relay_db, "alice", f"g{n}")
        thumbnail(relay_db, "alice", f"t{n}")
    again = open_stream(relay, "alice", subs=TWO, headers={"Last-Event-ID": stream.last_id})
    assert 200 == again.status
    again.next()  # retry
    again.expect("ready")
    frames = again.frames(9)  # seven events (replayed, or live if routed late) and subscribed x2
    assert ["subscribed", "subscribed"] == [f["type"] for f in frames if f["type"] != "event"]
    assert [("t", "t0"), ("g", "g0"), ("t", "t1")] == seen
    assert [("g", "g1"), ("t", "t2"), ("g", "g2"), ("g", "g3"), ("t", "t3"), ("g", "g4"),
            ("t", "t4")] == names([f for f in frames if f["type"] == "event"])  # fmt: skip
    assert [] == again.quiet(0.5)
    again.close()


def test_a_cursor_past_retention_gets_the_reset_event_then_live_events(
    relay: RelayProcess, relay_db: str
) -> None:
    """A since behind the pruned horizon: a reset event per subscription (no id), subscribed
    with the head as id, then live events."""
    stream = open_stream(relay, "alice", table="thumbnails")
    opened(stream)
    thumbnail(relay_db, "alice", "old")
    cursor = stream.events(1)[0]["cursor"]
    thumbnail(relay_db, "alice", "older than a day too")
    stream.events(1)
    stream.close()
    write(relay_db, "UPDATE relay.log SET sequenced_at = now() - interval '3 days'",
          "SELECT relay.prune(interval '1 day')")  # fmt: skip
    again = open_stream(relay, "alice", subs=TWO, since=cursor)
    again.next()
    again.expect("ready")
    frames = again.frames(4)
    assert [("reset", "t", "cursor_expired"), ("subscribed", "t", None),
            ("reset", "g", "cursor_expired"), ("subscribed", "g", None)] == [
        (f["type"], f.get("sub", f.get("id")), f.get("reason")) for f in frames
    ]  # fmt: skip
    assert ("", 1) == (again.last_id, len({f["cursor"] for f in frames}))
    assert frames[0]["cursor"] == again.next().id  # the position, only after every reset
    thumbnail(relay_db, "alice", "new")
    assert [("t", "new")] == names(again.events(1))
    again.close()


def test_a_cursor_of_another_install_gets_epoch_changed(relay: RelayProcess) -> None:
    """A Last-Event-ID of another epoch: reset epoch_changed, then live."""
    foreign = {"Last-Event-ID": "0" * 32 + ".5"}
    stream = open_stream(relay, "alice", table="thumbnails", headers=foreign)
    stream.next()
    stream.expect("ready")
    assert ("0", "epoch_changed") == (lambda r: (r["sub"], r["reason"]))(stream.expect("reset"))
    stream.expect("subscribed")
    stream.close()


@pytest.mark.parametrize(
    ("params", "headers", "status", "body"),
    [
        ({"table": "thumbnails"}, {}, 401, {"error": "token refused", "reason": "malformed"}),
        ({"table": "nope"}, None, 400,
         {"error": "table 'nope' is not tracked", "code": "unknown_table", "id": "0"}),
        ({"table": "thumbnails", "since": "x"}, None, 400, None),
        ({"subs": '[{"table":"thumbnails","coalesce_ms":10}]'}, None, 400,
         {"error": "coalesce_ms is not taken per subscription on a stream", "code": "bad_message"}),
        ({"ticket": "made-up"}, {}, 401, {"error": "ticket refused", "reason": "unknown_ticket"}),
    ],
)  # fmt: skip
def test_requests_that_cannot_stream_are_refused_whole(
    relay: RelayProcess,
    params: dict[str, Any],
    headers: dict[str, str] | None,
    status: int,
    body: dict[str, str] | None,
) -> None:
    """A refusal is a whole JSON response EventSource does not retry: 401 or 400, with why."""
    stream = open_stream(relay, None if headers is not None else "alice", headers=headers, **params)
    assert (status, "application/json", "no-store") == (
        stream.status, stream.headers["content-type"], stream.headers["cache-control"],
    )  # fmt: skip
    if body is not None:
        assert body == stream.json()
    else:
        assert "bad_cursor" == stream.json()["code"]
    stream.close()


def test_streams_count_against_max_connections_and_by_transport(relay_db: str) -> None:
    """A stream takes a RELAY_MAX_CONNECTIONS slot; relay_connections counts it as sse."""
    with relay_process(relay_db, {"RELAY_MAX_CONNECTIONS": "2"}) as relay:
        first = open_stream(relay, "alice", table="thumbnails")
        opened(first)
        websocket = Client(relay.url, "bob")
        websocket.ready()
        refused = open_stream(relay, "carol", table="thumbnails")
        assert (503, b"too many connections\n") == (refused.status, refused.body)
        sse = 'transport="sse"'
        assert (1.0, 1.0, 1.0) == (
            relay.metric("relay_connections", sse),
            relay.metric("relay_connections_total", sse),
            relay.metric("relay_connections", 'transport="websocket"'),
        )
        first.close()
        wait_until(lambda: relay.metric("relay_connections", sse) == 0.0, 10, "the stream ended")
        websocket.close()


def test_a_ticket_opens_a_stream_from_its_address_and_a_newer_stream_replaces_the_older(
    relay_db: str,
) -> None:
    """POST a bearer token for a ticket; the ticket opens a stream from the same address only;
    a second stream with it replaces the first, which gets an error event and ends."""
    env = {"RELAY_TRUSTED_PROXIES": "127.0.0.1"}  # X-Forwarded-For names the client address
    with relay_process(relay_db, env) as relay:
        status, body = ticket_for(relay, "alice", **{"X-Forwarded-For": "192.0.2.1"})
        assert (200, {"ticket", "expires_in"}, 30) == (status, set(body), body["expires_in"])
        ticket = body["ticket"]
        assert 43 == len(ticket)
        elsewhere = open_stream(relay, None, table="thumbnails", ticket=ticket,
                                headers={"X-Forwarded-For": "192.0.2.2"})  # fmt: skip
        assert 401 == elsewhere.status
        here = {"X-Forwarded-For": "192.0.2.1"}
        first = open_stream(relay, None, table="thumbnails", ticket=ticket, headers=here)
        opened(first)
        thumbnail(relay_db, "alice", "one")
        first.events(1)
        second = open_stream(relay, None, table="thumbnails", ticket=ticket,
                             headers={**here, "Last-Event-ID": first.last_id})  # fmt: skip
        second.next()
        second.expect("ready")
        second.expect("subscribed")
        ended = first.until_closed()
        assert [("error", "replaced")] == [(b.event, b.frame()["code"]) for b in ended if b.data]
        thumbnail(relay_db, "alice", "two")
        assert [("0", "two")] == names(second.events(1))
        assert (401, {"error": "token refused", "reason": "missing_sub"}) == ticket_for(relay, "")
        second.close()


def test_an_expiring_token_ends_the_stream_with_an_error_event(relay_db: str) -> None:
    """At the token's expiry the stream gets error token_expired and the relay closes it."""
    with relay_process(relay_db, {"RELAY_JWT_LEEWAY": "0s"}) as relay:
        stream = SseStream(relay.port, "/v1/sse?table=thumbnails",
                           {"Authorization": f"Bearer {token('alice', ttl=2)}"})  # fmt: skip
        opened(stream)
        ended = stream.until_closed(timeout=10)
        assert [("error", "token_expired")] == [
            (b.event, b.frame()["code"]) for b in ended if b.data
        ]


def test_an_idle_stream_gets_heartbeats_carrying_its_position(relay_db: str) -> None:
    """Comments at RELAY_SSE_HEARTBEAT; with every subscription live, the id is the head, so a
    quiet stream's resume point keeps up with the log."""
    with relay_process(relay_db, {"RELAY_SSE_HEARTBEAT": "1s"}) as relay:
        stream = open_stream(relay, "alice", table="thumbnails")
        start = position(opened(stream)["cursor"])
        generation(relay_db, "alice", "not subscribed")  # moves the head, nothing sent
        deadline = time.monotonic() + 10
        while position(stream.last_id) <= start:
            assert time.monotonic() < deadline, "no heartbeat carried the new head"
            block = stream.next()
            assert (block.comments, block.data) == ([""], None), block
        stream.close()


def test_bytes_after_the_request_end_the_stream(relay: RelayProcess) -> None:
    """A stream's client has nothing more to say: anything it sends aborts the socket."""
    stream = open_stream(relay, "alice", table="thumbnails")
    opened(stream)
    stream.sock.sendall(b"GET /v1/sse HTTP/1.1\r\n\r\n")
    stream.until_closed(timeout=5)
    wait_until(
        lambda: relay.metric("relay_connections", 'transport="sse"') == 0.0,
        10,
        "stream counted out",
    )


def test_sigterm_ends_streams_with_going_away(relay_db: str) -> None:
    """SIGTERM: each stream gets error going_away and ends; the relay exits well within 10 s."""
    relay = RelayProcess(relay_db).start()
    stream = open_stream(relay, "alice", table="thumbnails")
    opened(stream)
    started = time.monotonic()
    assert 0 == relay.stop()
    assert time.monotonic() - started < 10
    assert [("error", "going_away")] == [
        (b.event, b.frame()["code"]) for b in stream.until_closed(5) if b.data
    ]


def test_a_stream_that_is_not_read_is_cut_while_a_reading_one_gets_everything(
    relay_db: str,
) -> None:
    """The websocket's slow-consumer policy: the stalled stream is reset or aborted, the reading
    one beside it gets every event in order."""
    env = {
        "RELAY_QUEUE_MAX_MESSAGES": "200",
        "RELAY_QUEUE_MAX_BYTES": "4MiB",
        "RELAY_SLOW_CLIENT_TIMEOUT": "2s",
    }
    with relay_process(relay_db, env) as relay:
        stalled = open_stream(relay, "alice", table="generations", rcvbuf=4096)
        healthy = open_stream(relay, "alice", table="generations")
        opened(healthy)
        big = "x" * 60_000  # 24 MB in all: more than socket buffers and the queue hold
        received: list[int] = []

        def read_healthy() -> None:
            events = healthy.events(400, timeout=60)
            received.extend(int(e["row"]["project_id"]) for e in events)

        reader = threading.Thread(target=read_healthy)
        reader.start()
        with psycopg.connect(relay_db, autocommit=True) as conn:
            for i in range(400):
                conn.execute(
                    "INSERT INTO generations (user_id, project_id, url) VALUES ('alice', %s, %s)",
                    (str(i), big),
                )
        reader.join(90)
        assert list(range(400)) == received
        wait_until(
            lambda: relay.metric("relay_drops_total", 'reason="slow_client"') >= 1,
            15,
            "the stalled stream aborted",
        )
        assert 1.0 == relay.metric("relay_drops_total", 'reason="slow_client"')
        assert relay.metric("relay_resets_total", 'reason="overflow"') >= 1
        assert 1.0 == relay.metric("relay_connections", 'transport="sse"')
        stalled.close()
        healthy.close()


def test_the_ports_checks_apply_to_streams_and_tickets(relay_db: str) -> None:
    """Origin allow-list (403), per-address open connections (429), the method (405) and a
    browser's CORS preflight, as for the long-poll."""
    env = {"RELAY_ALLOWED_ORIGINS": "https://app.example", "RELAY_MAX_CONNECTIONS_PER_IP": "1"}
    with relay_process(relay_db, env) as relay:
        app = {"Origin": "https://app.example"}
        stranger = open_stream(relay, "alice", table="thumbnails",
                               headers={"Origin": "https://evil.example"})  # fmt: skip
        assert (403, b"origin not allowed\n") == (stranger.status, stranger.body)
        stream = open_stream(relay, "alice", table="thumbnails", headers=app)
        opened(stream)
        assert "https://app.example" == stream.headers["access-control-allow-origin"]
        second = open_stream(relay, "alice", table="thumbnails", headers=app)
        assert 429 == second.status  # the stream holds the address's one slot
        stream.close()
        wait_until(
            lambda: open_stream(relay, "alice", table="thumbnails", headers=app).status == 200,
            10,
            "the slot given back",
        )
        post = SseStream(relay.port, "/v1/sse", {"Authorization": f"Bearer {token('alice')}"},
                         method="POST")  # fmt: skip
        assert (405, "GET") == (post.status, post.headers["allow"])
        preflight = SseStream(relay.port, "/v1/sse/ticket", {**app, "Content-Length": "0"},
                              method="OPTIONS")  # fmt: skip
        assert (204, "POST, OPTIONS", "Authorization") == (
            preflight.status,
            preflight.headers["access-control-allow-methods"],
            preflight.headers["access-control-allow-headers"],
        )
        preflight = SseStream(relay.port, "/v1/sse", app, method="OPTIONS")
        assert "Authorization, Last-Event-ID" == preflight.headers["access-control-allow-headers"]


def test_last_event_id_resumes_on_another_replica_where_a_ticket_is_unknown(relay_db: str) -> None:
    """Ids are cursors, valid on every replica: a stream resumes on another relay process with
    Last-Event-ID. A ticket is this process's only: the other refuses it (401)."""
    with relay_process(relay_db) as first, relay_process(relay_db) as second:
        stream = open_stream(first, "alice", table="thumbnails")
        opened(stream)
        thumbnail(relay_db, "alice", "one")
        stream.events(1)
        stream.close()
        thumbnail(relay_db, "alice", "two")
        thumbnail(relay_db, "alice", "three")
        again = open_stream(second, "alice", table="thumbnails",
                            headers={"Last-Event-ID": stream.last_id})  # fmt: skip
        frames = again.frames(4)  # ready, the replay, subscribed
        assert ["two", "three"] == [f["row"]["title"] for f in frames if f["type"] == "event"]
        _, body = ticket_for(first, "alice")
        elsewhere = open_stream(second, None, table="thumbnails", ticket=body["ticket"])
        assert (401, "unknown_ticket") == (elsewhere.status, elsewhere.json()["reason"])
        again.close()
