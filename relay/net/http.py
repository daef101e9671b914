"""The relay's port: one route table for everything it answers, and the websockets server's hooks.

Every request is answered from ``process_request``, in this order: the operations routes
(``/healthz``, ``/readyz``, ``/metrics``: never admitted nor refused), a request repeating a
single-valued header (400), the routes handed in (the demo's), then the client endpoints,
``/v1/ws``, ``/v1/poll``, ``/v1/sse`` and ``/v1/sse/ticket``, and the Supabase dialect's
``/realtime/v1/websocket`` and ``/socket/websocket``, which pass the same checks (origin, method,
the websockets switch, readiness, ``max_connections``, per-address admission) before a websocket
is opened (relay/net/websocket.py; the Supabase dialect's handshake checks its apikey first:
relay/net/phoenix.py), a long-poll answered (relay/net/longpoll.py), a stream streamed or a
ticket issued (relay/net/sse.py). Responses and request parts come from relay/net/responses.py.
The sockets themselves are bounded before any of this
(relay/net/sockets.py).

Deadlines: a request must be complete within ``request_timeout`` (the socket guard), and every
answer but a stream within ``ANSWER_TIMEOUT`` (a late one aborts its socket). The shell applies
the latter itself, not websockets' ``open_timeout`` (which app.py turns off): that would also cut
a stream, which is the answer to its request for as long as it lasts.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Awaitable, Callable
from typing import Final

import anyio
import anyio.lowlevel
import structlog
from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from relay.core.admission import Admission, Intake, client_address
from relay.core.auth import Authenticator
from relay.core.inbound import InboundLimits
from relay.core.log import LogSource
from relay.core.tickets import Tickets
from relay.net.hub import Hub
from relay.net.longpoll import MAX_WAIT, handle_poll
from relay.net.phoenix import PHOENIX_PATHS, Handshake, PhoenixConnection, phoenix_handshake
from relay.net.responses import Handler, cors_headers, repeated_header, response, text
from relay.net.sockets import LimitedServerConnection, SocketGuard
from relay.net.sse import Streams
from relay.net.websocket import WebsocketConnection
from relay.ops.heap import malloc_trim

__all__ = [
    "ANSWER_TIMEOUT", "POLL_PATH", "SSE_PATH", "SWEEP_INTERVAL", "TICKET_PATH", "WS_PATH",
    "WebsocketShell",
]  # fmt: skip

WS_PATH: Final = "/v1/ws"
POLL_PATH: Final = "/v1/poll"
SSE_PATH: Final = "/v1/sse"
TICKET_PATH: Final = "/v1/sse/ticket"
# Admitted alike, then each answered its own way.
CLIENT_PATHS: Final = (WS_PATH, POLL_PATH, SSE_PATH, TICKET_PATH)
# Answered with CORS headers: the methods and request headers each allows.
CORS: Final = {
    POLL_PATH: ("GET, OPTIONS", "Authorization"),
    SSE_PATH: ("GET, OPTIONS", "Authorization, Last-Event-ID"),
    TICKET_PATH: ("POST, OPTIONS", "Authorization"),
}
SWEEP_INTERVAL: Final = 0.5  # resolution of the auth timeout, token expiry and slow-client rule
# Every answer but a stream: a long-poll waits up to MAX_WAIT, then its last query runs.
ANSWER_TIMEOUT: Final = MAX_WAIT + 10

log = structlog.get_logger("relay.net.http")


class WebsocketShell:
    """The websockets server's callbacks: the port's routes, handshake checks, connections."""

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
        self.streams = Streams(hub, authenticator, source, Tickets())
        # The operations routes, here or alone on the metrics port (app.py); then CLIENT_PATHS.
        self.ops_routes: dict[str, Callable[[], Response]] = {
            "/healthz": lambda: text(200, "ok\n"),
            "/readyz": self._readyz,
            "/metrics": self._metrics,
        }
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
        self.handshakes: dict[int, Handshake] = {}  # id(connection) -> a Supabase handshake
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

    # -- operations routes --------------------------------------------------------------------

    def _readyz(self) -> Response:
        return text(200, "ready\n") if self.hub.ready() else text(503, "not ready\n")

    def _metrics(self) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        return response(200, self.hub.metrics.render(), CONTENT_TYPE_LATEST)

    def process_ops_request(self, connection: ServerConnection, request: Request) -> Response:
        """/healthz, /readyz and /metrics: on the main port, or alone on the metrics port."""
        route = self.ops_routes.get(request.path.split("?", 1)[0])
        return route() if route is not None else text(404, "not found\n")

    # -- the port's requests ------------------------------------------------------------------

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
        """An answer, or None to open the websocket."""
        path = request.path.split("?", 1)[0]
        hub = self.hub
        if path in self.ops_routes:
            # With a separate metrics port, /metrics is served there only; health on both.
            if path == "/metrics" and hub.settings.metrics_port:
                return text(404, "not found\n")
            return self.ops_routes[path]()
        if (repeated := repeated_header(request.headers)) is not None:
            return self._refuse(400, "bad_header", f"more than one {repeated} header\n")
        if (
            self.extra is not None
            and (answer := await self._bounded(connection, self.extra(request))) is not None
        ):
            return answer
        phoenix = path in PHOENIX_PATHS and hub.settings.supabase
        if path not in CLIENT_PATHS and not phoenix:
            return text(404, "not found\n")
        origin = self.admission.check_origin(request.headers.get("Origin"))
        if not origin.admitted:
            return self._refuse(origin.status, origin.reason, "origin not allowed\n")
        allows = CORS.get(path)
        cors = cors_headers(request.headers.get("Origin"), *allows) if allows else []
        if allows and request.method == "OPTIONS":  # a browser's CORS preflight
            return response(204, b"", "text/plain", cors)
        method = "POST" if path == TICKET_PATH else "GET"
        if request.method != method:
            return response(
                405, f"only {method}\n".encode(), "text/plain", [("Allow", method), *cors]
            )
        if (path == WS_PATH or phoenix) and not hub.settings.websockets:
            return self._refuse(
                503, "websockets_off", "websockets are switched off: use /v1/poll\n"
            )
        if not hub.ready():
            return self._refuse(503, "not_ready", "not ready\n")
        if path != TICKET_PATH and len(hub.connections) + hub.polls >= hub.settings.max_connections:
            return self._refuse(503, "max_connections", "too many connections\n")
        peer = connection.remote_address[0] if connection.remote_address else ""
        forwarded = ", ".join(request.headers.get_all("X-Forwarded-For")) or None  # RFC 9110 5.3
        address = client_address(peer, forwarded, self.trusted_proxies)
        decision = self.admission.admit(address, time.monotonic())
        if not decision.admitted:
            return self._refuse(decision.status, decision.reason, "too many connections\n")
        if path in (POLL_PATH, SSE_PATH, TICKET_PATH):
            try:
                if path == POLL_PATH:
                    return await self._bounded(connection, self._long_poll(request, cors))
                if path == TICKET_PATH:
                    return self.streams.ticket(request, address, cors)
                return await self.streams.stream(connection, request, address, cors, self.tasks)
            finally:
                self.admission.release(address)
        if phoenix:
            handshake = phoenix_handshake(request, self.authenticator, hub.settings, time.time())
            if isinstance(handshake, tuple):
                self.admission.release(address)
                refusal, reason = handshake
                self.hub.metrics.auth_failures.labels(reason).inc()
                return refusal
            self.handshakes[id(connection)] = handshake
        self.addresses[id(connection)] = address  # released when the connection ends
        return None

    async def _bounded(
        self, connection: ServerConnection, answer: Awaitable[Response | None]
    ) -> Response | None:
        """The answer, or, past ANSWER_TIMEOUT, none: the socket is aborted (as websockets'
        open_timeout did) and websockets, seeing it closed, sends nothing."""
        with anyio.move_on_after(ANSWER_TIMEOUT):
            return await answer
        log.warning("answer_late", timeout=ANSWER_TIMEOUT)
        connection.transport.abort()
        await anyio.lowlevel.checkpoint()  # connection_lost runs: the handshake sees it closed
        return text(503, "late\n")

    async def _long_poll(self, request: Request, cors: list[tuple[str, str]]) -> Response:
        """Answers a long-poll inside the handshake; it counts against max_connections."""
        hub = self.hub
        hub.polls += 1  # no await since the max_connections check
        hub.metrics.connections.polled()
        try:
            status, body = await handle_poll(
                hub, self.authenticator, self.poll_source, request.path,
                request.headers.get("Authorization"),
            )  # fmt: skip
        finally:
            hub.polls -= 1
        return response(
            status, body.encode(), "application/json", [("Cache-Control", "no-store"), *cors]
        )

    def process_response(
        self, connection: ServerConnection, request: Request, response: Response
    ) -> None:
        """A handshake that did not become a websocket gives its admission slot back."""
        if response.status_code != 101:
            self._release(connection)

    def _release(self, connection: ServerConnection) -> None:
        self.handshakes.pop(id(connection), None)
        address = self.addresses.pop(id(connection), None)
        if address is not None:
            self.admission.release(address)

    async def handle(self, ws: ServerConnection) -> None:
        try:
            handshake = self.handshakes.pop(id(ws), None)
            if handshake is not None:
                connection: WebsocketConnection = PhoenixConnection(
                    self.hub, ws, authenticator=self.authenticator, source=self.source,
                    tasks=self.tasks, handshake=handshake,
                )  # fmt: skip
            else:
                connection = WebsocketConnection(
                    self.hub, ws, authenticator=self.authenticator, source=self.source,
                    tasks=self.tasks,
                )  # fmt: skip
            await connection.run()
        finally:
            self._release(ws)
