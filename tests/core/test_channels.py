"""PhoenixSession, sans I/O: the Supabase dialect's channels, identity and answers."""

from __future__ import annotations

import json
import time
from typing import Any

import jwt

from relay.core.auth import Authenticator, AuthSettings
from relay.core.channels import PhoenixSession
from relay.core.outqueue import OutQueue
from relay.core.phoenix import VSN_2, PhoenixWire
from relay.core.router import Router
from relay.core.session import Abort, Replay
from tests.support.factories import RecordingTarget, make_event
from tests.support.tokens import SECRET

NOW = time.time()
EPOCH = "e" * 32
TRACKED = {("public", "items"): frozenset({"id", "title", "owner"})}
AUTH = Authenticator(
    AuthSettings(hs256_secret=SECRET, leeway=0, anonymous_roles=frozenset({"anon"}))
)
ITEMS = {"event": "*", "schema": "public", "table": "items"}


def tok(ttl: float = 3600, **claims: Any) -> str:
    return jwt.encode({"exp": NOW + ttl, **claims}, SECRET, "HS256")


class Harness:
    def __init__(self, max_messages: int = 1000) -> None:
        self.router = Router()
        self.target = RecordingTarget("", "c1")
        self.wire = PhoenixWire(VSN_2, EPOCH, dict)
        self.queue = OutQueue(self.wire, max_messages=max_messages)
        anon = AUTH.verify(tok(role="anon"), NOW, require_role=True)
        self.session = PhoenixSession(
            target=self.target, router=self.router, queue=self.queue, wire=self.wire,
            authenticator=AUTH, tables=lambda: TRACKED, types=dict, claims=anon,
            token=tok(role="anon"),
        )  # fmt: skip

    def send(self, *frame: Any) -> list[Any]:
        self.actions = list(self.session.receive_text(json.dumps(list(frame)), NOW))
        return self.frames()

    def frames(self) -> list[Any]:
        return [json.loads(text) for text in self.queue.pop_ready(NOW)]

    def join(
        self, topic: str, bindings: list[dict[str, Any]], ref: str = "1", **payload: Any
    ) -> list[Any]:
        return self.send(
            ref, ref, topic, "phx_join", {"config": {"postgres_changes": bindings}, **payload}
        )


def system(topic: str, join_ref: str, status: str = "ok", **extra: Any) -> list[Any]:
    body = {"extension": "postgres_changes", "status": status, **extra, "channel": topic[9:]}
    return [join_ref, None, topic, "system", body]


def test_join_echoes_bindings_with_ids_and_subscribes_them() -> None:
    """The reply echoes every binding in order with a truthy id (identical ones share it, and
    one subscription), then the system message; the user's keys index the socket."""
    h = Harness()
    frames = h.join("realtime:r", [ITEMS, {**ITEMS, "event": "INSERT"}, ITEMS],
                    access_token=tok(sub="alice", role="authenticated"))  # fmt: skip
    entries = frames[0][4]["response"]["postgres_changes"]
    assert next(e["id"] for e in entries) == entries[2]["id"] != entries[1]["id"]
    assert all(e["id"] > 0 for e in entries)
    assert system("realtime:r", "1", message="Subscribed to PostgreSQL") == frames[1]
    assert 2 == len(h.session.subscriptions())
    h.router.route(make_event(1, audience=["alice"], table="items"), NOW)
    assert 2 == len(h.target.received)  # once per distinct binding


def test_bad_bindings_are_a_system_error_with_no_subscription() -> None:
    """A bad filter answers ok, then a system error; nothing is subscribed, nothing matches."""
    h = Harness()
    frames = h.join("realtime:r", [ITEMS, {**ITEMS, "filter": "title=like.a"}])
    assert "ok" == frames[0][4]["status"]
    assert "error" == frames[1][4]["status"]
    assert [] == h.session.subscriptions()


def test_join_refusals() -> None:
    """private: true, an expired token and a token without role are refused at join."""
    h = Harness()
    private = h.send("1", "1", "realtime:p", "phx_join", {"config": {"private": True}})
    assert private[0][4]["response"]["reason"].startswith("PrivateChannelsNotSupported")
    expired = h.join("realtime:a", [ITEMS], access_token=tok(ttl=-5, sub="a", role="x"))
    assert "InvalidJWTToken: Token has expired" == expired[0][4]["response"]["reason"]
    no_role = h.join("realtime:a", [ITEMS], access_token=tok(sub="a"))
    assert "InvalidJWTToken: Fields `role` and `exp` are required in JWT" == (
        no_role[0][4]["response"]["reason"])  # fmt: skip


