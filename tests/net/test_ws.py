"""The relay end to end: real Postgres, a real `relay serve` process, real websocket clients."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import jwt
import psycopg
import pytest
from websockets.exceptions import ConnectionClosed

from relay.demo.pgserver import PgServer
from tests.support.clients import Client, close_of, position
from tests.support.databases import install_example, write
from tests.support.processes import RelayProcess, relay_process
from tests.support.tokens import SECRET, token

pytestmark = pytest.mark.pg


def add_thumbnail(dsn: str, user: str, project: str = "p1", title: str = "t") -> None:
    write(
        dsn,
        "INSERT INTO thumbnails (user_id, project_id, title) VALUES (%s, %s, %s)",
        params=(user, project, title),
    )


def connect(relay: RelayProcess, user: str, **kwargs: Any) -> Client:
    client = Client(relay.url, user, **kwargs)
    client.ready()
    return client


def strip(event: dict[str, Any]) -> dict[str, Any]:
    """An event frame without the fields that vary from run to run."""
    return {k: v for k, v in event.items() if k not in {"cursor", "ts"}}


def test_events_reach_only_their_owner(relay: RelayProcess, relay_db: str) -> None:
    """Each user receives exactly their own rows' events; another user's socket stays silent."""
    alice, bob = connect(relay, "alice"), connect(relay, "bob")
    alice.subscribe("a", "thumbnails")
    bob.subscribe("b", "thumbnails")
    add_thumbnail(relay_db, "alice", title="mine")
    write(relay_db, "SELECT increment_thumbnail_share_click_count(1)")
    events = alice.events(2)
    row = {"id": 1, "user_id": "alice", "project_id": "p1", "title": "mine"}
    assert [
        {"type": "event", "sub": "a", "schema": "public", "table": "thumbnails", "op": "INSERT",
         "pk": {"id": 1}, "row": {**row, "share_click_count": 0}, "changed": []},
        {"type": "event", "sub": "a", "schema": "public", "table": "thumbnails", "op": "UPDATE",
         "pk": {"id": 1}, "old": {"id": 1}, "row": {**row, "share_click_count": 1},
         "changed": ["share_click_count"]},
    ] == [strip(e) for e in events]  # fmt: skip
    assert [] == bob.quiet(1.0)


def test_shared_audience_reaches_every_member(relay: RelayProcess, relay_db: str) -> None:
    """A row whose audience function names two users reaches both, and nobody else."""
    write(
        relay_db,
        "CREATE TABLE projects (id int PRIMARY KEY, name text, members text[])",
        "CREATE FUNCTION project_members(p projects) RETURNS text[] LANGUAGE sql AS 'SELECT p.members'",
        "SELECT relay.track('projects', audience => 'project_members')",
    )
    relay.wait_log("listening")
    time.sleep(1.5)  # the relay refreshes its table catalog on the heartbeat interval
    clients = {name: connect(relay, name) for name in ("u1", "u2", "u3")}
    for name, client in clients.items():
        client.subscribe(name, "projects")
    write(relay_db, "INSERT INTO projects VALUES (1, 'x', ARRAY['u1', 'u2'])")
    assert ["u1"] == [e["sub"] for e in clients["u1"].events(1)]
    assert ["u2"] == [e["sub"] for e in clients["u2"].events(1)]
    assert [] == clients["u3"].quiet(1.0)


def test_filters_and_ops_select_events(relay: RelayProcess, relay_db: str) -> None:
    """A filter on a column and an ops list deliver only matching events."""
    client = connect(relay, "alice")
    client.subscribe("p2-updates", "thumbnails", filter={"project_id": "p2"}, ops=["UPDATE"])
    client.subscribe(
        "in", "thumbnails", filter={"project_id": {"in": ["p1", "p3"]}}, ops=["INSERT"]
    )
    add_thumbnail(relay_db, "alice", "p1")
    add_thumbnail(relay_db, "alice", "p2")
    add_thumbnail(relay_db, "alice", "p3")
    write(relay_db, "UPDATE thumbnails SET title = 'x'")
    got = sorted((e["sub"], e["op"], e["row"]["project_id"]) for e in client.events(3))
    assert [
        ("in", "INSERT", "p1"),
        ("in", "INSERT", "p3"),
        ("p2-updates", "UPDATE", "p2"),
    ] == got
    assert [] == client.quiet(0.5)


def test_comparison_operators_select_live_and_replayed_events(
    relay: RelayProcess, relay_db: str
) -> None:
    """gt, lte, neq and not select the same events live and by replay (the replay's SQL reads
    them unfiltered; the match is exact)."""
    flt = {"id": {"gt": 1, "lte": 4, "neq": 3}, "project_id": {"not": {"in": ["p9"]}}}
    client = connect(relay, "alice")
    client.subscribe("live", "thumbnails", filter=flt, ops=["INSERT"])
    start = client.subscribe("all", "thumbnails", ops=["INSERT"])["cursor"]
    for n in range(1, 7):
        add_thumbnail(relay_db, "alice", "p9" if n == 4 else "p1", title=f"t{n}")
    got = client.events(7)
    assert ["t2"] == [e["row"]["title"] for e in got if e["sub"] == "live"]
    again = connect(relay, "alice")
    again.subscribe("replay", "thumbnails", filter=flt, ops=["INSERT"], since=start)
    assert ["t2"] == [e["row"]["title"] for e in again.frames if e["type"] == "event"]
    assert [] == again.quiet(0.5)


GALLERY = (
    "CREATE TABLE gallery (id int PRIMARY KEY, owner text NOT NULL, public boolean NOT NULL)",
    "CREATE FUNCTION gallery_audience(g gallery) RETURNS text[] LANGUAGE sql AS $$ SELECT CASE"
    " WHEN g.public THEN ARRAY[g.owner, 'role:anon', 'role:authenticated'] ELSE ARRAY[g.owner]"
    " END $$",
    "SELECT relay.track('gallery', audience => 'gallery_audience')",
)


def test_role_audiences_reach_anonymous_and_role_holders_live_and_by_replay(
    relay_db: str,
) -> None:
    """An anonymous token (role anon, no sub) gets exactly the rows naming role:anon, a token
    with role authenticated those naming it and its own, live and by replay; a sub posing as a
    role key is refused."""
    write(relay_db, *GALLERY)
    with relay_process(relay_db) as relay:
        anon = Client(relay.url)
        anon.send({"type": "auth", "token": jwt.encode(
            {"role": "anon", "exp": time.time() + 60}, SECRET, "HS256")})  # fmt: skip
        assert "" == anon.expect("ready")["user"]
        carol = Client(relay.url)
        carol.send({"type": "auth", "token": token("carol", role="authenticated")})
        carol.expect("ready")
        start = anon.subscribe("g", "gallery")["cursor"]
        carol.subscribe("g", "gallery")
        write(
            relay_db,
            "INSERT INTO gallery VALUES (1, 'dave', true), (2, 'dave', false), (3, 'carol', false)",
        )
        assert [1] == [e["pk"]["id"] for e in anon.events(1)]
        assert [1, 3] == sorted(e["pk"]["id"] for e in carol.events(2))
        replayed = Client(relay.url)
        replayed.send({"type": "auth", "token": jwt.encode(
            {"role": "anon", "exp": time.time() + 60}, SECRET, "HS256")})  # fmt: skip
        replayed.expect("ready")
        replayed.subscribe("g", "gallery", since=start)
        assert [1] == [e["pk"]["id"] for e in replayed.frames if e["type"] == "event"]
        assert [] == anon.quiet(0.5) + replayed.quiet(0.1)
        posing = Client(relay.url)
        posing.send({"type": "auth", "token": token("role:anon", role="anon")})
        with pytest.raises(ConnectionClosed) as closed:
            posing.recv()
        assert (4001, "reserved_sub") == close_of(closed.value)


def test_subscribe_then_write_never_misses_the_first_event(
    relay: RelayProcess, relay_db: str
) -> None:
    """Once `subscribed` arrives, a write committed right after is always delivered (20 rounds)."""
    client = connect(relay, "alice")
    for round_ in range(20):
        client.subscribe(f"s{round_}", "thumbnails", ops=["INSERT"])
        add_thumbnail(relay_db, "alice", title=f"r{round_}")
        assert [f"r{round_}"] == [e["row"]["title"] for e in client.events(1)]
        client.send({"type": "unsubscribe", "id": f"s{round_}"})
        assert {"type": "unsubscribed", "id": f"s{round_}"} == client.expect("unsubscribed")


def test_resume_after_reconnect_replays_exactly_what_was_missed(
    relay: RelayProcess, relay_db: str
) -> None:
    """A client that reconnects with its last cursor gets the missed events once, then live ones."""
    client = connect(relay, "alice")
    client.subscribe("s", "thumbnails")
    add_thumbnail(relay_db, "alice", title="before")
    cursor = client.events(1)[0]["cursor"]
    client.close()
    for title in ("missed-1", "missed-2"):
        add_thumbnail(relay_db, "alice", title=title)
    add_thumbnail(relay_db, "bob", title="not-alice")

    again = connect(relay, "alice")
    subscribed = again.subscribe("s", "thumbnails", since=cursor)
    replayed = [f for f in again.frames if f["type"] == "event"]
    assert ["missed-1", "missed-2"] == [e["row"]["title"] for e in replayed]
    # Live continues after the subscribed cursor, which is at or past the last replayed event.
    assert position(replayed[-1]["cursor"]) <= position(subscribed["cursor"])
    add_thumbnail(relay_db, "alice", title="live")
    assert ["live"] == [e["row"]["title"] for e in again.events(1)]
    assert [] == again.quiet(0.5)


def test_resume_across_a_relay_restart(relay_db: str) -> None:
    """Cursors outlive the process: a new relay replays what was committed while none ran."""
    with relay_process(relay_db) as first:
        client = connect(first, "alice")
        client.subscribe("s", "generations")
        write(relay_db, "INSERT INTO generations (user_id, project_id) VALUES ('alice', 'one')")
        cursor = client.events(1)[0]["cursor"]
        assert 0 == first.stop()
    write(relay_db, "INSERT INTO generations (user_id, project_id) VALUES ('alice', 'two')")
    with relay_process(relay_db) as second:
        client = connect(second, "alice")
        client.subscribe("s", "generations", since=cursor)
        # "two" waited in the inbox while no relay ran: it comes by replay or, if the new
        # sequencer moves it after the subscription went live, just after `subscribed`.
        replayed = [f for f in client.frames if f["type"] == "event"]
        got = replayed + client.events(1 - len(replayed))
        assert ["two"] == [e["row"]["project_id"] for e in got]
        assert [] == client.quiet(0.5)


def test_cursor_older_than_retention_gets_an_explicit_reset(
    relay: RelayProcess, relay_db: str
) -> None:
    """A cursor behind the pruned horizon is answered with reset cursor_expired, then live events."""
    client = connect(relay, "alice")
    client.subscribe("s", "thumbnails")
    add_thumbnail(relay_db, "alice")
    cursor = client.events(1)[0]["cursor"]
    add_thumbnail(relay_db, "alice")
    client.events(1)
    write(relay_db, "UPDATE relay.log SET sequenced_at = now() - interval '3 days'",
          "SELECT relay.prune(interval '1 day')")  # fmt: skip
    again = connect(relay, "alice")
    again.send({"type": "subscribe", "id": "s", "table": "thumbnails", "since": cursor})
    reset = again.expect("reset")
    assert ("s", "cursor_expired") == (reset["sub"], reset["reason"])
    assert reset["cursor"] == again.expect("subscribed")["cursor"]
    add_thumbnail(relay_db, "alice", title="after")
    assert ["after"] == [e["row"]["title"] for e in again.events(1)]


def test_cursor_of_another_install_gets_epoch_changed(relay: RelayProcess, relay_db: str) -> None:
    """A well-formed cursor from another epoch is answered with reset epoch_changed."""
    client = connect(relay, "alice")
    foreign = "0" * 32 + ".5"
    client.send({"type": "subscribe", "id": "s", "table": "thumbnails", "since": foreign})
    assert ("reset", "epoch_changed") == (lambda f: (f["type"], f["reason"]))(client.recv())
    client.expect("subscribed")


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("not json", "bad_message"),
        ("[1, 2]", "bad_message"),
        (json.dumps({"type": "nope"}), "bad_message"),
        (json.dumps({"type": "subscribe", "id": "x", "table": "nope"}), "unknown_table"),
        (json.dumps({"type": "subscribe", "id": "x", "table": "log", "schema": "relay"}), "forbidden"),
        (json.dumps({"type": "subscribe", "id": "x", "table": "thumbnails", "ops": ["TRUNCATE"]}), "bad_message"),
        (json.dumps({"type": "subscribe", "id": "x", "table": "thumbnails", "filter": {"a": {"in": list(range(101))}}}), "bad_message"),
        (json.dumps({"type": "subscribe", "id": "x", "table": "thumbnails", "since": "garbage"}), "bad_cursor"),
        ("[" * 100_00 + "]" * 100_00, "bad_message"),
        (json.dumps({"type": "unsubscribe", "id": "never"}), "bad_message"),
    ],
)  # fmt: skip
def test_bad_frames_get_errors_and_the_connection_stays_open(
    relay: RelayProcess, frame: str, code: str
) -> None:
    """Each malformed request is answered with its error code; the connection keeps working."""
    client = connect(relay, "alice")
    client.send(frame)
    assert code == client.expect("error")["code"]
    client.send({"type": "ping"})
    assert {"type": "pong"} == client.expect("pong")


def test_binary_and_oversized_frames(relay: RelayProcess) -> None:
    """A binary frame gets bad_message; a frame over the size limit closes with 1009."""
    client = connect(relay, "alice")
    client.send(b"\x00\x01")
    assert "bad_message" == client.expect("error")["code"]
    client.send("x" * 70_000)
    with pytest.raises(ConnectionClosed) as closed:
        client.recv(5)
    assert 1009 == close_of(closed.value)[0]
    other = connect(relay, "bob")  # and the process keeps serving
    other.send({"type": "ping"})
    other.expect("pong")


def test_too_many_subscriptions(relay_db: str) -> None:
    """Past the per-connection limit, subscribe is refused with too_many_subscriptions."""
    with relay_process(relay_db, {"RELAY_MAX_SUBSCRIPTIONS": "3"}) as relay:
        client = connect(relay, "alice")
        for i in range(3):
            client.subscribe(f"s{i}", "thumbnails")
        client.send({"type": "subscribe", "id": "s3", "table": "thumbnails"})
        assert ("too_many_subscriptions", "s3") == (lambda f: (f["code"], f["id"]))(
            client.expect("error")
        )


def forged_tokens() -> dict[str, tuple[str, str]]:
    """name -> (token, expected close reason)."""
    now = time.time()
    import base64

    def b64(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return {
        "wrong_key": (token("alice", secret="another-secret-of-sufficient-length-000"), "bad_signature"),
        "alg_none": (b64({"alg": "none", "typ": "JWT"}) + "." + b64({"sub": "alice", "exp": now + 60}) + ".", "bad_algorithm"),
        "expired": (token("alice", ttl=-60), "expired"),
        "not_yet_valid": (jwt.encode({"sub": "alice", "exp": now + 600, "nbf": now + 300}, SECRET, "HS256"), "not_yet_valid"),
        "missing_sub": (jwt.encode({"exp": now + 600}, SECRET, "HS256"), "missing_sub"),
        "missing_exp": (jwt.encode({"sub": "alice"}, SECRET, "HS256"), "missing_exp"),
        "garbage": ("not.a.token", "malformed"),
    }  # fmt: skip


@pytest.mark.parametrize("name", list(forged_tokens()))
def test_forged_tokens_are_refused_with_4001_and_counted(relay: RelayProcess, name: str) -> None:
    """Each bad token closes the connection with 4001 and its reason, and is counted, never logged."""
    bad, reason = forged_tokens()[name]
    client = Client(relay.url)
    client.send({"type": "auth", "token": bad})
    with pytest.raises(ConnectionClosed) as closed:
        client.recv(5)
    assert (4001, reason) == close_of(closed.value)
    assert 1.0 == relay.metric("relay_auth_failures_total", f'reason="{reason}"')
    assert all(bad not in json.dumps(line) for line in relay.lines)


def test_auth_timeout_closes_with_4001(relay_db: str) -> None:
    """A client that never authenticates is closed with 4001 after the auth timeout."""
    with relay_process(relay_db, {"RELAY_AUTH_TIMEOUT": "500ms"}) as relay:
        client = Client(relay.url)
        with pytest.raises(ConnectionClosed) as closed:
            client.recv(5)
        assert (4001, "auth_timeout") == close_of(closed.value)


def test_token_refresh_extends_the_session_and_expiry_closes_it(relay: RelayProcess) -> None:
    """A refreshed token keeps the connection past the first token's expiry; the last one's expiry closes it."""
    client = Client(relay.url)
    client.send({"type": "auth", "token": token("alice", ttl=1)})
    client.ready()
    refreshed = token("alice", ttl=8)
    client.send({"type": "auth", "token": refreshed})
    ack = client.expect("auth_ok")
    assert {
        "type": "auth_ok",
        "user": "alice",
        "exp": int(jwt.decode(refreshed, options={"verify_signature": False})["exp"]),
    } == ack
    time.sleep(1 + 5 + 1)  # past the first token's expiry and the leeway
    client.send({"type": "ping"})
    client.expect("pong")
    with pytest.raises(ConnectionClosed) as closed:
        client.recv(10)
    assert (4001, "token_expired") == close_of(closed.value)


def test_refresh_with_another_sub_is_refused(relay: RelayProcess) -> None:
    """A refresh token for a different user closes the connection with 4001 sub_changed."""
    client = connect(relay, "alice")
    client.send({"type": "auth", "token": token("mallory")})
    with pytest.raises(ConnectionClosed) as closed:
        client.recv(5)
    assert (4001, "sub_changed") == close_of(closed.value)


def test_listener_backend_killed_during_writes_loses_nothing(
    relay: RelayProcess, relay_db: str
) -> None:
    """pg_terminate_backend of the listener mid-stream: every event arrives exactly once, in order."""
    client = connect(relay, "alice")
    client.subscribe("s", "generations")
    total = 300
    stop = threading.Event()

    def writer() -> None:
        with psycopg.connect(relay_db, autocommit=True) as conn:
            for i in range(total):
                conn.execute(
                    "INSERT INTO generations (user_id, project_id) VALUES ('alice', %s)", (str(i),)
                )
                time.sleep(0.005)
        stop.set()

    thread = threading.Thread(target=writer)
    thread.start()
    for kill in range(1, 4):
        time.sleep(0.3)
        write(relay_db, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                        " WHERE application_name IN ('pgrelay-listener', 'pgrelay-sequencer')")  # fmt: skip
        deadline = time.monotonic() + 10  # each kill must hit a live listener
        while sum(line.get("event") == "listener_up" for line in relay.lines) < kill + 1:
            assert time.monotonic() < deadline, "the listener did not come back"
            time.sleep(0.02)
    thread.join()
    got = [int(e["row"]["project_id"]) for e in client.events(total, timeout=30)]
    assert list(range(total)) == got
    assert [] == client.quiet(1.0)
    assert relay.metric("relay_listener_reconnects_total") >= 3


def test_postgres_restart_during_writes_loses_nothing(private_pg: PgServer) -> None:
    """A fast restart and a crash of Postgres mid-stream: every committed event arrives exactly once."""
    dsn = private_pg.dsn()
    install_example(dsn)
    with relay_process(dsn) as relay:
        client = connect(relay, "alice")
        client.subscribe("s", "generations")
        committed = []
        for phase, action in enumerate((private_pg.restart, private_pg.crash)):
            for i in range(50):
                marker = f"{phase}-{i}"
                write(
                    dsn,
                    "INSERT INTO generations (user_id, project_id) VALUES ('alice', %s)",
                    params=(marker,),
                )
                committed.append(marker)
            action()
            if private_pg.pid is None:
                private_pg.start()  # after the crash
        for i in range(50):
            write(
                dsn,
                "INSERT INTO generations (user_id, project_id) VALUES ('alice', %s)",
                params=(f"after-{i}",),
            )
            committed.append(f"after-{i}")
        got = [e["row"]["project_id"] for e in client.events(len(committed), timeout=60)]
        assert committed == got
        assert [] == client.quiet(1.0)


def test_non_reading_client_is_reset_or_aborted_while_others_keep_receiving(relay_db: str) -> None:
    """A client that never reads is cut off by the buffer bounds; a reading client on the same stream gets everything."""
    # Bounds with room for a reading client in a busy test process; the stalled one passes them.
    env = {
        "RELAY_QUEUE_MAX_MESSAGES": "200",
        "RELAY_QUEUE_MAX_BYTES": "4MiB",
        "RELAY_SLOW_CLIENT_TIMEOUT": "2s",
    }
    with relay_process(relay_db, env) as relay:
        stalled = Client(relay.url, "alice")
        stalled.ready()
        stalled.subscribe("s", "generations")
        healthy = connect(relay, "alice")
        healthy.subscribe("s", "generations")
        big = "x" * 60_000  # 24 MB in all: more than socket buffers and the queue can hold
        received: list[int] = []

        def read_healthy() -> None:
            received.extend(int(e["row"]["project_id"]) for e in healthy.events(400, timeout=60))

        reader = threading.Thread(target=read_healthy)
        reader.start()  # the healthy client reads while rows are written, as a live app does
        with psycopg.connect(relay_db, autocommit=True) as conn:
            for i in range(400):
                conn.execute(
                    "INSERT INTO generations (user_id, project_id, url) VALUES ('alice', %s, %s)",
                    (str(i), big),
                )
        reader.join(90)
        assert list(range(400)) == received
        deadline = time.monotonic() + 15
        while (
            time.monotonic() < deadline
            and relay.metric("relay_drops_total", 'reason="slow_client"') < 1
        ):
            time.sleep(0.2)
        assert 1.0 == relay.metric("relay_drops_total", 'reason="slow_client"')
        assert relay.metric("relay_resets_total", 'reason="overflow"') >= 1


def test_sigterm_closes_clients_with_1001_and_exits(relay_db: str) -> None:
    """SIGTERM: clients get close code 1001, the process exits 0 well within 10 s."""
    relay = RelayProcess(relay_db).start()
    client = connect(relay, "alice")
    started = time.monotonic()
    relay.stop()
    elapsed = time.monotonic() - started
    with pytest.raises(ConnectionClosed) as closed:
        client.recv(5)
    assert 1001 == close_of(closed.value)[0]
    assert 0 == relay.process.returncode if relay.process else False
    assert elapsed < 10.0


def test_health_and_metrics_endpoints(relay: RelayProcess) -> None:
    """/healthz and /readyz answer 200 on a healthy relay; /metrics exposes the relay's metrics."""
    assert (200, "ok\n") == relay.http("/healthz")
    assert (200, "ready\n") == relay.http("/readyz")
    deadline = time.monotonic() + 5  # the sequencer election runs beside readiness
    while relay.metric("relay_sequencer_leader") != 1.0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert 404 == relay.http("/metrics")[0]  # not on the client port by default
    status, body = relay.scrape()
    assert 200 == status
    for name in ("relay_listener_up 1.0", 'relay_connections{transport="websocket"} 0.0',
                 "relay_sequencer_leader 1.0"):  # fmt: skip
        assert name in body
    assert 404 == relay.http("/nope")[0]


