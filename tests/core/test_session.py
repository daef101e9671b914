"""The protocol v1 session, sans I/O: frames in, frames and actions out, time passed in; its
replays run through the catch-up stepper as the websocket connection runs them."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import jwt
import pytest

from relay.core.auth import Authenticator, AuthSettings
from relay.core.catchup import Catchup, Gone, Live, ReadPage
from relay.core.cursor import Cursor
from relay.core.events import Event
from relay.core.log import LogState, ReplayPage
from relay.core.outqueue import OutQueue
from relay.core.router import Router
from relay.core.session import (
    CLOSE_AUTH,
    CLOSE_POLICY,
    MAX_BAD_FRAMES,
    Abort,
    Close,
    Replay,
    Session,
)
from relay.core.subscription import Subscription
from relay.core.wire import V1

SECRET = "protocol-test-secret-0123456789abcdef"
EPOCH = "ab" * 16
NOW = 1_800_000_000.0
TABLES = {
    ("public", "thumbnails"): frozenset({"id", "user_id", "project_id", "title"}),
    ("relay", "heartbeat"): frozenset({"source"}),
}


def token(sub: str = "alice", ttl: float = 600, **claims: Any) -> str:
    return jwt.encode({"sub": sub, "exp": NOW + ttl, **claims}, SECRET, "HS256")


def event(pos: int, op: str = "UPDATE", row_id: int = 1, user: str = "alice", **row: Any) -> Event:
    return Event(
        pos=pos,
        schema="public",
        table="thumbnails",
        op=op,  # type: ignore[arg-type]
        pk={"id": row_id},
        row={"id": row_id, "user_id": user, "project_id": "p1", "title": "t", **row},
        old_key={"id": row_id} if op != "INSERT" else None,
        changed=("title",) if op == "UPDATE" else (),
        audience=frozenset({user}),
        committed_at=datetime(2026, 1, 1, tzinfo=UTC),
    )


class QueueTarget:
    """A connection with no socket: the router's offers go to its queue (a connection that
    cannot write at once does the same)."""

    conn_id = "c1"

    def __init__(self, queue: OutQueue) -> None:
        self.queue = queue
        self.session: Session | None = None

    @property
    def user(self) -> str:
        return self.session.user if self.session is not None else ""

    def offer(self, sub: Subscription, event: Event, now: float) -> bool:
        self.queue.offer(sub, event, now)
        return False


def make(router: Router | None = None, max_messages: int = 100) -> Session:
    queue = OutQueue(V1(EPOCH), max_messages=max_messages)
    target = QueueTarget(queue)
    target.session = Session(
        target=target,
        router=router or Router(head=10),
        queue=queue,
        wire=V1(EPOCH),
        authenticator=Authenticator(AuthSettings(hs256_secret=SECRET)),
        tables=lambda: TABLES,
        now=NOW,
    )
    return target.session


def catchup(session: Session, replay: Replay) -> Catchup:
    """The catch-up a connection runs for a Replay action."""
    return Catchup(session.router, session.target, replay.sub, replay.since, limit=100)


def state(head: int) -> LogState:
    return LogState(epoch=EPOCH, head=head, pruned_through=0, notify=True)


def queue_replayed(session: Session, sub: Subscription, events: list[Event]) -> None:
    """What the connection does with the events a catch-up hands over."""
    for replayed in events:
        session.queue.offer(sub, replayed, NOW)


def frames(session: Session) -> list[dict[str, Any]]:
    return [json.loads(f) for f in session.queue.pop_ready(NOW + 1000)]


def authed(router: Router | None = None, **kwargs: Any) -> Session:
    session = make(router, **kwargs)
    assert [] == session.authenticate(token(), NOW)
    frames(session)
    return session


def send(session: Session, message: dict[str, Any], now: float = NOW) -> list[Any]:
    return list(session.receive_text(json.dumps(message), now))


def test_header_token_opens_the_session_with_ready() -> None:
    """A valid token makes the session OPEN and queues ready with the user and the head cursor."""
    session = make()
    assert [] == session.authenticate(token(), NOW)
    assert [{"type": "ready", "user": "alice", "cursor": f"{EPOCH}.10"}] == frames(session)


@pytest.mark.parametrize("first", ['{"type": "ping"}', "not json", "[]"])
def test_anything_but_auth_first_closes_with_4001(first: str) -> None:
    """Before authentication, any frame other than a valid auth message closes with 4001."""
    session = make()
    assert [Close(CLOSE_AUTH, "auth_required")] == list(session.receive_text(first, NOW))


def test_binary_before_auth_closes_and_after_auth_is_an_error() -> None:
    """A binary frame closes an unauthenticated session; once authenticated it is a bad_message."""
    assert [Close(CLOSE_AUTH, "auth_required")] == list(make().receive_binary())
    session = authed()
    assert [] == list(session.receive_binary())
    assert "bad_message" == frames(session)[0]["code"]


def test_auth_timeout_and_token_expiry_close_with_4001() -> None:
    """No token within the auth timeout, or a token past exp plus leeway, closes with 4001."""
    waiting = make()
    assert [] == list(waiting.tick(NOW + 4.9))
    assert [Close(CLOSE_AUTH, "auth_timeout")] == list(waiting.tick(NOW + 5.0))
    session = make()
    session.authenticate(token(ttl=60), NOW)
    assert [] == list(session.tick(NOW + 64.9))
    assert [Close(CLOSE_AUTH, "token_expired")] == list(session.tick(NOW + 65.0))


def test_refresh_extends_expiry_and_refuses_another_sub() -> None:
    """A refreshed token of the same sub moves the expiry; one for another sub closes the session."""
    session = authed()
    assert [] == send(session, {"type": "auth", "token": token(ttl=6000)})
    assert [] == list(session.tick(NOW + 700))
    assert [Close(CLOSE_AUTH, "sub_changed")] == send(
        session, {"type": "auth", "token": token("mallory")}
    )


def test_subscribe_from_now_is_live_at_once_and_gets_later_events() -> None:
    """Without since, subscribed carries the head cursor and the next event is routed to it."""
    router = Router(head=10)
    session = authed(router)
    assert [] == send(session, {"type": "subscribe", "id": "s", "table": "thumbnails"})
    assert [{"type": "subscribed", "id": "s", "cursor": f"{EPOCH}.10"}] == frames(session)
    router.route(event(11), NOW)
    assert [("event", "s", f"{EPOCH}.11")] == [
        (f["type"], f["sub"], f["cursor"]) for f in frames(session)
    ]


def test_subscribe_since_replays_then_goes_live_with_no_gap() -> None:
    """With since, the shell replays; subscribed follows the replayed events and live continues after."""
    router = Router(head=10)
    session = authed(router)
    actions = send(session, {"type": "subscribe", "id": "s", "table": "thumbnails",
                             "since": f"{EPOCH}.7"})  # fmt: skip
    assert [Replay] == [type(a) for a in actions]
    sub, replay = actions[0].sub, catchup(session, actions[0])
    assert ReadPage(7, 10, 100) == replay.start(state(10), NOW)
    router.route(event(11), NOW)  # live while replaying: held for the replay, not delivered
    queue_replayed(session, sub, replay.feed(ReplayPage([event(8), event(9)], 10)))
    step = replay.next(NOW)
    assert isinstance(step, Live)
    assert (11, [11]) == (step.after, [e.pos for e in step.events])
    queue_replayed(session, sub, list(step.events))
    session.went_live(sub)
    router.route(event(12), NOW)
    assert [("event", 8), ("event", 9), ("event", 11), ("subscribed", 11), ("event", 12)] == [
        (f["type"], Cursor.decode(f["cursor"]).pos) for f in frames(session)
    ]


def test_a_stale_replay_cannot_touch_a_new_subscription_with_the_same_id() -> None:
    """After unsubscribe and resubscribe under the same id, the old replay's calls are refused."""
    session = authed()
    old = catchup(session, send(session, {"type": "subscribe", "id": "s", "table": "thumbnails",
                                          "since": f"{EPOCH}.5"})[0])  # fmt: skip
    send(session, {"type": "unsubscribe", "id": "s"})
    send(session, {"type": "subscribe", "id": "s", "table": "thumbnails"})
    frames(session)
    assert (False, Gone(), Gone()) == (old.pending(), old.start(state(10), NOW), old.next(NOW))
    assert [] == frames(session)