def test_another_users_token_rekeys_the_socket() -> None:
    """A refresh naming another user moves every binding to that user, live from now."""
    h = Harness()
    h.join("realtime:r", [ITEMS], access_token=tok(sub="alice", role="authenticated"))
    h.send(
        "1",
        "2",
        "realtime:r",
        "access_token",
        {"access_token": tok(sub="bob", role="authenticated")},
    )
    h.router.route(make_event(1, audience=["alice"], table="items"), NOW)
    h.router.route(make_event(2, audience=["bob"], table="items"), NOW)
    assert [2] == [pos for _, pos in h.target.received]
    assert ("bob", "role:authenticated") == h.session.keys


def test_heartbeat_leave_unmatched_and_ignored() -> None:
    """Heartbeats are answered; leave replies then closes; an unjoined topic is unmatched."""
    h = Harness()
    assert [[None, "9", "phoenix", "phx_reply", {"status": "ok", "response": {}}]] == (
        h.send(None, "9", "phoenix", "heartbeat", {}))  # fmt: skip
    h.join("realtime:r", [ITEMS])
    assert [] == h.send("1", "3", "realtime:r", "whatever", {})
    assert [["1", "4", "realtime:r", "phx_reply", {"status": "ok", "response": {}}],
            ["1", "1", "realtime:r", "phx_close", {}]] == h.send("1", "4", "realtime:r", "phx_leave", {})  # fmt: skip
    assert [[None, "5", "realtime:r", "phx_reply", {"status": "error", "response": {
        "reason": "unmatched topic"}}]] == h.send(None, "5", "realtime:r", "phx_leave", {})  # fmt: skip


def test_a_cursor_replays_and_another_epoch_resets() -> None:
    """A binding's cursor asks for a replay; one of another epoch is reset at once, saying
    where the binding now stands."""
    h = Harness()
    h.join("realtime:r", [{**ITEMS, "cursor": EPOCH + ".0"}])
    assert [Replay] == [type(a) for a in h.actions]
    frames = h.join("realtime:s", [{**ITEMS, "cursor": "f" * 32 + ".3"}], ref="2")
    reset = frames[1][4]
    assert ("epoch_changed", EPOCH + ".0") == (reset["reset"], reset["cursor"])
    assert "Subscribed to PostgreSQL" == frames[2][4]["message"]


def test_overflow_errors_the_channel_and_stops_it() -> None:
    """An overflow sends phx_error for the channel and takes its bindings off the live stream,
    so nothing after the loss is delivered before the client rejoins."""
    h = Harness(max_messages=3)
    h.join("realtime:r", [ITEMS])
    for pos in range(1, 6):
        h.queue.offer(h.session.subscriptions()[0], make_event(pos, table="items"), NOW)
    assert [None, None, "realtime:r", "phx_error", {}] in h.frames()
    assert not h.session.subscriptions()[0].live


def test_expiry_closes_every_channel() -> None:
    """When the token expires each channel gets a system error and phx_close."""
    h = Harness()
    h.join("realtime:r", [ITEMS], access_token=tok(ttl=1, sub="alice", role="authenticated"))
    assert [] == list(h.session.tick(NOW + 5))
    frames = h.frames()
    assert ["system", "phx_close"] == [f[3] for f in frames]
    assert "Token has expired" == frames[0][4]["message"]
    assert [Abort] != [type(a) for a in h.session.tick(NOW + 6)]


def test_channels_are_bounded_and_empty_ones_say_nothing() -> None:
    """A join past max_subscriptions channels is refused; a channel without bindings gets its
    reply and no system message."""
    h = Harness()
    h.session.limits = type(h.session.limits)(max_subscriptions=2)
    assert 1 == len(h.join("realtime:a", []))
    assert 1 == len(h.join("realtime:b", [], ref="2"))
    refused = h.join("realtime:c", [], ref="3")
    assert "ChannelRateLimitReached: Too many channels" == refused[0][4]["response"]["reason"]
    assert "ok" == h.join("realtime:a", [], ref="4")[0][4]["status"]  # a rejoin is no new channel