def test_resubscribing_an_id_during_its_replay_keeps_the_relay_responsive(
    relay: RelayProcess, relay_db: str
) -> None:
    """Subscribe with since, unsubscribe and resubscribe the id at once: no hang, no stray events."""
    client = connect(relay, "alice")
    client.subscribe("s", "generations")
    for i in range(30):
        write(
            relay_db,
            "INSERT INTO generations (user_id, project_id) VALUES ('alice', %s)",
            params=(str(i),),
        )
    cursor = client.events(30)[0]["cursor"]
    client.send({"type": "unsubscribe", "id": "s"})
    client.expect("unsubscribed")
    for _ in range(5):
        client.send({"type": "subscribe", "id": "s", "table": "generations", "since": cursor})
        client.send({"type": "unsubscribe", "id": "s"})
    client.send({"type": "subscribe", "id": "s", "table": "thumbnails"})
    client.send({"type": "ping"})
    deadline = time.monotonic() + 10
    while not any(f["type"] == "pong" for f in client.frames):
        assert time.monotonic() < deadline
        client.recv(5)
    assert (200, "ok\n") == relay.http("/healthz")
    add_thumbnail(relay_db, "alice", title="after")
    got = [e for e in client.events(1) if e["sub"] == "s"]
    assert ["thumbnails"] == [e["table"] for e in got]
