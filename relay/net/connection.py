"""One websocket client: the router's target, its session, and how frames reach its socket.

The router offers each event to the connection (``Connection.offer``): with nothing queued it
writes the frame to its socket at once, as websockets' ``broadcast()`` does, and says so (the hub
counts those deliveries); otherwise the frame takes its bounded ``OutQueue`` and a writer task
drains it with backpressure. Routing never awaits. A replay runs the catch-up stepper
(relay/core/catchup.py) at the client's pace. The sweeper (relay/net/http.py) enforces the
protocol's timers and the slow-client rule: a socket that has not accepted a frame for
``slow_client_timeout`` seconds is aborted (websockets' ``send`` to a client that never reads
blocks forever, and its keepalive ping does not notice).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

import anyio
import structlog
from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from relay.core.auth import Authenticator
from relay.core.catchup import Catchup, Live, ReadPage, Reset
from relay.core.events import Event
from relay.core.log import LogSource
from relay.core.outqueue import OutQueue
from relay.core.session import CLOSE_POLICY, Abort, Close, Limits, Replay, Session
from relay.core.subscription import Subscription
from relay.core.wire import V1
from relay.errors import LogUnavailable
from relay.net.hub import Hub, Wakeup
from relay.net.responses import bearer_token
from relay.net.sockets import RATE_LIMITED, LimitedServerConnection
from relay.ops.logs import user_label

__all__ = ["CLOSE_GRACE", "DIRECT_WRITE_LIMIT", "WRITE_BATCH", "Connection", "forget_handshake"]

WRITE_BATCH: Final = 256  # frames popped per writer wake-up
# The fast path writes while the socket's buffer holds less than this; past it, frames queue.
DIRECT_WRITE_LIMIT: Final = 64 * 1024
CLOSE_GRACE: Final = 2.0  # a close handshake that takes longer means: abort

log = structlog.get_logger("relay.net.connection")


def forget_handshake(ws: ServerConnection) -> None:
    """Drops the handshake's headers, which websockets keeps for the connection's whole life
    (cookies, user agent...: only the token was needed). The objects stay (websockets checks that
    the request exists), empty. The request's headers are emptied in place: the protocol's parser,
    a generator running as long as the connection, holds the same request in a local variable."""
    if ws.request is not None:
        ws.request.headers.clear()
    if ws.response is not None:
        ws.response = dataclasses.replace(ws.response, headers=Headers(), body=b"")


class Connection:
    """An idle connection owns no task: a writer task exists only while frames wait (a socket
    that pushes back, a coalescing window); replays run as tasks too. Both run in the server's
    task group (``tasks``) under this connection's cancel scopes, cancelled when it ends."""

    _ids = itertools.count(1)

    def __init__(
        self,
        hub: Hub,
        ws: ServerConnection,
        *,
        authenticator: Authenticator,
        source: LogSource,
        tasks: anyio.abc.TaskGroup,
    ) -> None:
        settings = hub.settings
        self.hub = hub
        self.ws = ws
        self.source = source  # replays
        self.tasks = tasks
        self.conn_id = f"{os.getpid():x}-{next(self._ids):x}"
        # The epoch and the router this connection lives in: a log discontinuity replaces the
        # hub's router and closes every connection (relay/net/hub.py).
        self.router = hub.router
        self.wire = V1(hub.epoch or "")
        self.queue = OutQueue(
            self.wire, max_messages=settings.queue_max_messages, max_bytes=settings.queue_max_bytes
        )
        self.session = Session(
            target=self,
            router=self.router,
            queue=self.queue,
            wire=self.wire,
            authenticator=authenticator,
            tables=hub.tracked,
            now=time.time(),
            limits=Limits(
                settings.max_subscriptions, settings.auth_timeout, settings.max_filter_bytes
            ),
            on_auth_failure=lambda reason: hub.metrics.auth_failures.labels(reason).inc(),
            on_reset=lambda reason: hub.metrics.resets.labels(reason).inc(),
            on_limit=lambda limit: hub.metrics.client_limits.labels(limit).inc(),
        )
        self.send_started: float | None = None  # monotonic start of a write still pending
        self.writing = False  # the writer task holds popped frames not yet written
        self.writer_spawned = False  # a writer task is scheduled or running
        self.wakeup: Wakeup | None = None  # wakes the writer waiting on a coalescing window
        self.drained: Wakeup | None = None  # wakes a replay waiting for room in the queue
        self.background: set[anyio.CancelScope] = set()
        # No extension (permessage-deflate) negotiated: frames are plain RFC 6455 text frames.
        self.plain_frames = not ws.protocol.extensions
        self.closing: tuple[int, str] | None = None
        self.user_label: str | None = None
        if isinstance(ws, LimitedServerConnection):
            ws.on_limited = self._inbound_limited
            if ws.limited:  # before this handler ran
                self._inbound_limited()

    @property
    def user(self) -> str:
        """The authenticated user id (the router's index key)."""
        return self.session.user

    @property
    def log(self) -> Any:
        """Bound on use, not per connection: an idle connection carries no logger."""
        return (
            log.bind(conn=self.conn_id, user=self.user_label)
            if self.user_label
            else log.bind(conn=self.conn_id)
        )

    async def run(self) -> None:
        hub = self.hub
        hub.connections[self.conn_id] = self
        hub.metrics.connections.opened()
        try:
            await self._reader()
        finally:
            for scope in list(self.background):
                scope.cancel()
            hub.heap.released(sum(sub.filter.cost for sub in self.session.subscriptions()))
            self.session.close()
            hub.connections.pop(self.conn_id, None)
            hub.metrics.connections.closed()
            self._count_dropped()

    def _spawn(self, fn: Callable[..., Awaitable[None]], *args: Any) -> None:
        """Runs fn in the server's task group, cancelled when this connection ends."""

        async def guarded() -> None:
            with anyio.CancelScope() as scope:
                self.background.add(scope)
                try:
                    await fn(*args)
                except ConnectionClosed:
                    pass
                except Exception:  # one connection's failure must not end the server
                    self.log.exception("connection_task_failed")
                    self.abort()
                finally:
                    self.background.discard(scope)

        self.tasks.start_soon(guarded)

    def _count_dropped(self) -> None:
        metrics = self.hub.metrics
        if self.queue.dropped:
            metrics.drops.labels("overflow").inc(self.queue.dropped)
            self.queue.dropped = 0
        if self.queue.resets:
            metrics.resets.labels("overflow").inc(self.queue.resets)
            self.queue.resets = 0

    # -- reading ------------------------------------------------------------------------------

    async def _reader(self) -> None:
        header = self.ws.request.headers.get("Authorization") if self.ws.request else None
        forget_handshake(self.ws)
        if (token := bearer_token(header)) is not None:
            if await self._act(self.session.authenticate(token, time.time())):
                return
            self.flush()  # ready
            self._log_auth()
        try:
            async for message in self.ws:
                if self._limited():
                    continue  # frames queued before the budget ran out: not acted on
                authed = self.session.claims is not None
                if isinstance(message, str):
                    actions = self.session.receive_text(message, time.time())
                else:
                    actions = self.session.receive_binary()
                if await self._act(actions):
                    return
                self.flush()  # the answers the session queued (pong, subscribed, errors)
                if not authed and self.session.claims is not None:
                    self._log_auth()
        except ConnectionClosed:
            return

    def _limited(self) -> bool:
        return isinstance(self.ws, LimitedServerConnection) and self.ws.limited

    def _inbound_limited(self) -> None:
        """The client sent past its inbound budget; the library has sent close 1008
        ``rate_limited`` and discards what follows. A client that does not close its side
        within CLOSE_GRACE is aborted."""
        self.hub.metrics.client_limits.labels("inbound_rate").inc()
        self.log.warning("closing", code=CLOSE_POLICY, reason=RATE_LIMITED)
        if self.closing is None:
            self.closing = (CLOSE_POLICY, RATE_LIMITED)
        self._spawn(self._abort_unless_closed)

    async def _abort_unless_closed(self) -> None:
        with anyio.move_on_after(CLOSE_GRACE):
            await self.ws.wait_closed()
            return
        self.abort()

    def _log_auth(self) -> None:
        self.user_label = user_label(self.session.user, self.hub.settings.log_user_ids)
        self.log.info("authenticated")

    async def _act(self, actions: Sequence[Close | Abort | Replay]) -> bool:
        """Carries out the session's actions; True when the connection is to end."""
        for action in actions:
            if isinstance(action, Close):
                self.log.info("closing", code=action.code, reason=action.reason)
                await self._close(action.code, action.reason)
                return True
            if isinstance(action, Abort):
                self._abort(action.reason)
                return True
            self._spawn(self._replay, action)
        return False

    # -- ending -------------------------------------------------------------------------------

    def _abort(self, reason: str) -> None:
        self.hub.metrics.drops.labels("slow_client").inc()
        self.log.warning("aborted", reason=reason)
        self.abort()

    def abort(self) -> None:
        transport = self.ws.transport
        if transport is not None:
            transport.abort()

    def close_soon(self, code: int, reason: str) -> None:
        if self.closing is None:
            self.closing = (code, reason)
            self._spawn(self._close, code, reason)

    async def _close(self, code: int, reason: str) -> None:
        """Sends what is queued (an error, a reset), then the close frame; aborts a socket that
        does not take them within CLOSE_GRACE."""
        with anyio.move_on_after(CLOSE_GRACE) as scope:
            for frame in self.queue.pop_ready(time.time()):
                await self.ws.send(frame)
            await self.ws.close(code, reason)
        if scope.cancelled_caught:
            self.abort()

    def check(self, now: float, monotonic: float) -> None:
        """The sweeper's visit: the session's timers and the slow-client rule."""
        for action in self.session.tick(now):
            if isinstance(action, Abort):
                self._abort(action.reason)
                return
            self.close_soon(action.code, action.reason)
        started = self.send_started
        if started is not None and monotonic - started > self.hub.settings.slow_client_timeout:
            self._abort("not_draining")

    # -- writing ------------------------------------------------------------------------------

    def offer(self, sub: Subscription, event: Event, now: float) -> bool:
        """The router's delivery. The fast path writes the event's frame to the socket now, as
        websockets' broadcast() does, when nothing waits before it (an empty queue, no coalescing
        window, no writer holding frames) and the socket's buffer is low: True, and the hub
        counts the delivery. Otherwise the bounded queue takes it (the writer task drains it
        with backpressure): False."""
        if sub.coalesce_ms == 0 and not len(self.queue) and self._can_write_now():
            if self.plain_frames:
                # Without extensions a server's text frame is the same bytes on every
                # connection: write the event's cached frame, as websockets would have framed it.
                self.ws.transport.write(self.wire.event_frame(sub.id, event))
            else:
                self.ws.protocol.send_text(self.wire.event(sub.id, event).encode())
                self.ws.send_data()
            return True
        self.queue.offer(sub, event, now)
        self.flush()
        return False

    def _can_write_now(self) -> bool:
        ws = self.ws
        transport = ws.transport
        return (
            not self.writing
            and self.closing is None
            and ws.protocol.state is State.OPEN
            and transport is not None
            and transport.get_write_buffer_size() <= DIRECT_WRITE_LIMIT
        )

    def flush(self) -> None:
        """Writes the queue's ready frames while the socket takes them; leaves the rest (and
        any coalescing deadline) to a writer task, started if none runs."""
        now = time.time()
        while self._can_write_now() and (batch := self.queue.pop_ready_timed(now, 1)):
            frame, committed_at = batch[0]
            self.ws.protocol.send_text(frame.encode())
            self.ws.send_data()
            if committed_at is not None:
                self.hub.delivered(committed_at, now)
        if self.drained is not None and len(self.queue) <= self.queue.max_messages // 2:
            self.drained.set()
        if len(self.queue) == 0:
            self._count_dropped()
            return
        if not self.writer_spawned:
            if self.closing is None:
                self.writer_spawned = True  # set now: start_soon runs it later
                self._spawn(self._writer)
        elif self.wakeup is not None:
            self.wakeup.set()

    async def _writer(self) -> None:
        """Drains the queue with backpressure (``send`` waits while the socket is full) and
        wakes for coalescing windows; ends when nothing waits."""
        self.wakeup = Wakeup()
        try:
            while self.closing is None:
                now = time.time()
                frames = self.queue.pop_ready_timed(now, WRITE_BATCH)
                if frames:
                    self.writing = True  # the fast path must not write past these
                    try:
                        for frame, committed_at in frames:
                            self.send_started = time.monotonic()
                            await self.ws.send(frame)
                            self.send_started = None
                            if committed_at is not None:
                                self.hub.delivered(committed_at, time.time())
                    finally:
                        self.writing = False
                    continue
                if self.drained is not None:
                    self.drained.set()
                deadline = self.queue.next_deadline()
                if deadline is None:
                    self._count_dropped()
                    return
                await self.wakeup.wait(max(0.0, deadline - now))
        finally:
            self.writer_spawned = False
            self.wakeup = None

    # -- replay -------------------------------------------------------------------------------

    async def _room_for_replay(self) -> None:
        """Replay goes at the client's pace: it waits while the queue is half full (by count or
        bytes), so a long replay never overflows the queue; live events keep their room."""
        queue = self.queue
        while len(queue) > queue.max_messages // 2 or queue.pending_bytes > queue.max_bytes // 2:
            if self.drained is None:
                self.drained = Wakeup()
            await self.drained.wait(1.0)

    async def _replay(self, action: Replay) -> None:
        """Catches a subscription up from its cursor (relay/core/catchup.py), paced by the
        client's drain; then it is live, or reset when the log cannot resume from the cursor."""
        settings = self.hub.settings
        sub = action.sub
        page_size = min(settings.replay_batch, max(1, settings.queue_max_messages // 2))
        catchup = Catchup(self.router, self, sub, action.since, limit=page_size)
        source = self.source
        try:
            step = catchup.start(await source.state(), time.monotonic())
            while isinstance(step, ReadPage):
                page = await source.page(self.user, sub, step.after, step.upto, step.limit)
                for event in catchup.feed(page):
                    await self._room_for_replay()
                    if not catchup.pending():
                        return
                    self.queue.offer(sub, event, time.time())
                    self.flush()
                step = catchup.next(time.monotonic())  # Live: no await since the head check
            if isinstance(step, Live):
                now = time.time()
                for event in step.events:  # held while catching up: before anything live
                    self.queue.offer(sub, event, now)
                self.session.went_live(sub)
                self.flush()
            elif isinstance(step, Reset):
                self.session.reset_subscription(sub.id, step.reason)
                self.flush()
        except LogUnavailable as exc:
            # The database is unreachable: the client retries with the same cursor.
            self.log.warning("replay_failed", error=str(exc))
            self.close_soon(1011, "replay_unavailable")
