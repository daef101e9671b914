"""A websocket client (``/v1/ws``): its frames in, through the session; frames out, as websockets
frames them.

The write path is the shared one (relay/net/connection.py); this module adds how a frame is
written to a websocket (the event's cached RFC 6455 frame when no extension is negotiated), the
close handshake, and the reader: the token of the handshake's ``Authorization`` header, then each
frame the client sends, within its inbound budget (relay/net/sockets.py).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Final

import anyio
from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from relay.core.auth import Authenticator
from relay.core.events import Event
from relay.core.log import LogSource
from relay.core.session import CLOSE_POLICY
from relay.net.connection import CLOSE_GRACE, Connection
from relay.net.hub import Hub
from relay.net.responses import bearer_token
from relay.net.sockets import RATE_LIMITED, LimitedServerConnection

__all__ = ["WEBSOCKET", "WebsocketConnection", "forget_handshake"]

WEBSOCKET: Final = "websocket"


def forget_handshake(ws: ServerConnection) -> None:
    """Drops the handshake's headers, which websockets keeps for the connection's whole life
    (cookies, user agent...: only the token was needed). The objects stay (websockets checks that
    the request exists), empty. The request's headers are emptied in place: the protocol's parser,
    a generator running as long as the connection, holds the same request in a local variable."""
    if ws.request is not None:
        ws.request.headers.clear()
    if ws.response is not None:
        ws.response = dataclasses.replace(ws.response, headers=Headers(), body=b"")


class WebsocketConnection(Connection):
    """A ``Connection`` over a websockets ``ServerConnection``."""

    kind = WEBSOCKET

    def __init__(
        self,
        hub: Hub,
        ws: ServerConnection,
        *,
        authenticator: Authenticator,
        source: LogSource,
        tasks: anyio.abc.TaskGroup,
    ) -> None:
        self.ws = ws
        super().__init__(hub, ws.transport, authenticator=authenticator, source=source, tasks=tasks)
        # No extension (permessage-deflate) negotiated: frames are plain RFC 6455 text frames.
        self.plain_frames = not ws.protocol.extensions
        if isinstance(ws, LimitedServerConnection):
            ws.on_limited = self._inbound_limited
            if ws.limited:  # before this handler ran
                self._inbound_limited()

    # -- writing ------------------------------------------------------------------------------

    def _open(self) -> bool:
        return self.ws.protocol.state is State.OPEN

    def _write(self, frame: str) -> None:
        self.ws.protocol.send_text(frame.encode())
        self.ws.send_data()

    def _write_event(self, sub_id: str, event: Event) -> None:
        if self.plain_frames:
            # Without extensions a server's text frame is the same bytes on every connection:
            # write the event's cached frame, as websockets would have framed it.
            self.transport.write(self.wire.event_frame(sub_id, event))
        else:
            self._write(self.wire.event(sub_id, event))

    async def _send(self, frame: str) -> None:
        await self.ws.send(frame)

    async def _end(self, code: int, reason: str) -> None:
        await self.ws.close(code, reason)

    # -- reading ------------------------------------------------------------------------------

    async def _handshake(self) -> bool:
        """Acts on the handshake's credentials (v1: an ``Authorization: Bearer`` token); True
        when the connection is to end."""
        header = self.ws.request.headers.get("Authorization") if self.ws.request else None
        self._forget_handshake()
        if (token := bearer_token(header)) is not None:
            if await self._act(self.session.authenticate(token, time.time())):
                return True
            self.flush()  # ready
            self._log_auth()
        return False

    async def _serve(self) -> None:
        if await self._handshake():
            return
        try:
            async for message in self.ws:
                if self._limited():
                    continue  # frames queued before the budget ran out: not acted on
                authed = self.session.claims is not None
                if isinstance(message, str):
                    actions = self.session.receive_text(message, time.time())
                else:
                    actions = self.session.receive_binary(message)
                if await self._act(actions):
                    return
                self.flush()  # the answers the session queued (pong, subscribed, errors)
                if not authed and self.session.claims is not None:
                    self._log_auth()
        except ConnectionClosed:
            return

    def _forget_handshake(self) -> None:
        forget_handshake(self.ws)

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
