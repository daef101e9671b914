"""The relay's port: one route table for everything it answers, and the websockets server's hooks.

Every request is answered from ``process_request``, in this order: the operations routes
(``/healthz``, ``/readyz``, ``/metrics``: never admitted nor refused), a request repeating a
single-valued header (400), the routes handed in (the demo's), then the client endpoints,
``/v1/ws`` and ``/v1/poll``, which pass the same checks (origin, method, the websockets switch,
readiness, ``max_connections``, per-address admission) before a websocket is opened
(relay/net/connection.py) or a long-poll answered (relay/net/longpoll.py). Responses and request
parts come from relay/net/responses.py. The sockets themselves are bounded before any of this
(relay/net/sockets.py).
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from typing import Final

import anyio
import structlog
from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from relay.core.admission import Admission, Intake, client_address
from relay.core.auth import Authenticator
from relay.core.inbound import InboundLimits
from relay.core.log import LogSource
from relay.net.connection import Connection
from relay.net.hub import Hub
from relay.net.longpoll import handle_poll
from relay.net.responses import Handler, cors_headers, repeated_header, response, text
from relay.net.sockets import LimitedServerConnection, SocketGuard
from relay.ops.heap import malloc_trim

__all__ = ["POLL_PATH", "SWEEP_INTERVAL", "WS_PATH", "WebsocketShell"]

WS_PATH: Final = "/v1/ws"
POLL_PATH: Final = "/v1/poll"
CLIENT_PATHS: Final = (WS_PATH, POLL_PATH)  # admitted alike, then each answered its own way
SWEEP_INTERVAL: Final = 0.5  # resolution of the auth timeout, token expiry and slow-client rule

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
        if self.extra is not None and (answer := await self.extra(request)) is not None:
            return answer
        if path not in CLIENT_PATHS:
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
            return await self._long_poll(request, address, cors)
        self.addresses[id(connection)] = address  # released when the connection ends
        return None

    async def _long_poll(
        self, request: Request, address: str, cors: list[tuple[str, str]]
    ) -> Response:
        """Answers a long-poll inside the handshake; it counts against max_connections."""
        hub = self.hub
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
            connection = Connection(
                self.hub, ws, authenticator=self.authenticator, source=self.source,
                tasks=self.tasks,
            )  # fmt: skip
            await connection.run()
        finally:
            self._release(ws)
