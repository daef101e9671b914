"""Protocol v1, sans I/O: the state machine of one client connection.

The shell (relay/net/server.py) feeds a ``Session`` the client's frames and the time, and carries
out what it asks for: a ``Close``, or a ``Replay`` of a subscription from the log. Everything the
relay sends goes through the session's bounded ``OutQueue``, which the shell drains to the socket.
docs/protocol.md is the public description of the same rules.

States: AWAITING_AUTH (only ``auth`` is accepted, until ``auth_timeout``), OPEN, CLOSED.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from relay.core.auth import Authenticator, Claims
from relay.core.cursor import Cursor
from relay.core.events import OPS, Event, dumps
from relay.core.filters import RowFilter
from relay.core.outqueue import OutQueue
from relay.core.router import Router
from relay.core.subscription import Subscription
from relay.errors import AuthError, CursorError, ProtocolError

__all__ = [
    "CLOSE_AUTH",
    "CLOSE_GOING_AWAY",
    "CLOSE_POLICY",
    "Abort",
    "Close",
    "Limits",
    "Replay",
    "Session",
    "SessionState",
    "Tracked",
    "parse_subscription",
]

CLOSE_GOING_AWAY: Final = 1001  # the relay is shutting down
CLOSE_POLICY: Final = 1008  # too many bad frames
CLOSE_AUTH: Final = 4001  # missing, invalid or expired token

MAX_ID_LENGTH: Final = 64
MAX_COALESCE_MS: Final = 60_000
MAX_BAD_FRAMES: Final = 100  # errors answered before the connection is closed


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
    """Read the subscription's missed events from the log, then call ``Session.finish_replay``."""

    sub: Subscription
    since: Cursor


Action = Close | Abort | Replay
# (schema, table) -> the columns its events carry (the whitelist, or every column) and its key.
Tracked = Mapping[tuple[str, str], frozenset[str]]


@dataclass(frozen=True, slots=True)
class Limits:
    """``max_filter_bytes`` bounds the estimated memory of a connection's filters, summed over
    its subscriptions (``RowFilter.cost``); a subscribe past it is refused."""

    max_subscriptions: int = 100
    auth_timeout: float = 5.0
    max_filter_bytes: int = 256 * 1024