def test_subscribed_follows_replayed_events_held_in_a_coalescing_window() -> None:
    """With coalesce_ms and since, held replayed UPDATEs are released before subscribed."""
    router = Router(head=10)
    session = authed(router)
    action = send(session, {"type": "subscribe", "id": "s", "table": "thumbnails",
                            "since": f"{EPOCH}.7", "coalesce_ms": 5000})[0]  # fmt: skip
    sub, replay = action.sub, catchup(session, action)
    replay.start(state(10), NOW)
    queue_replayed(session, sub, replay.feed(ReplayPage([event(8), event(9)], 10)))
    assert Live(10) == replay.next(NOW)
    session.went_live(sub)
    assert [("event", 9), ("subscribed", 10)] == [
        (f["type"], Cursor.decode(f["cursor"]).pos) for f in frames(session)
    ]


def test_foreign_epoch_cursor_gets_reset_then_subscribed() -> None:
    """A cursor of another epoch: reset epoch_changed with the head cursor, then subscribed."""
    session = authed()
    send(
        session, {"type": "subscribe", "id": "s", "table": "thumbnails", "since": "cd" * 16 + ".3"}
    )
    assert [
        {"type": "reset", "sub": "s", "reason": "epoch_changed", "cursor": f"{EPOCH}.10"},
        {"type": "subscribed", "id": "s", "cursor": f"{EPOCH}.10"},
    ] == frames(session)


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ({"type": "subscribe", "id": "s", "table": "nope"}, "unknown_table"),
        ({"type": "subscribe", "id": "s", "table": "heartbeat", "schema": "relay"}, "forbidden"),
        ({"type": "subscribe", "id": "s", "table": "thumbnails", "filter": {"titel": "x"}},
         "bad_message"),
        ({"type": "subscribe", "id": "\ud800", "table": "thumbnails"}, "bad_message"),
        ({"type": "subscribe", "id": "s", "table": "\udfff"}, "bad_message"),
        ({"type": "subscribe", "id": "x" * 65, "table": "thumbnails"}, "bad_message"),
        ({"type": "subscribe", "id": "s", "table": "thumbnails", "coalesce_ms": True},
         "bad_message"),
        ({"type": "subscribe", "id": "s", "table": "thumbnails", "since": 5}, "bad_cursor"),
        ({"type": "unsubscribe", "id": "none"}, "bad_message"),
        ({"type": "what"}, "bad_message"),
    ],
)  # fmt: skip
def test_bad_requests_get_an_error_frame_that_can_be_sent(
    message: dict[str, Any], code: str
) -> None:
    """Each bad request is answered with its code, in a frame that encodes as UTF-8."""
    session = authed()
    assert [] == send(session, message)
    raw = session.queue.pop_ready(NOW)
    raw[0].encode("utf-8")  # a lone surrogate echoed back would raise here
    assert code == json.loads(raw[0])["code"]


