"""The websocket and HTTP shell around the protocol core.

``Hub`` receives batches of events from the log reader and routes them (relay/core/router.py) into
each connection's bounded ``OutQueue``; routing never touches a socket. Each connection has a
writer task that drains its queue to the socket and a watchdog that enforces the protocol's
timers and the slow-client rule: a connection whose socket has not accepted a frame for
``slow_client_timeout`` seconds is aborted (websockets' ``send`` to a client that never reads
blocks forever, and its keepalive ping does not notice).
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import itertools
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ClassVar, Final

import anyio
import structlog
from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame
from websockets.http11 import Request, Response
from websockets.protocol import Event as WsEvent
from websockets.protocol import State

from relay.core.admission import Admission, Intake, client_address
from relay.core.auth import Authenticator
from relay.core.events import Event
from relay.core.inbound import InboundBudget, InboundLimits
from relay.core.log import LogSource, resume_problem
from relay.core.outqueue import OutQueue
from relay.core.session import CLOSE_POLICY, Abort, Close, Limits, Replay, Session
from relay.core.subscription import Subscription
from relay.errors import LogUnavailable
from relay.net.hub import Hub, Wakeup
from relay.net.longpoll import handle_poll
from relay.net.responses import (
    Handler,
    bearer_token,
    cors_headers,
    repeated_header,
    response,
    text,
)
from relay.ops.heap import malloc_trim
from relay.ops.logs import user_label

__all__ = ["GuardedConnection", "LimitedServerConnection", "SocketGuard", "WebsocketShell"]

WS_PATH: Final = "/v1/ws"
POLL_PATH: Final = "/v1/poll"
OPS_PATHS: Final = frozenset({"/healthz", "/readyz", "/metrics"})
WRITE_BATCH: Final = 256  # frames popped per writer wake-up
# The fast path writes while the socket's buffer holds less than this; past it, frames queue.
DIRECT_WRITE_LIMIT: Final = 64 * 1024
SWEEP_INTERVAL: Final = 0.5  # resolution of the auth timeout, token expiry and slow-client rule
CLOSE_GRACE: Final = 2.0  # a close handshake that takes longer means: abort
RATE_LIMITED: Final = "rate_limited"  # close reason (1008) past the inbound budget

log = structlog.get_logger("relay.net.server")


class LimitedServerConnection(ServerConnection):
    """websockets' server connection with the inbound budget (relay/core/inbound.py) applied to each
    frame the client sends, as the library parses it: data, continuation, ping, pong and close
    frames alike. Pings are answered inside the library and never reach the relay's reader, so
    this is the one place that sees them all. Past the budget the connection is failed at once:
    a close frame 1008 ``rate_limited`` goes out, and what the client sends next is discarded
    unparsed (no pong, no message). ``inbound_limits`` is set per server (WebsocketShell)."""

    inbound_limits = InboundLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.inbound = InboundBudget(self.inbound_limits, time.monotonic())
        self.limited = False
        self.on_limited: Callable[[], None] = lambda: None

    def process_event(self, event: WsEvent) -> None:
        if self.limited:
            return
        if (
            isinstance(event, Frame)
            and self.request is not None
            and not self.inbound.take(len(event.data), time.monotonic())
        ):
            self.limited = True
            self.protocol.fail(CLOSE_POLICY, RATE_LIMITED)
            self.send_data()
            self.on_limited()
            return
        super().process_event(event)


class Connection:
    """One websocket client: its session and bounded queue, and how frames reach its socket.

    An idle connection owns no task: frames are written synchronously (``flush``) while the
    socket takes them. A writer task exists only while frames wait (a socket that pushes back,
    a coalescing window); replays run as tasks too. Both run in the server's task group under
    this connection's cancel scopes, cancelled when it ends. The hub's sweeper enforces the
    timers (auth, expiry, the slow-client rule) for every connection at once.
    """

    _ids = itertools.count(1)

    def __init__(self, shell: WebsocketShell, ws: ServerConnection) -> None:
        hub = shell.hub
        settings = hub.settings
        self.shell = shell
        self.ws = ws
        self.id = f"{os.getpid():x}-{next(self._ids):x}"
        self.queue = OutQueue(
            epoch=hub.epoch or "",
            max_messages=settings.queue_max_messages,
            max_bytes=settings.queue_max_bytes,
        )
        self.session = Session(
            conn_id=self.id,
            router=hub.router,
            queue=self.queue,
            authenticator=shell.authenticator,
            tables=hub.tracked,
            epoch=lambda: hub.epoch or "",
            now=time.time(),
            limits=Limits(
                settings.max_subscriptions, settings.auth_timeout, settings.max_filter_bytes
            ),
            on_auth_failure=lambda reason: hub.metrics.auth_failures.labels(reason).inc(),
            on_reset=lambda reason: hub.metrics.resets.labels(reason).inc(),
            on_offer=self.flush,
            direct=self.write_direct,
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
    def log(self) -> Any:
        """Bound on use, not per connection: an idle connection carries no logger."""
        return (
            log.bind(conn=self.id, user=self.user_label)
            if self.user_label
            else log.bind(conn=self.id)
        )

    async def run(self) -> None:
        hub = self.shell.hub
        hub.connections[self.id] = self
        hub.metrics.connections.opened()
        try:
            await self._reader()
        finally:
            for scope in list(self.background):
                scope.cancel()
            hub.heap.released(sum(sub.filter.cost for sub in self.session.subs.values()))
            self.session.close()
            hub.connections.pop(self.id, None)
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

        self.shell.tasks.start_soon(guarded)

    def _count_dropped(self) -> None:
        metrics = self.shell.hub.metrics
        if self.queue.dropped:
            metrics.drops.labels("overflow").inc(self.queue.dropped)
            self.queue.dropped = 0
        if self.queue.resets:
            metrics.resets.labels("overflow").inc(self.queue.resets)
            self.queue.resets = 0

    def _forget_handshake(self) -> None:
        """websockets keeps the handshake's request and response, with every header a browser
        sent (cookies, user agent...), for the connection's whole life; only the token was
        needed. The objects stay (websockets checks that the request exists), empty."""
        ws = self.ws
        if ws.request is not None:
            ws.request = dataclasses.replace(ws.request, headers=Headers())
        if ws.response is not None:
            ws.response = dataclasses.replace(ws.response, headers=Headers(), body=b"")

    async def _reader(self) -> None:
        header = self.ws.request.headers.get("Authorization") if self.ws.request else None
        self._forget_handshake()
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
        self.shell.hub.metrics.client_limits.labels("inbound_rate").inc()
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
        self.user_label = user_label(self.session.user, self.shell.hub.settings.log_user_ids)
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

    def _abort(self, reason: str) -> None:
        self.shell.hub.metrics.drops.labels("slow_client").inc()
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

    # -- writing ------------------------------------------------------------------------------

    def write_direct(self, sub: Subscription, event: Event) -> bool:
        """The fast path: writes the event's frame to the socket now, as websockets' broadcast()
        does, when nothing is queued before it and the socket's buffer is low. False otherwise,
        and the event takes the bounded queue and the writer task (with backpressure)."""
        if not self._can_write_now():
            return False
        if self.plain_frames:
            # Without extensions a server's text frame is the same bytes on every connection:
            # write the event's cached frame, as websockets itself would have framed it.
            self.ws.transport.write(event.wire_frame(sub.id, self.queue.epoch))
        else:
            self.ws.protocol.send_text(event.frame(sub.id, self.queue.epoch).encode())
            self.ws.send_data()
        self.shell.hub.written_directly()
        return True

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
        metrics = self.shell.hub.metrics
        now = time.time()
        while self._can_write_now() and (batch := self.queue.pop_ready_timed(now, 1)):
            frame, committed_at = batch[0]
            self.ws.protocol.send_text(frame.encode())
            self.ws.send_data()
            if committed_at is not None:
                metrics.deliveries.inc()
                metrics.delivery_lag.observe(max(0.0, now - committed_at.timestamp()))
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
        metrics = self.shell.hub.metrics
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
                                metrics.deliveries.inc()
                                lag = max(0.0, time.time() - committed_at.timestamp())
                                metrics.delivery_lag.observe(lag)
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

    def check(self, now: float, monotonic: float) -> None:
        """The sweeper's visit: the session's timers and the slow-client rule."""
        for action in self.session.tick(now):
            if isinstance(action, Abort):
                self._abort(action.reason)
                return
            self.close_soon(action.code, action.reason)
        started = self.send_started
        if (
            started is not None
            and monotonic - started > self.shell.hub.settings.slow_client_timeout
        ):
            self._abort("not_draining")

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
        """Replays a subscription from its cursor, paced by the client's drain, then goes live."""
        hub = self.shell.hub
        session = self.session
        sub = action.sub
        settings = hub.settings
        source = self.shell.source
        try:
            state = await source.state()
            reason = resume_problem(action.since, state)
            if reason is not None:
                if session.replaying(sub):
                    session.reset_subscription(sub.id, reason)
                    self.flush()
                return
            page_size = min(settings.replay_batch, max(1, settings.queue_max_messages // 2))
            while session.replaying(sub):
                if sub.after >= hub.router.head:
                    # No await since reading the head: nothing was routed in between.
                    session.finish_replay(sub)
                    self.flush()
                    return
                page = await source.page(session.user, sub, sub.after, hub.router.head, page_size)
                for event in page.events:
                    await self._room_for_replay()
                    if not session.replay_events(sub, [event], 0, time.time()):
                        return
                    self.flush()
                session.replay_events(sub, [], page.scanned_to, time.time())
        except LogUnavailable as exc:
            # The database is unreachable: the client retries with the same cursor.
            self.log.warning("replay_failed", error=str(exc))
            self.close_soon(1011, "replay_unavailable")


class SocketGuard:
    """Bounds one listening port's sockets from TCP accept on (relay/core/admission.py ``Intake``),
    before websockets has read a request: a socket beyond a bound is closed at once, and a
    socket whose HTTP request is not complete within ``request_timeout`` is closed then. The
    time a long-poll takes to answer (the websockets server's ``open_timeout``) is separate."""

    def __init__(
        self,
        intake: Intake,
        request_timeout: float,
        on_refused: Callable[[str], None],
        trusted_proxies: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network] = (),
    ) -> None:
        self.intake = intake
        self.request_timeout = request_timeout
        self.on_refused = on_refused
        self.trusted_proxies = tuple(trusted_proxies)

    def connection_class(
        self, base: type[ServerConnection] = ServerConnection
    ) -> type[ServerConnection]:
        """The ``create_connection`` for websockets' serve(): ``base`` connections (the clients'
        port passes the inbound-limited class) bound to this guard."""
        return type("GuardedConnection", (GuardedConnection, base), {"guard": self})

    def limited_address(self, peer: str) -> str | None:
        """The address whose per-address bound a socket counts against; None for a trusted
        proxy (its clients are told apart only once their request is read)."""
        try:
            address = ipaddress.ip_address(peer.split("%", 1)[0])
        except ValueError:
            return peer
        if any(address in network for network in self.trusted_proxies):
            return None
        return peer


class GuardedConnection(ServerConnection):
    """websockets' ServerConnection, counted by its port's ``SocketGuard`` from TCP accept
    (asyncio's ``connection_made``) until its request is complete and until it closes."""

    guard: ClassVar[SocketGuard]
    _address: str | None = None
    _counted = False  # open in the guard's intake: released once, on connection_lost
    _handshaking = False  # its request is not complete yet
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        guard = self.guard
        peer = transport.get_extra_info("peername")
        self._address = guard.limited_address(str(peer[0]) if peer else "")
        decision = guard.intake.accept(self._address)
        if not decision.admitted:
            guard.on_refused(decision.reason)
            self.transport.abort()  # the handler sees no request and ends
            return
        self._counted = self._handshaking = True
        self._deadline = self.loop.call_later(guard.request_timeout, self._request_late)

    def _request_late(self) -> None:
        if self._handshaking:
            self.guard.on_refused("request_timeout")
            self.transport.abort()

    def _request_done(self) -> None:
        if self._handshaking:
            self._handshaking = False
            self.guard.intake.request_complete(self._address)
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def process_event(self, event: Any) -> None:
        if self.request is None:
            self._request_done()
        super().process_event(event)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._counted:
            self._counted = False
            self.guard.intake.closed(self._address, handshaking=self._handshaking)
            self._handshaking = False
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        super().connection_lost(exc)


class WebsocketShell:
    """The websockets server's callbacks: HTTP routes, handshake checks, connections."""

    def __init__(
        self,
        hub: Hub,
        authenticator: Authenticator,
        source: LogSource,
        *,
        poll_source: LogSource | None = None,
        max_sockets: int,
        extra: Handler | None = None,
    ) -> None:
        settings = hub.settings
        self.extra = extra  # routes handed in (the demo's), asked before the relay's own
        self.hub = hub
        self.authenticator = authenticator
        self.source = source  # replays
        self.poll_source = poll_source or source  # long-polls
        self.admission = Admission(
            allowed_origins=settings.allowed_origins,
            rate_per_ip=settings.connect_rate_per_ip,
            max_open_per_ip=settings.max_connections_per_ip,
            ipv6_prefix=settings.ipv6_prefix,
        )
        self.trusted_proxies = [
            ipaddress.ip_network(n, strict=False) for n in settings.trusted_proxies
        ]
        intake = Intake(
            max_sockets=max_sockets,
            max_handshakes=settings.max_handshakes,
            max_handshakes_per_address=settings.max_handshakes_per_ip,
            ipv6_prefix=settings.ipv6_prefix,
        )
        self.guard = SocketGuard(
            intake, settings.request_timeout, self.count_refused, self.trusted_proxies
        )
        hub.metrics.handshakes_in_progress.set_function(lambda: intake.handshakes)
        limits = InboundLimits(
            settings.inbound_frame_rate, settings.inbound_byte_rate, settings.max_message_bytes
        )

        class _Limited(LimitedServerConnection):
            inbound_limits = limits

        self.connection_class: type[LimitedServerConnection] = _Limited  # for serve()
        self.addresses: dict[int, str] = {}  # id(connection) -> admitted client address
        self.task_group: anyio.abc.TaskGroup | None = None  # the server's; set before it serves

    @property
    def tasks(self) -> anyio.abc.TaskGroup:
        assert self.task_group is not None, "the shell's task group is set before serving"
        return self.task_group

    async def sweep(self) -> None:
        """Visits every connection on an interval: protocol timers and the slow-client rule,
        for all connections from one task instead of one task each."""
        while True:
            await anyio.sleep(SWEEP_INTERVAL)
            now, monotonic = time.time(), time.monotonic()
            for connection in list(self.hub.connections.values()):
                connection.check(now, monotonic)
            if self.hub.heap.due(monotonic):
                await anyio.to_thread.run_sync(malloc_trim)

    def process_ops_request(self, connection: ServerConnection, request: Request) -> Response:
        """/healthz, /readyz and /metrics: on the main port, or alone on the metrics port."""
        path = request.path.split("?", 1)[0]
        if path == "/healthz":
            return text(200, "ok\n")
        if path == "/readyz":
            return text(200, "ready\n") if self.hub.ready() else text(503, "not ready\n")
        if path == "/metrics":
            from prometheus_client import CONTENT_TYPE_LATEST

            return response(200, self.hub.metrics.render(), CONTENT_TYPE_LATEST)
        return text(404, "not found\n")

    def _refuse(self, status: int, reason: str, body: str) -> Response:
        self.hub.metrics.refused.labels(reason).inc()
        return text(status, body)

    def count_refused(self, reason: str) -> None:
        """A socket closed by the guard: counted, and logged (rate-limited: relay/ops/logs.py)."""
        self.hub.metrics.refused.labels(reason).inc()
        log.warning("socket_refused", reason=reason)

    async def process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        path = request.path.split("?", 1)[0]
        hub = self.hub
        if path in OPS_PATHS:
            # With a separate metrics port, /metrics is served there only; health on both.
            if path == "/metrics" and hub.settings.metrics_port:
                return text(404, "not found\n")
            return self.process_ops_request(connection, request)
        if (repeated := repeated_header(request.headers)) is not None:
            return self._refuse(400, "bad_header", f"more than one {repeated} header\n")
        if self.extra is not None and (answer := await self.extra(request)) is not None:
            return answer
        if path not in (WS_PATH, POLL_PATH):
            return text(404, "not found\n")
        origin = self.admission.check_origin(request.headers.get("Origin"))
        if not origin.admitted:
            return self._refuse(origin.status, origin.reason, "origin not allowed\n")
        cors = cors_headers(request.headers.get("Origin")) if path == POLL_PATH else []
        if path == POLL_PATH and request.method == "OPTIONS":  # a browser's CORS preflight
            return response(204, b"", "text/plain", cors)
        if request.method != "GET":
            return response(405, b"only GET\n", "text/plain", [("Allow", "GET"), *cors])
        if path == WS_PATH and not hub.settings.websockets:
            return self._refuse(
                503, "websockets_off", "websockets are switched off: use /v1/poll\n"
            )
        if not hub.ready():
            return self._refuse(503, "not_ready", "not ready\n")
        if len(hub.connections) + hub.polls >= hub.settings.max_connections:
            return self._refuse(503, "max_connections", "too many connections\n")
        peer = connection.remote_address[0] if connection.remote_address else ""
        forwarded = ", ".join(request.headers.get_all("X-Forwarded-For")) or None  # RFC 9110 5.3
        address = client_address(peer, forwarded, self.trusted_proxies)
        decision = self.admission.admit(address, time.monotonic())
        if not decision.admitted:
            return self._refuse(decision.status, decision.reason, "too many connections\n")
        if path == POLL_PATH:
            hub.polls += 1  # no await since the max_connections check
            try:
                status, body = await handle_poll(
                    hub, self.authenticator, self.poll_source, request.path,
                    request.headers.get("Authorization"),
                )  # fmt: skip
            finally:
                hub.polls -= 1
                self.admission.release(address)
            return response(
                status, body.encode(), "application/json", [("Cache-Control", "no-store"), *cors]
            )
        self.addresses[id(connection)] = address
        return None

    def process_response(
        self, connection: ServerConnection, request: Request, response: Response
    ) -> None:
        """A handshake that did not become a websocket gives its admission slot back."""
        if response.status_code != 101:
            self._release(connection)

    def _release(self, connection: ServerConnection) -> None:
        address = self.addresses.pop(id(connection), None)
        if address is not None:
            self.admission.release(address)

    async def handle(self, ws: ServerConnection) -> None:
        try:
            await Connection(self, ws).run()
        finally:
            self._release(ws)