class Session:
    """One connection's protocol state; also the router's ``Target`` for that connection.

    ``tables`` answers which (schema, table) pairs are tracked; ``epoch`` the log's current epoch.
    """

    def __init__(
        self,
        *,
        conn_id: str,
        router: Router,
        queue: OutQueue,
        authenticator: Authenticator,
        tables: Callable[[], Tracked],
        epoch: Callable[[], str],
        now: float,
        limits: Limits = Limits(),
        on_auth_failure: Callable[[str], None] = lambda reason: None,
        on_reset: Callable[[str], None] = lambda reason: None,
        on_offer: Callable[[], None] = lambda: None,
        direct: Callable[[Subscription, Event], bool] | None = None,
        on_limit: Callable[[str], None] = lambda limit: None,
    ) -> None:
        self.conn_id = conn_id
        self.router = router
        self.queue = queue
        self.authenticator = authenticator
        self.tables = tables
        self.epoch = epoch
        self.limits = limits
        self.on_auth_failure = on_auth_failure
        self.on_offer = on_offer
        self.direct = direct
        self.on_reset = on_reset
        self.on_limit = on_limit
        self.state = SessionState.AWAITING_AUTH
        self.claims: Claims | None = None
        self.auth_deadline = now + limits.auth_timeout
        self.subs: dict[str, Subscription] = {}
        self.bad_frames = 0

    # -- the router's Target ----------------------------------------------------------------

    @property
    def user(self) -> str:
        return self.claims.sub if self.claims is not None else ""

    def offer(self, sub: Subscription, event: Event, now: float) -> None:
        # The shell may write at once when nothing waits before this event (an empty queue, no
        # coalescing window) and its socket takes it; otherwise the bounded queue decides.
        if (
            self.direct is not None
            and sub.coalesce_ms == 0
            and not len(self.queue)
            and self.direct(sub, event)
        ):
            return
        self.queue.offer(sub, event, now)
        self.on_offer()

    # -- input --------------------------------------------------------------------------------

    def authenticate(self, token: str, now: float) -> Sequence[Action]:
        """A token from the ``Authorization: Bearer`` header of the handshake."""
        return self._auth(token, now)

    def receive_text(self, text: str, now: float) -> Sequence[Action]:
        """One text frame from the client."""
        if self.state is SessionState.CLOSED:
            return []
        try:
            message = _parse_object(text)
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
                return self._subscribe(message)
            if kind == "unsubscribe":
                return self._unsubscribe(message)
            if kind == "ping":
                self.queue.push_control('{"type":"pong"}')
                return []
            raise ProtocolError("bad_message", f"unknown message type {_short(kind)}")
        except ProtocolError as exc:
            return self._error(exc)

    def receive_binary(self) -> Sequence[Action]:
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

    # -- replay, driven by the shell --------------------------------------------------------

    def replaying(self, sub: Subscription) -> bool:
        """Whether this very subscription (not a newer one reusing its id) still awaits replay."""
        return self.subs.get(sub.id) is sub and not sub.live

    def replay_events(
        self, sub: Subscription, events: list[Event], scanned_to: int, now: float
    ) -> bool:
        """Queues replayed events; False when the subscription is gone or already live."""
        if not self.replaying(sub):
            return False
        for event in events:
            if event.pos > sub.after and event.op in sub.ops and sub.filter.matches(event):
                self.queue.offer(sub, event, now)
                sub.after = event.pos
        sub.after = max(sub.after, scanned_to)
        return True

    def finish_replay(self, sub: Subscription) -> bool:
        """Makes the subscription live if the replay reached the router's head.

        Returns True when it went live (and ``subscribed`` was queued after every replayed
        event, coalescing window included), False when the head moved on meanwhile (replay
        more) or the subscription is gone (``replaying`` says which). The shell calls this with
        no await between its last replay page and this call.
        """
        if not self.replaying(sub) or sub.after < self.router.head:
            return False
        self.router.go_live(self, sub.id, sub.after)
        self.queue.release_window(sub.id)
        self._subscribed(sub)
        return True

    def reset_subscription(self, sub_id: str, reason: str) -> None:
        """The subscription's history cannot be replayed: the client refetches; live from now."""
        sub = self.subs.get(sub_id)
        if sub is None:
            return
        self.on_reset(reason)
        head = self.router.head
        self.queue.push_control(
            dumps({"type": "reset", "sub": sub_id, "reason": reason, "cursor": self._cursor(head)})
        )
        self.router.go_live(self, sub_id, head)
        self._subscribed(sub)

    def close(self) -> None:
        """The connection is gone: forget it in the router."""
        self.state = SessionState.CLOSED
        self.router.remove(self)
        self.subs.clear()

    # -- handlers -----------------------------------------------------------------------------

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
            self.router.add(self)
            self.queue.push_control(
                dumps(
                    {"type": "ready", "user": claims.sub, "cursor": self._cursor(self.router.head)}
                )
            )
        return []

    def _subscribe(self, message: dict[str, Any]) -> Sequence[Action]:
        sub_id = _sub_id(message.get("id"))
        try:
            if sub_id in self.subs:
                raise ProtocolError("bad_message", "subscription id already in use")
            if len(self.subs) >= self.limits.max_subscriptions:
                raise ProtocolError(
                    "too_many_subscriptions",
                    f"at most {self.limits.max_subscriptions} subscriptions per connection",
                )
            sub, since = parse_subscription(
                message, sub_id, tracked=self.tables(), head=self.router.head, epoch=self.epoch()
            )
            self._check_filter_budget(sub)
        except ProtocolError as exc:
            exc.sub_id = sub_id
            raise
        self.subs[sub_id] = sub
        self.router.subscribe(self, sub)
        if isinstance(since, str):  # a cursor of another epoch: nothing to replay from
            self.reset_subscription(sub_id, since)
            return []
        if since is None:
            self.router.go_live(self, sub_id, sub.after)
            self._subscribed(sub)
            return []
        sub.after = since.pos
        return [Replay(sub, since)]

    def _check_filter_budget(self, sub: Subscription) -> None:
        budget = self.limits.max_filter_bytes
        held = sum(other.filter.cost for other in self.subs.values())
        if held + sub.filter.cost > budget:
            self.on_limit("filter_bytes")
            raise ProtocolError(
                "filter_budget_exceeded",
                f"this filter needs about {sub.filter.cost} bytes and this connection's filters "
                f"hold {held} of {budget} (RELAY_MAX_FILTER_BYTES): use fewer or smaller filters",
            )

    def _unsubscribe(self, message: dict[str, Any]) -> Sequence[Action]:
        sub_id = _sub_id(message.get("id"))
        if self.subs.pop(sub_id, None) is None:
            raise ProtocolError("bad_message", "no subscription with that id", sub_id=sub_id)
        self.router.unsubscribe(self, sub_id)
        self.queue.discard(sub_id)
        self.queue.push_control(dumps({"type": "unsubscribed", "id": sub_id}))
        return []

    def _subscribed(self, sub: Subscription) -> None:
        self.queue.push_control(
            dumps({"type": "subscribed", "id": sub.id, "cursor": self._cursor(sub.after)})
        )

    def _cursor(self, pos: int) -> str:
        return Cursor(self.epoch(), pos).encode()

    def _error(self, exc: ProtocolError) -> Sequence[Action]:
        self.bad_frames += 1
        if self.bad_frames > MAX_BAD_FRAMES:
            return self._close(CLOSE_POLICY, "too_many_errors")
        frame: dict[str, object] = {"type": "error", "code": exc.code, "message": exc.message}
        if exc.sub_id is not None:
            frame["id"] = exc.sub_id
        self.queue.push_control(dumps(frame))
        return []

    def _close(self, code: int, reason: str) -> list[Close]:
        self.close()
        return [Close(code, reason)]


