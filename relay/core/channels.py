"""The Supabase Realtime dialect, sans I/O: the state machine of one Phoenix socket.

A sibling of relay/core/session.py (protocol v1) for @supabase/realtime-js clients. The shell
(relay/net/connection.py, the same one v1 uses) feeds a ``PhoenixSession`` the client's frames
and the time and carries out its actions (``Close``, ``Abort``, ``Replay``); answers go to the
connection's bounded ``OutQueue``, framed by relay/core/phoenix.py. Each ``postgres_changes``
binding of a joined channel is a ``Subscription`` in the router, so matching, the audience
check, slow-consumer policy and catch-up are v1's. docs/supabase.md is the public description.

The socket's identity is the token's: the connect token (the ``apikey``, verified at the
handshake), then each join's ``access_token`` (``sb_...`` or none means the connect token) and
each ``access_token`` refresh. A token naming other audience keys (another ``sub``, another
``role``) re-registers the whole socket under them, its channels' bindings going on from now.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from relay.core.audience import audience_keys
from relay.core.auth import Authenticator, Claims
from relay.core.bindings import assign_ids, auth_reason, parse_bindings
from relay.core.outqueue import OutQueue
from relay.core.phoenix import (
    ColumnTypes,
    FrameError,
    Message,
    PhoenixWire,
    binding_of,
    decode,
    topic_of,
)
from relay.core.requests import Tracked
from relay.core.router import Router, Target
from relay.core.session import CLOSE_POLICY, Abort, Close, Limits, Replay
from relay.core.subscription import Subscription
from relay.errors import AuthError, ProtocolError

__all__ = ["MAX_BAD_FRAMES", "Channel", "PhoenixSession"]

MAX_BAD_FRAMES: Final = 100  # frames answered with errors before the socket is closed
PRIVATE_REFUSED: Final = (
    "PrivateChannelsNotSupported: pgrelay serves public channels only (private: true needs "
    "Realtime Authorization, which pgrelay does not implement)"
)


_LIMITS: Final = Limits()


class State(enum.Enum):
    OPEN = "open"
    CLOSED = "closed"


@dataclass(slots=True, eq=False)
class Channel:
    """A joined topic: its join_ref and its bindings' subscription ids (in the router)."""

    topic: str
    join_ref: str | None
    subs: list[str] = field(default_factory=list)
    pending: set[str] = field(default_factory=set)  # bindings still catching up (resume)