def test_a_failed_unsubscribe_is_told_apart_from_a_failed_subscribe_of_the_same_id() -> None:
    """Error frames name the refused request: a stale unsubscribe of id s is not s's subscribe failing."""
    session = authed()
    send(session, {"type": "subscribe", "id": "s", "table": "nope"})
    send(session, {"type": "unsubscribe", "id": "s"})
    send(session, {"type": "what"})
    send(session, {"type": ["subscribe"]})  # a type that cannot be a set member: no request
    assert [
        ("subscribe", "unknown_table", "s"),
        ("unsubscribe", "bad_message", "s"),
        (None, "bad_message", None),
        (None, "bad_message", None),
    ] == [(f.get("request"), f["code"], f.get("id")) for f in frames(session)]


def test_a_refresh_is_acknowledged_with_its_expiry() -> None:
    """A refresh auth is answered auth_ok with the user and the new token's exp (old clients ignore it)."""
    session = authed()
    refreshed = token(ttl=6000)
    assert [] == send(session, {"type": "auth", "token": refreshed})
    exp = int(jwt.decode(refreshed, options={"verify_signature": False})["exp"])
    assert [{"type": "auth_ok", "user": "alice", "exp": exp}] == frames(session)


def test_filter_on_a_key_column_outside_the_whitelist_is_accepted() -> None:
    """Events always carry the key, so a filter may name a key column the whitelist leaves out."""
    tables = {("public", "items"): frozenset({"k", "v"})}
    session = make()
    session.tables = lambda: tables
    session.authenticate(token(), NOW)
    frames(session)
    send(session, {"type": "subscribe", "id": "s", "table": "items", "filter": {"k": "a"}})
    assert "subscribed" == frames(session)[0]["type"]


def test_too_many_subscriptions_is_refused_with_its_code() -> None:
    """The subscription limit per connection answers too_many_subscriptions with the id."""
    session = authed()
    session.limits = type(session.limits)(max_subscriptions=2, auth_timeout=5)
    for i in range(3):
        send(session, {"type": "subscribe", "id": f"s{i}", "table": "thumbnails"})
    assert {
        "type": "error",
        "code": "too_many_subscriptions",
        "id": "s2",
        "request": "subscribe",
    } == {k: v for k, v in frames(session)[-1].items() if k != "message"}


def test_a_flood_of_bad_frames_closes_with_1008() -> None:
    """After MAX_BAD_FRAMES errors the session closes with a policy violation."""
    session = authed(max_messages=1000)
    results = [list(session.receive_text("nope", NOW)) for _ in range(MAX_BAD_FRAMES + 1)]
    assert [[]] * MAX_BAD_FRAMES + [[Close(CLOSE_POLICY, "too_many_errors")]] == results


def test_control_frames_past_the_bound_abort_the_connection() -> None:
    """A client that floods pings and never reads overflows its queue: the session asks for an abort."""
    session = authed(max_messages=10)
    for _ in range(11):
        send(session, {"type": "ping"})
    assert [Abort("control_overflow")] == list(session.tick(NOW))


@pytest.mark.parametrize("kind", [["subscribe"], {"a": 1}, 5, None])
def test_a_type_that_is_not_a_string_is_a_bad_message(kind: object) -> None:
    """A message whose type is not a string (an array: unhashable) is refused with bad_message
    naming no request, not a crash."""
    session = authed()
    send(session, {"type": kind, "id": "x"})
    assert [("error", "bad_message", None)] == [
        (f["type"], f["code"], f.get("request")) for f in frames(session)
    ]
