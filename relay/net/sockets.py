"""A listening port's sockets, bounded from TCP accept on, and each client's inbound budget.

websockets' ``ServerConnection`` is extended twice: ``GuardedConnection`` counts a socket in its
port's ``SocketGuard`` (relay/core/admission.py ``Intake``) from accept until it closes and
closes it past a bound or when its request is late; ``LimitedServerConnection`` applies the
inbound budget (relay/core/inbound.py) to every frame a client sends. The guard's
``connection_class`` composes them for websockets' ``serve()``, the guard's class first: a
socket is counted before anything else happens to it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Final

from websockets.asyncio.server import ServerConnection
from websockets.frames import Frame
from websockets.protocol import Event as WsEvent

from relay.core.admission import Intake
from relay.core.inbound import InboundBudget, InboundLimits
from relay.core.session import CLOSE_POLICY

__all__ = ["RATE_LIMITED", "GuardedConnection", "LimitedServerConnection", "SocketGuard"]

RATE_LIMITED: Final = "rate_limited"  # close reason (1008) past the inbound budget


class LimitedServerConnection(ServerConnection):
    """websockets' server connection with the inbound budget (relay/core/inbound.py) applied to each
    frame the client sends, as the library parses it: data, continuation, ping, pong and close
    frames alike. Pings are answered inside the library and never reach the relay's reader, so
    this is the one place that sees them all. Past the budget the connection is failed at once:
    a close frame 1008 ``rate_limited`` goes out, and what the client sends next is discarded
    unparsed (no pong, no message). ``inbound_limits`` is set per server (WebsocketShell).

    A request the relay answers with a stream of its own (SSE, relay/net/sse.py) sets
    ``streaming``: from then on the client has nothing to send, so any byte it sends aborts the
    socket (websockets would parse it as a frame) and its end of the stream (EOF) closes it."""

    inbound_limits = InboundLimits()
    streaming = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.inbound = InboundBudget(self.inbound_limits, time.monotonic())
        self.limited = False
        self.on_limited: Callable[[], None] = lambda: None

    def data_received(self, data: bytes) -> None:
        if self.streaming:
            self.transport.abort()
            return
        super().data_received(data)

    def eof_received(self) -> None:
        if not self.streaming:  # streaming, returning None is enough: asyncio closes the socket
            super().eof_received()

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