class PhoenixSession:
    """One Phoenix socket's channels and identity (module docstring)."""

    def __init__(
        self,
        *,
        target: Target,
        router: Router,
        queue: OutQueue,
        wire: PhoenixWire,
        authenticator: Authenticator,
        tables: Callable[[], Tracked],
        types: Callable[[], ColumnTypes],
        claims: Claims,
        token: str,
        limits: Limits = _LIMITS,
        on_auth_failure: Callable[[str], None] = lambda reason: None,
        on_reset: Callable[[str], None] = lambda reason: None,
        on_limit: Callable[[str], None] = lambda limit: None,
    ) -> None:
        self.target = target
        self.router = router
        self.queue = queue
        self.wire = wire
        wire.on_overflow = self._overflowed
        self.authenticator = authenticator
        self.tables = tables
        self.types = types
        self.limits = limits
        self.on_auth_failure = on_auth_failure
        self.on_reset = on_reset
        self.on_limit = on_limit
        self.claims: Claims | None = claims
        self.connect_claims = claims
        self.connect_token = token
        self.token = token
        self.channels: dict[str, Channel] = {}
        self.bad_frames = 0
        self.state = State.OPEN
        router.add(target, audience_keys(claims))

    @property
    def user(self) -> str:
        return self.claims.sub if self.claims is not None else ""

    @property
    def keys(self) -> tuple[str, ...]:
        return audience_keys(self.claims) if self.claims is not None else ()

    def subscriptions(self) -> list[Subscription]:
        return self.router.subscriptions(self.target)

    # -- input --------------------------------------------------------------------------------

    def authenticate(self, token: str, now: float) -> Sequence[Close | Abort | Replay]:
        return []  # the handshake verified the connect token (relay/net/http.py)

    def receive_text(self, text: str, now: float) -> Sequence[Close | Abort | Replay]:
        if self.state is State.CLOSED:
            return []
        try:
            message = decode(text, self.wire.vsn)
        except FrameError as exc:
            return self._bad(exc.reason, exc.join_ref, exc.ref, exc.topic)
        topic, event = message.topic, message.event
        if topic == "phoenix" and event == "heartbeat":
            self._reply(message, "ok", {})
            return []
        if event == "phx_join":
            return self._join(message, now)
        if topic not in self.channels:
            return self._bad("unmatched topic", message.join_ref, message.ref, topic)
        if event == "phx_leave":
            self._reply(message, "ok", {})
            self._close_channel(topic)
        elif event == "access_token":
            self._access_token(message, now)
        elif event in ("broadcast", "presence"):
            reason = f"{event} is not supported by pgrelay: it serves postgres_changes only"
            return self._bad(reason, message.join_ref, message.ref, topic)
        return []  # another event on a joined channel: ignored, as Supabase does

    def receive_binary(self, data: bytes = b"") -> Sequence[Close | Abort | Replay]:
        """A binary frame: realtime-js sends only user broadcasts (kind 3) so."""
        if len(data) >= 7 and data[0] == 3:
            jr, rf, tp = data[1], data[2], data[3]
            parts = data[7 : 7 + jr + rf + tp].decode("utf-8", "replace")
            join_ref, ref, topic = parts[:jr], parts[jr : jr + rf], parts[jr + rf :]
            if topic in self.channels:
                reason = "broadcast is not supported by pgrelay: it serves postgres_changes only"
                return self._bad(reason, join_ref or None, ref or None, topic)
        return self._bad("binary frames other than broadcasts are not supported")

    def tick(self, now: float) -> Sequence[Close | Abort]:
        if self.state is State.CLOSED:
            return []
        if self.queue.overflowed:
            self.close()
            return [Abort("control_overflow")]
        claims = self.claims
        if claims is not None and now >= claims.exp + self.authenticator.settings.leeway:
            if self.channels:
                self.on_auth_failure("expired")
            for topic in list(self.channels):
                self._shutdown(topic, "Token has expired")
            if claims is not self.connect_claims:
                self._rekey(self.connect_claims)  # back to the connect token's identity
        return []

    # -- the end of a replay, driven by the shell ----------------------------------------------

    def went_live(self, sub: Subscription) -> None:
        self.queue.release_window(sub.id)
        channel = self.channels.get(topic_of(sub.id))
        if channel is not None and sub.id in channel.pending:
            channel.pending.discard(sub.id)
            if not channel.pending:
                self._subscribed(channel)

    def reset_subscription(self, sub_id_: str, reason: str) -> None:
        """A resumed binding's cursor cannot be replayed from: the client refetches."""
        sub = self.router.subscription(self.target, sub_id_)
        if sub is None:
            return
        self.on_reset(reason)
        head = self.router.head
        self.router.go_live(self.target, sub_id_, head)
        binding = self.wire.bindings[sub_id_]
        self._system(binding.topic, "postgres_changes", "error", {
            "message": f"reset: {reason}: the changes since this binding's cursor cannot be "
            "replayed; refetch", "reset": reason, "ids": [binding.id],
            "cursor": self.wire.cursor(head),
        })  # fmt: skip
        self.went_live(sub)

    def close(self) -> None:
        self.state = State.CLOSED
        self.router.remove(self.target)

    # -- handlers -----------------------------------------------------------------------------

    def _join(self, message: Message, now: float) -> Sequence[Close | Abort | Replay]:
        topic, payload = message.topic, message.payload
        if not topic.startswith("realtime:"):
            return self._bad("unmatched topic", message.join_ref, message.ref, topic)
        config = payload.get("config")
        config = config if isinstance(config, dict) else {}
        if topic in self.channels:  # a duplicate join replaces the channel
            self._drop_channel(topic)
        elif len(self.channels) >= self.limits.max_subscriptions:
            self.on_limit("channels")
            self._reply(message, "error", {"reason": "ChannelRateLimitReached: Too many channels"})
            return []
        if config.get("private") is True:
            self._reply(message, "error", {"reason": PRIVATE_REFUSED})
            return []
        token = payload.get("access_token") or payload.get("user_token")
        try:
            claims = self._verify(token, now)
        except AuthError as exc:
            self.on_auth_failure(exc.reason)
            self._reply(message, "error", {"reason": auth_reason(exc)})
            return []
        entries = config.get("postgres_changes", [])
        if entries is None:
            entries = []
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            reason = "InvalidJoinPayload: config.postgres_changes must be a list of objects"
            self._reply(message, "error", {"reason": reason})
            return []
        if audience_keys(claims) != self.keys:
            self._rekey(claims)
        self.claims = claims
        return self._bind(message, entries)

    def _bind(self, message: Message, entries: list[dict[str, Any]]) -> list[Replay]:
        topic = message.topic
        ids = assign_ids(entries)
        channel = Channel(topic, message.join_ref)
        self.channels[topic] = channel
        echoed = [{**entry, "id": id_} for entry, id_ in zip(entries, ids, strict=True)]
        self._reply(message, "ok", {"postgres_changes": echoed})
        try:
            specs = parse_bindings(
                topic, entries, ids, tracked=self.tables(), types=self.types(),
                head=self.router.head, epoch=self.wire.epoch, held=self.subscriptions(),
                limits=self.limits, on_limit=self.on_limit,
            )  # fmt: skip
        except ProtocolError as exc:
            self._system(topic, "postgres_changes", "error", {"message": exc.message})
            return []
        actions: list[Replay] = []
        for spec in specs:
            sub = spec.subscription
            self.router.subscribe(self.target, sub)
            self.wire.bind(sub.id, topic, binding_of(sub.id), resume=spec.resume)
            channel.subs.append(sub.id)
            if isinstance(spec.since, str):
                channel.pending.add(sub.id)
                self.reset_subscription(sub.id, spec.since)
            elif spec.since is not None:
                channel.pending.add(sub.id)
                sub.after = spec.since.pos
                actions.append(Replay(sub, spec.since))
            else:
                self.router.go_live(self.target, sub.id, sub.after)
        if channel.subs and not channel.pending:
            self._subscribed(channel)
        return actions

    def _access_token(self, message: Message, now: float) -> None:
        token = message.payload.get("access_token")
        if not isinstance(token, str) or token.startswith("sb_") or token == self.token:
            return  # null, a publishable key, or the token in use: nothing to do (no reply)
        try:
            claims = self.authenticator.verify(token, now, require_role=True)
        except AuthError as exc:
            self.on_auth_failure(exc.reason)
            self._shutdown(message.topic, auth_reason(exc))
            return
        self.token = token
        if audience_keys(claims) != self.keys:
            self._rekey(claims)
        self.claims = claims
        channel = self.channels.get(message.topic)
        if channel is not None and channel.subs and not channel.pending:
            self._subscribed(channel)  # Supabase re-subscribes and says so again

    def _verify(self, token: object, now: float) -> Claims:
        if not isinstance(token, str) or token.startswith("sb_"):
            self.token = self.connect_token
            return self.connect_claims
        if token == self.token and self.claims is not None and self.claims.exp > now:
            return self.claims
        claims = self.authenticator.verify(token, now, require_role=True)
        self.token = token
        return claims

    def _rekey(self, claims: Claims) -> None:
        """Re-registers the socket under another identity; its bindings go on from now."""
        held = self.subscriptions()
        self.router.remove(self.target)
        self.claims = claims
        self.router.add(self.target, audience_keys(claims))
        head = self.router.head
        for sub in held:
            fresh = dataclasses.replace(sub, after=head, live=False, held=None)
            self.router.subscribe(self.target, fresh)
            self.router.go_live(self.target, fresh.id, head)
        for channel in self.channels.values():
            channel.pending.clear()

    # -- channels -----------------------------------------------------------------------------

    def _drop_channel(self, topic: str) -> Channel | None:
        channel = self.channels.pop(topic, None)
        if channel is not None:
            for sid in channel.subs:
                self.router.unsubscribe(self.target, sid)
                self.queue.discard(sid)
                self.wire.unbind(sid)
        return channel

    def _close_channel(self, topic: str) -> None:
        channel = self._drop_channel(topic)
        if channel is not None:
            self.queue.push_control(self.wire.frame(
                channel.join_ref, channel.join_ref, topic, "phx_close", {}))  # fmt: skip

    def _shutdown(self, topic: str, reason: str) -> None:
        """Supabase's shutdown: a system error, then ``phx_close`` (the client does not rejoin)."""
        self._system(topic, "system", "error", {"message": reason})
        self._close_channel(topic)

    def _overflowed(self, topic: str) -> None:
        """The queue dropped this channel's events: stop it until the client rejoins (after the
        ``phx_error`` the wire sends), so nothing later is sent past the loss."""
        for sid in self.channels[topic].subs if topic in self.channels else ():
            sub = self.router.subscription(self.target, sid)
            if sub is not None:
                sub.live = False

    # -- frames -------------------------------------------------------------------------------

    def _reply(self, message: Message, status: str, response: dict[str, Any]) -> None:
        self.queue.push_control(self.wire.frame(message.join_ref, message.ref, message.topic,
                                                "phx_reply", {"status": status,
                                                              "response": response}))  # fmt: skip

    def _system(self, topic: str, extension: str, status: str, extra: dict[str, Any]) -> None:
        channel = self.channels.get(topic)
        payload = {"extension": extension, "status": status, **extra,
                   "channel": topic.removeprefix("realtime:")}  # fmt: skip
        join_ref = channel.join_ref if channel is not None else None
        self.queue.push_control(self.wire.frame(join_ref, None, topic, "system", payload))

    def _subscribed(self, channel: Channel) -> None:
        extra: dict[str, Any] = {"message": "Subscribed to PostgreSQL"}
        cursors = {
            str(binding_of(sid)): self.wire.cursor(self.router.head)
            for sid in channel.subs if self.wire.bindings[sid].resume
        }  # fmt: skip
        if cursors:
            extra["cursors"] = cursors
        self._system(channel.topic, "postgres_changes", "ok", extra)

    def _bad(
        self, reason: str, join_ref: str | None = None, ref: str | None = None,
        topic: str | None = None,
    ) -> Sequence[Close]:  # fmt: skip
        self.bad_frames += 1
        if self.bad_frames > MAX_BAD_FRAMES:
            self.close()
            return [Close(CLOSE_POLICY, "too_many_errors")]
        if topic is not None and ref is not None:
            self.queue.push_control(self.wire.frame(join_ref, ref, topic, "phx_reply", {
                "status": "error", "response": {"reason": reason}}))  # fmt: skip
        return []