# -- validation of client input: every rule raises ProtocolError with a one-line message ------


def parse_subscription(
    message: Mapping[str, Any],
    sub_id: str,
    *,
    tracked: Tracked,
    head: int,
    epoch: str,
) -> tuple[Subscription, Cursor | str | None]:
    """Validates a subscribe request (websocket message or long-poll query) into a not-yet-live
    Subscription standing at ``head``, and where to resume: None (from now), a Cursor (replay
    after it), or a reset reason for a cursor of another epoch."""
    table, schema = _table(message.get("table")), _schema(message.get("schema"))
    if schema == "relay":
        raise ProtocolError("forbidden", "the relay's own tables cannot be subscribed to")
    carried = [cols for (s, t), cols in tracked.items() if t == table and schema in (None, s)]
    if not carried:
        raise ProtocolError("unknown_table", f"table {_short(table)} is not tracked")
    row_filter = RowFilter.parse(message.get("filter"))
    for column in row_filter.columns:
        if not any(column in cols for cols in carried):
            raise ProtocolError(
                "bad_message", f"filter column {_short(column)} is not carried by {_short(table)}"
            )
    sub = Subscription(
        id=sub_id,
        table=table,
        schema=schema,
        ops=_ops(message.get("ops")),
        filter=row_filter,
        after=head,
        coalesce_ms=_coalesce(message.get("coalesce_ms")),
    )
    return sub, _since(message.get("since"), epoch)


def _parse_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        raise ProtocolError("bad_message", "not valid JSON") from None
    if not isinstance(value, dict):
        raise ProtocolError("bad_message", "a message is a JSON object")
    return value


def _short(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value)[:40] if _jsonable(value) else "?"
    return repr(text[:40])


def _jsonable(value: object) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError, RecursionError):
        return False
    return True


def _utf8_length(value: object) -> int:
    """The UTF-8 length of a client string, or -1 when it is not one (a lone surrogate, which
    JSON's escapes allow, could not be echoed back in a frame)."""
    if not isinstance(value, str):
        return -1
    try:
        return len(value.encode("utf-8"))
    except UnicodeEncodeError:
        return -1


def _sub_id(value: object) -> str:
    if not 0 < _utf8_length(value) <= MAX_ID_LENGTH:
        raise ProtocolError("bad_message", f"id must be a string of 1 to {MAX_ID_LENGTH} bytes")
    assert isinstance(value, str)
    return value


def _table(value: object) -> str:
    if not 0 < _utf8_length(value) <= 63:
        raise ProtocolError("bad_message", "table must be a table name")
    assert isinstance(value, str)
    return value


def _schema(value: object) -> str | None:
    if value is None:
        return None
    if not 0 < _utf8_length(value) <= 63:
        raise ProtocolError("bad_message", "schema must be a schema name")
    assert isinstance(value, str)
    return value


def _ops(value: object) -> frozenset[str]:
    if value is None:
        return OPS
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(op, str) and op in OPS for op in value)
    ):
        raise ProtocolError("bad_message", "ops must be a non-empty list of INSERT, UPDATE, DELETE")
    return frozenset(value)


def _coalesce(value: object) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COALESCE_MS:
        raise ProtocolError(
            "bad_message", f"coalesce_ms must be an integer from 0 to {MAX_COALESCE_MS}"
        )
    return value


def _since(value: object, epoch: str) -> Cursor | str | None:
    """None: from now. A Cursor: replay after it. A str: the reset reason for a foreign epoch."""
    if value is None:
        return None
    try:
        cursor = Cursor.decode(value)
    except CursorError as exc:
        raise ProtocolError("bad_cursor", str(exc)) from None
    if cursor.epoch != epoch:
        return "epoch_changed"
    return cursor
