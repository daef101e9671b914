"""Protocol v1, sans I/O: the state machine of one client connection.

The shell (relay/net/connection.py) feeds a ``Session`` the client's frames and the time, and
carries out what it asks for: a ``Close``, an ``Abort``, or a ``Replay`` of a subscription from
the log (run by relay/core/catchup.py). The session queues its answers (control frames, built by
relay/core/wire.py) on the connection's bounded ``OutQueue``, which the shell drains to the
socket, and registers the connection (the ``target``) and its subscriptions with the router,
whose index is the one record of them. Client input is validated by relay/core/requests.py.
docs/protocol.md is the public description of the same rules.

States: AWAITING_AUTH (only ``auth`` is accepted, until ``auth_timeout``), OPEN, CLOSED.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from relay.core.audience import audience_keys
from relay.core.auth import Authenticator, Claims
from relay.core.cursor import Cursor
from relay.core.outqueue import OutQueue
from relay.core.requests import Tracked, parse_object, parse_subscription, short, subscription_id
from relay.core.router import Router, Target
from relay.core.subscription import Subscription
from relay.core.wire import V1
from relay.errors import AuthError, ProtocolError

__all__ = [
    "CLOSE_AUTH",
    "CLOSE_GOING_AWAY",
    "CLOSE_POLICY",
    "Abort",
    "ClientSession",
    "Close",
    "Limits",
    "Replay",
    "Session",
    "SessionState",
]

CLOSE_GOING_AWAY: Final = 1001  # the relay is shutting down
CLOSE_POLICY: Final = 1008  # too many bad frames
CLOSE_AUTH: Final = 4001  # missing, invalid or expired token

MAX_BAD_FRAMES: Final = 100  # errors answered before the connection is closed
# The client messages a refusal names as its `request` (the error frame's member).
REQUESTS: Final = frozenset({"auth", "subscribe", "unsubscribe", "ping"})


class SessionState(enum.Enum):
    AWAITING_AUTH = "awaiting_auth"
    OPEN = "open"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class Close:
    """Close the connection with this code and reason."""

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class Abort:
    """Drop the connection without a close handshake: the client is not reading, so a close
    frame could not reach it either."""

    reason: str


@dataclass(frozen=True, slots=True)
class Replay:
    """Catch the subscription up from the log (relay/core/catchup.py); once it is live, call
    ``Session.went_live`` (or ``Session.reset_subscription`` when the log says reset)."""

    sub: Subscription
    since: Cursor


Action = Close | Abort | Replay


@dataclass(frozen=True, slots=True)
class Limits:
    """``max_filter_bytes`` bounds the estimated memory of a connection's filters, summed over
    its subscriptions (``RowFilter.cost``); a subscribe past it is refused."""

    max_subscriptions: int = 100
    auth_timeout: float = 5.0
    max_filter_bytes: int = 256 * 1024


class Session:
    """One connection's protocol state.

    ``target`` is the connection as the router sees it (its ``user`` is this session's ``user``
    once authenticated); the router delivers events to it, not to the session. ``wire`` encodes
    in the epoch the connection lives in; ``tables`` answers which (schema, table) pairs are
    tracked.
    """

    def __init__(
        self,
        *,
        target: Target,
        router: Router,
        queue: OutQueue,
        wire: V1,
        authenticator: Authenticator,
        tables: Callable[[], Tracked],
        now: float,
        limits: Limits = Limits(),
        on_auth_failure: Callable[[str], None] = lambda reason: None,
        on_reset: Callable[[str], None] = lambda reason: None,
        on_limit: Callable[[str], None] = lambda limit: None,
    ) -> None:
        self.target = target
        self.router = router
        self.queue = queue
        self.wire = wire
        self.authenticator = authenticator
        self.tables = tables
        self.limits = limits
        self.on_auth_failure = on_auth_failure
        self.on_reset = on_reset
        self.on_limit = on_limit
        self.state = SessionState.AWAITING_AUTH
        self.claims: Claims | None = None
        self.auth_deadline = now + limits.auth_timeout
        self.bad_frames = 0

    @property
    def user(self) -> str:
        return self.claims.sub if self.claims is not None else ""

    @property
    def keys(self) -> tuple[str, ...]:
        """The audience keys the connection is reached by (relay/core/audience.py)."""
        return audience_keys(self.claims) if self.claims is not None else ()

    def subscriptions(self) -> list[Subscription]:
        """The connection's subscriptions, as the router holds them."""
        return self.router.subscriptions(self.target)

    # -- input --------------------------------------------------------------------------------

    def authenticate(self, token: str, now: float) -> Sequence[Action]:
        """A token from the ``Authorization: Bearer`` header of the handshake."""
        return self._auth(token, now)

    def receive_text(self, text: str, now: float) -> Sequence[Action]:
        """One text frame from the client."""
        if self.state is SessionState.CLOSED:
            return []
        try:
            message = parse_object(text)
        except ProtocolError as exc:
            if self.state is SessionState.AWAITING_AUTH:
                return self._close(CLOSE_AUTH, "auth_required")
            return self._error(exc)
        kind = message.get("type")
        if self.state is SessionState.AWAITING_AUTH and kind != "auth":
            return self._close(CLOSE_AUTH, "auth_required")
        try:
            if kind == "auth":
                return self._auth(message.get("token"), now)
            if kind == "subscribe":
                return self.subscribe(message)
            if kind == "unsubscribe":
                return self._unsubscribe(message)
            if kind == "ping":
                self.queue.push_control(self.wire.pong())
                return []
            raise ProtocolError("bad_message", f"unknown message type {short(kind)}")
        except ProtocolError as exc:
            return self._error(exc, kind if isinstance(kind, str) and kind in REQUESTS else None)

    def receive_binary(self, data: bytes = b"") -> Sequence[Action]:
        """A binary frame: protocol v1 is JSON text only."""
        if self.state is SessionState.AWAITING_AUTH:
            return self._close(CLOSE_AUTH, "auth_required")
        return self._error(ProtocolError("bad_message", "binary frames are not supported"))

    def tick(self, now: float) -> Sequence[Close | Abort]:
        """Time-driven rules: the auth deadline, token expiry, an unbounded outbound buffer."""
        if self.state is SessionState.CLOSED:
            return []
        if self.queue.overflowed:
            self.close()
            return [Abort("control_overflow")]
        if self.state is SessionState.AWAITING_AUTH and now >= self.auth_deadline:
            self.on_auth_failure("timeout")
            return self._close(CLOSE_AUTH, "auth_timeout")
        if self.claims is not None and now >= self.claims.exp + self.authenticator.settings.leeway:
            self.on_auth_failure("expired")
            return self._close(CLOSE_AUTH, "token_expired")
        return []

    def next_deadline(self) -> float | None:
        """When ``tick`` must run next at the latest (besides coalescing windows)."""
        if self.state is SessionState.AWAITING_AUTH:
            return self.auth_deadline
        if self.claims is not None:
            return self.claims.exp + self.authenticator.settings.leeway
        return None

    # -- the end of a replay, driven by the shell ----------------------------------------------

    def went_live(self, sub: Subscription) -> None:
        """The subscription's catch-up went live (``catchup.Live``): ``subscribed`` is queued after
        every replayed event, those held in a coalescing window included. The shell calls this in
        the step that went live, with no await in between."""
        self.queue.release_window(sub.id)
        self._subscribed(sub)

    def reset_subscription(self, sub_id: str, reason: str) -> None:
        """The subscription's history cannot be replayed: the client refetches; live from now."""
        sub = self.router.subscription(self.target, sub_id)
        if sub is None:
            return
        self.on_reset(reason)
        head = self.router.head
        self.queue.push_control(self.wire.reset(sub_id, reason, head))
        self.router.go_live(self.target, sub_id, head)
        self._subscribed(sub)

    def close(self) -> None:
        """The connection is gone: forget it and its subscriptions in the router."""
        self.state = SessionState.CLOSED
        self.router.remove(self.target)

    def _auth(self, token: object, now: float) -> Sequence[Action]:
        try:
            if self.claims is None:
                claims = self.authenticator.verify(token, now)
            else:
                claims = self.authenticator.refresh(self.claims, token, now)
        except AuthError as exc:
            self.on_auth_failure(exc.reason)
            return self._close(CLOSE_AUTH, exc.reason)
        first = self.claims is None
        self.claims = claims
        if first:
            self.state = SessionState.OPEN
            self.router.add(self.target, audience_keys(claims))
            self.queue.push_control(self.wire.ready(claims.sub, self.router.head))
        else:
            self.queue.push_control(self.wire.auth_ok(claims.sub, claims.exp))
        return []

    # -- handlers -----------------------------------------------------------------------------

    def subscribe(self, message: Mapping[str, Any]) -> Sequence[Action]:
        """A subscribe request (a websocket frame's, or one of an SSE stream's): raises
        ``ProtocolError`` (naming the id) for a request that breaks a rule."""
        sub_id = subscription_id(message.get("id"))
        subs = self.subscriptions()
        try:
            if self.router.subscription(self.target, sub_id) is not None:
                raise ProtocolError("bad_message", "subscription id already in use")
            if len(subs) >= self.limits.max_subscriptions:
                raise ProtocolError(
                    "too_many_subscriptions",
                    f"at most {self.limits.max_subscriptions} subscriptions per connection",
                )
            sub, since = parse_subscription(
                message, sub_id, tracked=self.tables(), head=self.router.head, epoch=self.wire.epoch
            )
            self._check_filter_budget(sub, subs)
        except ProtocolError as exc:
            exc.sub_id = sub_id
            raise
        self.router.subscribe(self.target, sub)
        if isinstance(since, str):  # a cursor of another epoch: nothing to replay from
            self.reset_subscription(sub_id, since)
            return []
        if since is None:
            self.router.go_live(self.target, sub_id, sub.after)
            self._subscribed(sub)
            return []
        sub.after = since.pos
        return [Replay(sub, since)]

    def _check_filter_budget(self, sub: Subscription, subs: list[Subscription]) -> None:
        budget = self.limits.max_filter_bytes
        held = sum(other.filter.cost for other in subs)
        if held + sub.filter.cost > budget:
            self.on_limit("filter_bytes")
            raise ProtocolError(
                "filter_budget_exceeded",
                f"this filter needs about {sub.filter.cost} bytes and this connection's filters "
                f"hold {held} of {budget} (RELAY_MAX_FILTER_BYTES): use fewer or smaller filters",
            )

    def _unsubscribe(self, message: dict[str, Any]) -> Sequence[Action]:
        sub_id = subscription_id(message.get("id"))
        if not self.router.unsubscribe(self.target, sub_id):
            raise ProtocolError("bad_message", "no subscription with that id", sub_id=sub_id)
        self.queue.discard(sub_id)
        self.queue.push_control(self.wire.unsubscribed(sub_id))
        return []

    def _subscribed(self, sub: Subscription) -> None:
        self.queue.push_control(self.wire.subscribed(sub.id, sub.after))

    def _error(self, exc: ProtocolError, request: str | None = None) -> Sequence[Action]:
        self.bad_frames += 1
        if self.bad_frames > MAX_BAD_FRAMES:
            return self._close(CLOSE_POLICY, "too_many_errors")
        self.queue.push_control(self.wire.error(exc.code, exc.message, exc.sub_id, request))
        return []

    def _close(self, code: int, reason: str) -> list[Close]:
        self.close()
        return [Close(code, reason)]


class ClientSession(Protocol):
    """What a connection (relay/net/connection.py) asks of a dialect's session: ``Session`` here,
    relay/core/channels.py's ``PhoenixSession`` for the Supabase dialect."""

    claims: Claims | None

    @property
    def user(self) -> str: ...

    @property
    def keys(self) -> tuple[str, ...]: ...

    def subscriptions(self) -> list[Subscription]: ...

    def authenticate(self, token: str, now: float) -> Sequence[Action]: ...

    def receive_text(self, text: str, now: float) -> Sequence[Action]: ...

    def receive_binary(self, data: bytes = b"") -> Sequence[Action]: ...

    def tick(self, now: float) -> Sequence[Close | Abort]: ...

    def went_live(self, sub: Subscription) -> None: ...

    def reset_subscription(self, sub_id: str, reason: str) -> None: ...

    def close(self) -> None: ...
