"""The websocket and HTTP shell around the protocol core.

``Hub`` receives batches of events from the log reader and routes them (relay/router.py) into
each connection's bounded ``OutQueue``; routing never touches a socket. Each connection has a
writer task that drains its queue to the socket and a watchdog that enforces the protocol's
timers and the slow-client rule: a connection whose socket has not accepted a frame for
``slow_client_timeout`` seconds is aborted (websockets' ``send`` to a client that never reads
blocks forever, and its keepalive ping does not notice).
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import time
from collections.abc import Sequence
from typing import Any, Final

import anyio
import psycopg
import structlog
from psycopg_pool import AsyncConnectionPool
from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

from relay.admission import Admission, client_address
from relay.auth import Authenticator
from relay.config import Settings
from relay.cursor import Cursor
from relay.db import LogState, fetch_replay, read_log_state
from relay.events import Event
from relay.logs import user_label
from relay.metrics import Metrics
from relay.outqueue import OutQueue
from relay.poll import handle_poll
from relay.protocol import Abort, Close, Limits, Replay, Session, Tracked
from relay.router import Router
from relay.subscription import Subscription

__all__ = ["Hub", "WebsocketShell"]

WS_PATH: Final = "/v1/ws"
POLL_PATH: Final = "/v1/poll"
OPS_PATHS: Final = frozenset({"/healthz", "/readyz", "/metrics"})
WRITE_BATCH: Final = 256  # frames popped per writer wake-up
# The fast path writes while the socket's buffer holds less than this; past it, frames queue.
DIRECT_WRITE_LIMIT: Final = 64 * 1024
CLOSE_GRACE: Final = 2.0  # a close handshake that takes longer means: abort
READY_LAG: Final = 10.0  # /readyz fails when the log was last read up to its head longer ago
HEARTBEAT: Final = "HEARTBEAT"
CLOSE_EPOCH_CHANGED: Final = 1012  # "service restart": reconnect and resume with the cursor

log = structlog.get_logger("relay.server")


class _Wakeup:
    """A level-triggered wake-up for one waiting task (anyio's Event cannot be cleared)."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = anyio.Event()

    def set(self) -> None:
        self._event.set()

    async def wait(self, timeout: float | None) -> None:
        with anyio.move_on_after(timeout):
            await self._event.wait()
        if self._event.is_set():
            self._event = anyio.Event()


class Hub:
    """Everything the connections of one process share: routing, the log's state, metrics."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.router = Router()
        self.epoch: str | None = None
        self.listener_up = False
        self.caught_up_at = -1e9  # monotonic time the log was last read up to its head
        self.last_event_at: float | None = None  # monotonic
        self.db_head = 0
        self.tables: Tracked = {}
        self.connections: dict[str, Connection] = {}
        self.accepting = True
        self._direct_writes = 0  # deliveries of the event being routed, written at once
        metrics.last_event_age.set_function(self._last_event_age)
        metrics.log_backlog.set_function(lambda: max(0, self.db_head - self.router.head))

    def _last_event_age(self) -> float:
        if self.last_event_at is None:
            return float("nan")
        return time.monotonic() - self.last_event_at

    # -- fed by the log reader ------------------------------------------------------------------

    def on_listener_state(self, state: LogState | None) -> None:
        self.listener_up = state is not None
        self.metrics.listener_up.set(1 if state else 0)
        if state is None:
            return
        went_back = state.head < self.router.head  # a restore from backup keeps the epoch
        # Down longer than the retention: events this relay never read were pruned meanwhile.
        pruned_past_us = state.pruned_through > self.router.head
        if self.epoch is not None and (state.epoch != self.epoch or went_back or pruned_past_us):
            # Reinstalled or restored: every cursor handed out is meaningless. Clients reconnect
            # and resume with their cursors, which now get an explicit epoch_changed reset.
            log.warning(
                "log_discontinuity",
                epoch_changed=state.epoch != self.epoch,
                went_back=went_back,
                pruned_past_us=pruned_past_us,
            )
            for connection in list(self.connections.values()):
                connection.close_soon(CLOSE_EPOCH_CHANGED, "epoch_changed")
            self.router = Router(state.head)
        elif self.epoch is None:
            self.router = Router(state.head)
        self.epoch = state.epoch
        self.db_head = max(self.db_head, state.head)

    def deliver(self, events: list[Event]) -> None:
        now = time.time()
        metrics = self.metrics
        for event in events:
            if event.op == HEARTBEAT:
                self.router.route(event, now)  # no audience: only advances the head
                continue
            metrics.events.labels(event.table, event.op).inc()
            if (event.schema, event.table) not in self.tables:  # tracked since the last refresh
                self.tables = {**self.tables, (event.schema, event.table): _columns_of(event)}
            self.router.route(event, now)
            if self._direct_writes:
                self._count_direct(event)
        self.last_event_at = time.monotonic()
        self.db_head = max(self.db_head, self.router.head)

    def written_directly(self) -> None:
        """A connection wrote the event being routed straight to its socket."""
        self._direct_writes += 1

    def _count_direct(self, event: Event) -> None:
        count, self._direct_writes = self._direct_writes, 0
        self.metrics.deliveries.inc(count)
        lag = max(0.0, time.time() - event.committed_at.timestamp())
        self.metrics.delivery_lag.observe(lag, count)

    def read_up_to_head(self) -> None:
        self.caught_up_at = time.monotonic()

    def ready(self) -> bool:
        return (
            self.accepting
            and self.listener_up
            and self.epoch is not None
            and time.monotonic() - self.caught_up_at
            < max(READY_LAG, 2 * self.settings.listen_window)
        )

    def tracked(self) -> Tracked:
        return self.tables


def _columns_of(event: Event) -> frozenset[str]:
    """A table's carried columns as one event shows them, until the catalog is refreshed."""
    return frozenset(event.pk) | frozenset(event.row or ())


class Connection:
    """One websocket client: its session, queue, writer and watchdog."""

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
            limits=Limits(settings.max_subscriptions, settings.auth_timeout),
            on_auth_failure=lambda reason: hub.metrics.auth_failures.labels(reason).inc(),
            on_reset=lambda reason: hub.metrics.resets.labels(reason).inc(),
            on_offer=self._wake_writer,
            direct=self.write_direct,
        )
        self.wakeup = _Wakeup()
        self.send_started: float | None = None  # monotonic start of a write still pending
        self.writing = False  # the writer task holds popped frames not yet written
        # No extension (permessage-deflate) negotiated: frames are plain RFC 6455 text frames.
        self.plain_frames = not ws.protocol.extensions
        self.drained = _Wakeup()
        self.closing: tuple[int, str] | None = None
        self.log = log.bind(conn=self.id)

    def _wake_writer(self) -> None:
        self.wakeup.set()

    def close_soon(self, code: int, reason: str) -> None:
        self.closing = (code, reason)
        self.wakeup.set()

    async def run(self) -> None:
        hub = self.shell.hub
        hub.connections[self.id] = self
        hub.metrics.connections.opened()
        try:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(self._writer)
                tasks.start_soon(self._watchdog, tasks.cancel_scope)
                await self._reader(tasks)
                tasks.cancel_scope.cancel()
        finally:
            self.session.close()
            hub.connections.pop(self.id, None)
            hub.metrics.connections.closed()
            self._count_dropped()

    def _count_dropped(self) -> None:
        metrics = self.shell.hub.metrics
        if self.queue.dropped:
            metrics.drops.labels("overflow").inc(self.queue.dropped)
            self.queue.dropped = 0
        if self.queue.resets:
            metrics.resets.labels("overflow").inc(self.queue.resets)
            self.queue.resets = 0

    async def _reader(self, tasks: anyio.abc.TaskGroup) -> None:
        header = self.ws.request.headers.get("Authorization", "") if self.ws.request else ""
        if header[:7].lower() == "bearer ":
            if await self._act(self.session.authenticate(header[7:].strip(), time.time()), tasks):
                return
            self._log_auth()
        try:
            async for message in self.ws:
                authed = self.session.claims is not None
                if isinstance(message, str):
                    actions = self.session.receive_text(message, time.time())
                else:
                    actions = self.session.receive_binary()
                self.wakeup.set()
                if await self._act(actions, tasks):
                    return
                if not authed and self.session.claims is not None:
                    self._log_auth()
        except ConnectionClosed:
            return

    def _log_auth(self) -> None:
        user = user_label(self.session.user, self.shell.hub.settings.log_user_ids)
        self.log = self.log.bind(user=user) if user else self.log
        self.log.info("authenticated")

    async def _act(
        self, actions: Sequence[Close | Abort | Replay], tasks: anyio.abc.TaskGroup
    ) -> bool:
        """Carries out the session's actions; True when the connection is to end."""
        for action in actions:
            if isinstance(action, Close):
                self.log.info("closing", code=action.code, reason=action.reason)
                await self._close(action.code, action.reason)
                return True
            if isinstance(action, Abort):
                self._abort(action.reason)
                return True
            tasks.start_soon(self._replay, action)
        return False

    def _abort(self, reason: str) -> None:
        self.shell.hub.metrics.drops.labels("slow_client").inc()
        self.log.warning("aborted", reason=reason)
        self.abort()

    async def _close(self, code: int, reason: str) -> None:
        await self._flush_controls()
        with anyio.move_on_after(CLOSE_GRACE) as scope:
            await self.ws.close(code, reason)
        if scope.cancelled_caught:
            self.abort()

    async def _flush_controls(self) -> None:
        """Best effort: send what is queued (an error, a reset) before a close frame."""
        with anyio.move_on_after(CLOSE_GRACE):
            for frame in self.queue.pop_ready(time.time()):
                await self.ws.send(frame)

    def abort(self) -> None:
        transport = self.ws.transport
        if transport is not None:
            transport.abort()

    async def _writer(self) -> None:
        metrics = self.shell.hub.metrics
        while True:
            if self.closing is not None:
                await self._close(*self.closing)
                return
            now = time.time()
            frames = self.queue.pop_ready_timed(now, WRITE_BATCH)
            if not frames:
                self._count_dropped()
                self.drained.set()
                deadline = self.queue.next_deadline()
                await self.wakeup.wait(None if deadline is None else max(0.0, deadline - now))
                continue
            self.writing = True  # the fast path must not write past frames popped here
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

    def write_direct(self, sub: Subscription, event: Event) -> bool:
        """The fast path: writes the event's frame to the socket now, as websockets' broadcast()
        does, when nothing is queued before it and the socket's buffer is low. False otherwise,
        and the event takes the bounded queue and the writer task (with backpressure)."""
        ws = self.ws
        transport = ws.transport
        if (
            self.writing
            or self.closing is not None
            or ws.protocol.state is not State.OPEN
            or transport is None
            or transport.get_write_buffer_size() > DIRECT_WRITE_LIMIT
        ):
            return False
        if self.plain_frames:
            # Without extensions a server's text frame is the same bytes on every connection:
            # write the event's cached frame, as websockets itself would have framed it.
            transport.write(event.wire_frame(sub.id, self.queue.epoch))
        else:
            ws.protocol.send_text(event.frame(sub.id, self.queue.epoch).encode())
            ws.send_data()
        self.shell.hub.written_directly()
        return True

    async def _watchdog(self, scope: anyio.CancelScope) -> None:
        settings = self.shell.hub.settings
        while True:
            now = time.time()
            for action in self.session.tick(now):
                if isinstance(action, Abort):
                    self._abort(action.reason)
                    scope.cancel()
                    return
                self.close_soon(action.code, action.reason)
            started = self.send_started
            if started is not None and time.monotonic() - started > settings.slow_client_timeout:
                self._abort("not_draining")
                scope.cancel()
                return
            deadline = self.session.next_deadline()
            wait = 1.0 if deadline is None else min(1.0, max(0.0, deadline - now))
            await anyio.sleep(wait)

    async def _room_for_replay(self) -> None:
        """Replay goes at the client's pace: it waits while the queue is half full (by count or
        bytes), so a long replay never overflows the queue; live events keep their room."""
        queue = self.queue
        while len(queue) > queue.max_messages // 2 or queue.pending_bytes > queue.max_bytes // 2:
            await self.drained.wait(1.0)

    async def _replay(self, action: Replay) -> None:
        """Replays a subscription from its cursor, paced by the client's drain, then goes live."""
        hub = self.shell.hub
        session = self.session
        sub = action.sub
        settings = hub.settings
        pool = self.shell.pool
        # A pool connection is held only for each query, never while waiting on the client:
        # slow clients replaying cannot starve the pool.
        try:
            async with pool.connection(timeout=settings.query_timeout * 2) as conn:
                with anyio.fail_after(settings.query_timeout):
                    state = await read_log_state(conn)
            reason = resume_problem(action.since, state)
            if reason is not None:
                if session.replaying(sub):
                    session.reset_subscription(sub.id, reason)
                    self.wakeup.set()
                return
            page_size = min(settings.replay_batch, max(1, settings.queue_max_messages // 2))
            while session.replaying(sub):
                if sub.after >= hub.router.head:
                    # No await since reading the head: nothing was routed in between.
                    session.finish_replay(sub)
                    self.wakeup.set()
                    return
                async with pool.connection(timeout=settings.query_timeout * 2) as conn:
                    with anyio.fail_after(settings.query_timeout):
                        page = await fetch_replay(
                            conn,
                            user=session.user,
                            table=sub.table,
                            schema=sub.schema,
                            after=sub.after,
                            upto=hub.router.head,
                            limit=page_size,
                        )
                for event in page.events:
                    await self._room_for_replay()
                    if not session.replay_events(sub, [event], 0, time.time()):
                        return
                    self.wakeup.set()
                session.replay_events(sub, [], page.scanned_to, time.time())
        except (psycopg.Error, TimeoutError) as exc:
            # The database is unreachable: the client retries with the same cursor.
            self.log.warning("replay_failed", error=type(exc).__name__)
            self.close_soon(1011, "replay_unavailable")


def resume_problem(since: Cursor, state: LogState) -> str | None:
    """Why the log cannot resume after this cursor, as a reset reason, or None."""
    if since.epoch != state.epoch or since.pos > state.head:
        return "epoch_changed"  # another install, or the database went back in time (restore)
    if since.pos < state.pruned_through:
        return "cursor_expired"
    return None


class WebsocketShell:
    """The websockets server's callbacks: HTTP routes, handshake checks, connections."""

    def __init__(
        self, hub: Hub, authenticator: Authenticator, pool: AsyncConnectionPool[Any]
    ) -> None:
        settings = hub.settings
        self.hub = hub
        self.authenticator = authenticator
        self.pool = pool
        self.admission = Admission(
            allowed_origins=settings.allowed_origins,
            rate_per_ip=settings.connect_rate_per_ip,
            max_open_per_ip=settings.max_connections_per_ip,
        )
        self.trusted_proxies = [
            ipaddress.ip_network(n, strict=False) for n in settings.trusted_proxies
        ]
        self.addresses: dict[int, str] = {}  # id(connection) -> admitted client address

    def process_ops_request(self, connection: ServerConnection, request: Request) -> Response:
        """/healthz, /readyz and /metrics: on the main port, or alone on the metrics port."""
        path = request.path.split("?", 1)[0]
        if path == "/healthz":
            return _text(200, "ok\n")
        if path == "/readyz":
            return _text(200, "ready\n") if self.hub.ready() else _text(503, "not ready\n")
        if path == "/metrics":
            from prometheus_client import CONTENT_TYPE_LATEST

            return _response(200, self.hub.metrics.render(), CONTENT_TYPE_LATEST)
        return _text(404, "not found\n")

    def _refuse(self, status: int, reason: str, text: str) -> Response:
        self.hub.metrics.refused.labels(reason).inc()
        return _text(status, text)

    async def process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        path = request.path.split("?", 1)[0]
        hub = self.hub
        if path in OPS_PATHS:
            # With a separate metrics port, /metrics is served there only; health on both.
            if path == "/metrics" and hub.settings.metrics_port:
                return _text(404, "not found\n")
            return self.process_ops_request(connection, request)
        from relay.demo_web import handle_demo_request

        if hub.settings.demo and (demo := await handle_demo_request(self, request)) is not None:
            return demo
        if path not in (WS_PATH, POLL_PATH):
            return _text(404, "not found\n")
        origin = self.admission.check_origin(request.headers.get("Origin"))
        if not origin.admitted:
            return self._refuse(origin.status, origin.reason, "origin not allowed\n")
        cors = _cors_headers(request.headers.get("Origin")) if path == POLL_PATH else []
        if path == POLL_PATH and request.method == "OPTIONS":  # a browser's CORS preflight
            return _response(204, b"", "text/plain", cors)
        if request.method != "GET":
            return _response(405, b"only GET\n", "text/plain", [("Allow", "GET"), *cors])
        if path == WS_PATH and not hub.settings.websockets:
            return self._refuse(
                503, "websockets_off", "websockets are switched off: use /v1/poll\n"
            )
        if not hub.ready():
            return self._refuse(503, "not_ready", "not ready\n")
        if len(hub.connections) >= hub.settings.max_connections:
            return self._refuse(503, "max_connections", "too many connections\n")
        peer = connection.remote_address[0] if connection.remote_address else ""
        address = client_address(peer, request.headers.get("X-Forwarded-For"), self.trusted_proxies)
        decision = self.admission.admit(address, time.monotonic())
        if not decision.admitted:
            return self._refuse(decision.status, decision.reason, "too many connections\n")
        if path == POLL_PATH:
            try:
                status, body = await handle_poll(
                    self, request.path, request.headers.get("Authorization", "")
                )
            finally:
                self.admission.release(address)
            return _response(
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


def _text(status: int, body: str) -> Response:
    return _response(status, body.encode(), "text/plain; charset=utf-8")


def _response(
    status: int, body: bytes, content_type: str, extra: Sequence[tuple[str, str]] = ()
) -> Response:
    from http import HTTPStatus

    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(body)))])
    headers.update(extra)
    return Response(status, HTTPStatus(status).phrase, headers, body)


def _cors_headers(origin: str | None) -> list[tuple[str, str]]:
    """CORS for long-polling from a browser app on another origin. The Origin was checked
    against the allow-list already; the token travels in a header, never in cookies."""
    if origin is None:
        return []
    return [
        ("Access-Control-Allow-Origin", origin),
        ("Access-Control-Allow-Methods", "GET, OPTIONS"),
        ("Access-Control-Allow-Headers", "Authorization"),
        ("Access-Control-Max-Age", "600"),
        ("Vary", "Origin"),
    ]
