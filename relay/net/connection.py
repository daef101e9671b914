"""One client connection: the router's target, its session, and how frames reach its socket.

Written once for every streaming transport; a transport (the websocket, relay/net/websocket.py;
an SSE stream, relay/net/sse.py) adds how a frame is written to its socket and what else its
connection does while open (reading the client's frames; waiting for the socket to close).

The router offers each event to the connection (``Connection.offer``): with nothing queued it
writes the frame to its socket at once, as websockets' ``broadcast()`` does, and says so (the hub
counts those deliveries); otherwise the frame takes its bounded ``OutQueue`` and a writer task
drains it with backpressure. Routing never awaits. Replays run the catch-up stepper
(relay/core/catchup.py ``Lockstep``) at the client's pace. The sweeper (relay/net/http.py)
enforces the protocol's timers and the slow-client rule: a socket that has not accepted a frame
for ``slow_client_timeout`` seconds is aborted (a write to a client that never reads waits
forever, and no keepalive notices).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ClassVar, Final

import anyio
import structlog
from websockets.exceptions import ConnectionClosed

from relay.core.auth import Authenticator
from relay.core.catchup import Catchup, LiveTogether, Lockstep, ReadPages, Reset
from relay.core.events import Event
from relay.core.log import LogSource
from relay.core.outqueue import OutQueue
from relay.core.session import Abort, ClientSession, Close, Limits, Replay, Session
from relay.core.subscription import Subscription
from relay.core.wire import V1, Encoder
from relay.errors import LogUnavailable
from relay.net.hub import Hub, Wakeup
from relay.ops.logs import user_label

__all__ = ["CLOSE_GRACE", "DIRECT_WRITE_LIMIT", "WRITE_BATCH", "Connection"]

WRITE_BATCH: Final = 256  # frames popped per writer wake-up
# The fast path writes while the socket's buffer holds less than this; past it, frames queue.
DIRECT_WRITE_LIMIT: Final = 64 * 1024
CLOSE_GRACE: Final = 2.0  # a close that takes longer means: abort

log = structlog.get_logger("relay.net.connection")


class Connection:
    """An idle connection owns no task: a writer task exists only while frames wait (a socket
    that pushes back, a coalescing window); replays run as tasks too. Both run in the server's
    task group (``tasks``) under this connection's cancel scopes, cancelled when it ends.

    A transport subclass hands in the socket (``transport``) and provides whether it takes frames
    now (``_open``), the writes (``_write``, ``_write_event``, ``_send``), the end (``_end``), and
    the rest of the connection's life (``_serve``). A dialect provides its frames (``_wire``) and
    its session (``_session``): protocol v1's here, the Supabase one in relay/net/phoenix.py."""

    kind: ClassVar[str]  # the transport, as metrics label it
    dialect: ClassVar[str] = "v1"  # the dialect, as metrics label it
    _ids = itertools.count(1)

    def __init__(
        self,
        hub: Hub,
        transport: asyncio.Transport,
        *,
        authenticator: Authenticator,
        source: LogSource,
        tasks: anyio.abc.TaskGroup,
    ) -> None:
        settings = hub.settings
        self.hub = hub
        self.transport = transport  # the socket
        self.source = source  # replays
        self.tasks = tasks
        self.conn_id = f"{os.getpid():x}-{next(self._ids):x}"
        # The epoch and the router this connection lives in: a log discontinuity replaces the
        # hub's router and closes every connection (relay/net/hub.py).
        self.router = hub.router
        self.wire: Encoder = self._wire(hub.epoch or "")
        self.queue = OutQueue(
            self.wire, max_messages=settings.queue_max_messages, max_bytes=settings.queue_max_bytes
        )
        self.session: ClientSession = self._session(authenticator)
        self.send_started: float | None = None  # monotonic start of a write still pending
        self.writing = False  # the writer task holds popped frames not yet written
        self.writer_spawned = False  # a writer task is scheduled or running
        self.wakeup: Wakeup | None = None  # wakes the writer waiting on a coalescing window
        self.drained: Wakeup | None = None  # wakes a replay waiting for room in the queue
        self.background: set[anyio.CancelScope] = set()
        self.closing: tuple[int, str] | None = None
        self.user_label: str | None = None

    # -- the dialect: protocol v1 here, the Supabase one in relay/net/phoenix.py --------------

    def _wire(self, epoch: str) -> Encoder:
        return V1(epoch)

    def _session(self, authenticator: Authenticator) -> ClientSession:
        hub = self.hub
        assert isinstance(self.wire, V1)
        return Session(
            target=self,
            router=self.router,
            queue=self.queue,
            wire=self.wire,
            authenticator=authenticator,
            tables=hub.tracked,
            now=time.time(),
            limits=self.limits(),
            on_auth_failure=lambda reason: hub.metrics.auth_failures.labels(reason).inc(),
            on_reset=lambda reason: hub.metrics.resets.labels(reason).inc(),
            on_limit=lambda limit: hub.metrics.client_limits.labels(limit).inc(),
        )

    def limits(self) -> Limits:
        settings = self.hub.settings
        return Limits(settings.max_subscriptions, settings.auth_timeout, settings.max_filter_bytes)

    # -- what a transport provides ------------------------------------------------------------

    def _open(self) -> bool:
        """Whether the socket takes frames now."""
        raise NotImplementedError

    def _write(self, frame: str) -> None:
        """Writes a frame now, past any backpressure (the caller checked the buffer)."""
        raise NotImplementedError

    def _write_event(self, sub_id: str, event: Event) -> None:
        """Writes an event's frame now (the fast path)."""
        raise NotImplementedError

    async def _send(self, frame: str) -> None:
        """Writes a frame, waiting while the socket's buffer is full."""
        raise NotImplementedError

    async def _end(self, code: int, reason: str) -> None:
        """Closes the socket for ``reason`` once the queued frames are written."""
        raise NotImplementedError

    async def _serve(self) -> None:
        """The connection's life: returns when it is over."""
        raise NotImplementedError

    def _caught_up(self) -> None:
        """A catch-up ended (its subscriptions live, or reset and live), in the step that went
        live: what the transport adds after their frames."""

    # -- life -----------------------------------------------------------------------------------

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
        hub.metrics.connections.opened(self.kind, self.dialect)
        try:
            await self._serve()
        finally:
            for scope in list(self.background):
                scope.cancel()
            hub.heap.released(sum(sub.filter.cost for sub in self.session.subscriptions()))
            self.session.close()
            hub.connections.pop(self.conn_id, None)
            hub.metrics.connections.closed(self.kind, self.dialect)
            self._count_dropped()

    def _spawn(self, fn: Callable[..., Awaitable[None]], *args: Any) -> None:
        """Runs fn in the server's task group, cancelled when this connection ends."""

        async def guarded() -> None:
            with anyio.CancelScope() as scope:
                self.background.add(scope)
                try:
                    await fn(*args)
                except (ConnectionClosed, ConnectionError):
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

    def _log_auth(self) -> None:
        self.user_label = user_label(self.session.user, self.hub.settings.log_user_ids)
        self.log.info("authenticated")

    async def _act(self, actions: Sequence[Close | Abort | Replay]) -> bool:
        """Carries out the session's actions; True when the connection is to end."""
        replays = []
        for action in actions:
            if isinstance(action, Close):
                self.log.info("closing", code=action.code, reason=action.reason)
                await self._close(action.code, action.reason)
                return True
            if isinstance(action, Abort):
                self._abort(action.reason)
                return True
            replays.append(action)
        if replays:
            self._spawn(self._catch_up, replays)
        return False

    # -- ending -------------------------------------------------------------------------------

    def _abort(self, reason: str) -> None:
        self.hub.metrics.drops.labels("slow_client").inc()
        self.log.warning("aborted", reason=reason)
        self.abort()

    def abort(self) -> None:
        self.transport.abort()

    def close_soon(self, code: int, reason: str) -> None:
        if self.closing is None:
            self.closing = (code, reason)
            self._spawn(self._close, code, reason)

    async def _close(self, code: int, reason: str) -> None:
        """Sends what is queued (an error, a reset), then ends the socket; aborts a socket that
        does not take them within CLOSE_GRACE."""
        with anyio.move_on_after(CLOSE_GRACE) as scope:
            for frame in self.queue.pop_ready(time.time()):
                await self._send(frame)
            await self._end(code, reason)
        if scope.cancelled_caught:
            self.abort()

    def check(self, now: float, monotonic: float) -> None:
        """The sweeper's visit: the session's timers and the slow-client rule."""
        actions = self.session.tick(now)
        for action in actions:
            if isinstance(action, Abort):
                self._abort(action.reason)
                return
            self.close_soon(action.code, action.reason)
        if not actions and self.closing is None and len(self.queue) and not self.writer_spawned:
            self.flush()  # frames a timer queued (the Supabase dialect's expiry: system, close)
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
            self._write_event(sub.id, event)
            return True
        self.queue.offer(sub, event, now)
        self.flush()
        return False

    def _can_write_now(self) -> bool:
        return (
            not self.writing
            and self.closing is None
            and self._open()
            and self.transport.get_write_buffer_size() <= DIRECT_WRITE_LIMIT
        )

    def flush(self) -> None:
        """Writes the queue's ready frames while the socket takes them; leaves the rest (and
        any coalescing deadline) to a writer task, started if none runs."""
        now = time.time()
        while self._can_write_now() and (batch := self.queue.pop_ready_timed(now, 1)):
            frame, committed_at = batch[0]
            self._write(frame)
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
        """Drains the queue with backpressure (``_send`` waits while the socket is full) and
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
                            await self._send(frame)
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

    async def _catch_up(self, replays: Sequence[Replay]) -> None:
        """Catches subscriptions up from their cursors together (relay/core/catchup.py), paced
        by the client's drain; then they are live, or reset when the log cannot resume."""
        settings = self.hub.settings
        page_size = min(settings.replay_batch, max(1, settings.queue_max_messages // 2))
        router = self.router
        lockstep = Lockstep(
            router, [Catchup(router, self, r.sub, r.since, limit=page_size) for r in replays]
        )
        source = self.source
        try:
            step = lockstep.start(await source.state(), time.monotonic())
            while isinstance(step, ReadPages):
                pages = [
                    await source.page(self.session.keys, sub, read.after, read.upto, read.limit)
                    for sub, read in step.reads
                ]
                for sub, event in lockstep.feed(pages):
                    await self._room_for_replay()
                    if not lockstep.pending():
                        return
                    self.queue.offer(sub, event, time.time())
                    self.flush()
                step = lockstep.next(time.monotonic())  # live: no await since the target check
            if isinstance(step, LiveTogether):
                now = time.time()
                for sub, event in step.events:  # held while catching up: before anything live
                    self.queue.offer(sub, event, now)
                for replay in replays:
                    self.session.went_live(replay.sub)
                self._caught_up()
                self.flush()
            elif isinstance(step, Reset):
                for replay in replays:
                    self.session.reset_subscription(replay.sub.id, step.reason)
                self._caught_up()
                self.flush()
        except LogUnavailable as exc:
            # The database is unreachable: the client retries with the same cursor.
            self.log.warning("replay_failed", error=str(exc))
            self.close_soon(1011, "replay_unavailable")
