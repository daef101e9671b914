"""Server-Sent Events: ``GET /v1/sse`` streams a connection's frames as ``text/event-stream``, and
``POST /v1/sse/ticket`` trades a bearer token for a ticket an EventSource can open it with.

A stream is a ``Connection`` (relay/net/connection.py) like a websocket's: the router's target,
with the same session, bounded queue, slow-consumer rule, fast path and writer; only the frames
(relay/core/sse.py) and the socket writes differ. Its subscriptions and cursor come with the
request (relay/core/requests.py ``stream_messages``; ``Last-Event-ID``, which a browser's
EventSource sends when it reconnects, wins over ``since``), and its catch-up runs them in lockstep
(relay/core/catchup.py): the stream has one position, its ``id:``.

The stream is the answer to the request, for as long as it lasts: the websockets server answers
HTTP from ``process_request`` with whole responses only, so the shell (relay/net/http.py) calls
``Streams.stream`` there, which writes the response head to the socket itself and streams until
the socket closes. Every check of the port applies before (the socket guard, origin,
readiness, ``max_connections``, per-address admission), and a refusal is a whole response (401,
400) that EventSource does not retry. docs/architecture.md says why this design.

A stream ends when the client goes away, when it does not drain (the slow-client rule), when its
token expires (an ``error`` event ``token_expired`` first), when the log it lives in ends
(``epoch_changed``), when a newer stream takes its ticket (``replaced``), and at shutdown
(``going_away``). EventSource then reconnects by itself with ``Last-Event-ID``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from typing import Final

import anyio
from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from relay.core.auth import Authenticator
from relay.core.events import Event
from relay.core.log import LogSource
from relay.core.requests import stream_messages
from relay.core.session import CLOSE_GOING_AWAY, Abort, Close, Replay, Session
from relay.core.sse import SSE
from relay.core.tickets import Tickets
from relay.core.wire import Encoder
from relay.errors import AuthError, ProtocolError
from relay.net.connection import Connection
from relay.net.hub import Hub
from relay.net.responses import bearer_token, query_params, response
from relay.net.sockets import LimitedServerConnection

__all__ = ["SSE_KIND", "StreamConnection", "Streams"]

SSE_KIND: Final = "sse"
RETRY_MS: Final = (1000, 4000)  # EventSource's reconnect delay, drawn per stream: spreads a storm
CLOSE_REPLACED: Final = 4002  # a newer stream took this stream's ticket
# The error event a stream ends with, by the reason the relay ends it.
END_MESSAGES: Final = {
    "token_expired": "the token expired: open the stream again with a fresh token or ticket",
    "epoch_changed": "the log was reinstalled or restored: reconnect to get a reset",
    "going_away": "the relay is shutting down: reconnect",
    "replaced": "a newer stream opened with this ticket",
    "replay_unavailable": "the log cannot be read now: reconnect with the same cursor",
}


class StreamConnection(Connection):
    """A ``Connection`` writing SSE blocks to the socket of an HTTP request it answers."""

    kind = SSE_KIND

    def __init__(
        self,
        hub: Hub,
        ws: ServerConnection,
        *,
        authenticator: Authenticator,
        source: LogSource,
        tasks: anyio.abc.TaskGroup,
    ) -> None:
        self.ws = ws  # websockets' connection, for its socket, flow control and close
        super().__init__(hub, ws.transport, authenticator=authenticator, source=source, tasks=tasks)
        assert isinstance(self.wire, SSE) and isinstance(self.session, Session)
        self.sse = self.wire
        self.v1 = self.session  # a stream's subscriptions are v1 subscribe requests
        self.started = False  # the response head is written
        self.heartbeat = hub.settings.sse_heartbeat  # under the idle timeout of common proxies
        self.next_heartbeat = time.monotonic() + self.heartbeat

    def _wire(self, epoch: str) -> Encoder:
        return SSE(epoch)

    def _open(self) -> bool:
        return self.started and not self.transport.is_closing()

    def _write(self, frame: str) -> None:
        self.transport.write(frame.encode())

    def _write_event(self, sub_id: str, event: Event) -> None:
        self.transport.write(self.sse.event_frame(sub_id, event))

    async def _send(self, frame: str) -> None:
        if self.transport.is_closing():
            raise ConnectionResetError("the stream's socket is closed")
        self.transport.write(frame.encode())
        await self.ws.drain()  # waits while the socket's buffer is over websockets' write_limit

    async def _end(self, code: int, reason: str) -> None:
        if self.started and (message := END_MESSAGES.get(reason)) is not None:
            await self._send(self.sse.error(reason, message))
        self.transport.close()  # once its buffer is written
        await self.ws.wait_closed()

    async def _serve(self) -> None:
        await self.ws.wait_closed()

    async def stream(self, head: bytes, actions: Sequence[Close | Abort | Replay]) -> None:
        """Writes the response head, the retry delay and what the session queued so far (ready,
        subscribed, resets), starts the catch-up, and streams until the socket closes."""
        if isinstance(self.ws, LimitedServerConnection):
            self.ws.streaming = True  # what the client sends from now on is not read as frames
        self.transport.write(head + self.sse.retry(random.randint(*RETRY_MS)).encode())
        self.started = True
        if not any(isinstance(action, Replay) for action in actions):
            self._caught_up()  # every subscription is live (from now, or reset)
        self.flush()
        self._log_auth()
        await self._act(actions)
        await self.run()

    def _caught_up(self) -> None:
        if (pos := self.position()) is not None:
            self.queue.push_control(self.sse.position(pos))

    def check(self, now: float, monotonic: float) -> None:
        """The sweeper's visit: also the heartbeat, and the end of the stream at shutdown."""
        if not self.hub.accepting:
            self.close_soon(CLOSE_GOING_AWAY, "going_away")
        super().check(now, monotonic)
        if monotonic >= self.next_heartbeat:
            self.next_heartbeat = monotonic + self.heartbeat
            if not len(self.queue) and self._can_write_now():
                self._write(self.sse.heartbeat(self.position()))

    def position(self) -> int | None:
        """With every subscription live: the position up to which every event the stream will
        ever carry has been queued or written (written, when the queue is empty)."""
        subs = self.session.subscriptions()
        if not subs or not all(sub.live for sub in subs):
            return None
        return max(self.router.head, *(sub.after for sub in subs))


class Streams:
    """The SSE routes of the relay's port, after the port's checks (relay/net/http.py)."""

    def __init__(
        self, hub: Hub, authenticator: Authenticator, source: LogSource, tickets: Tickets
    ) -> None:
        self.hub = hub
        self.authenticator = authenticator
        self.source = source
        self.tickets = tickets

    def ticket(self, request: Request, address: str, cors: list[tuple[str, str]]) -> Response:
        """``POST /v1/sse/ticket``: a ticket for the request's bearer token
        (relay/core/tickets.py)."""
        token = bearer_token(request.headers.get("Authorization"))
        now = time.time()
        try:
            self.authenticator.verify(token or "", now)
        except AuthError as exc:
            self.hub.metrics.auth_failures.labels(exc.reason).inc()
            return _json(401, SSE.poll_error("token refused", reason=exc.reason), cors)
        assert token is not None
        ticket = self.tickets.issue(token, address, time.monotonic())
        if ticket is None:
            return _json(503, SSE.poll_error("too many tickets, retry"), cors)
        body = f'{{"ticket":"{ticket}","expires_in":{int(self.tickets.ttl)}}}'
        return _json(200, body, cors)

    async def stream(
        self,
        ws: ServerConnection,
        request: Request,
        address: str,
        cors: list[tuple[str, str]],
        tasks: anyio.abc.TaskGroup,
    ) -> Response:
        """``GET /v1/sse``: refused with a whole response, or streamed until the socket closes
        (then the returned response is never sent: websockets sends nothing on a closed one)."""
        hub = self.hub
        connection = StreamConnection(
            hub, ws, authenticator=self.authenticator, source=self.source, tasks=tasks
        )
        try:
            query = query_params(request.path)
        except ValueError:
            return _json(400, SSE.poll_error("too many query parameters", code="bad_message"), cors)
        ticket = query.get("ticket") or None
        token = bearer_token(request.headers.get("Authorization"))
        replaced: object | None = None
        if token is None and ticket is not None:
            redeemed = self.tickets.redeem(ticket, address, connection, time.monotonic())
            if redeemed is None:
                hub.metrics.auth_failures.labels("unknown_ticket").inc()
                return _json(401, SSE.poll_error("ticket refused", reason="unknown_ticket"), cors)
            token, replaced = redeemed.token, redeemed.replaced
        try:
            return await self._stream(connection, request, query, token, cors, replaced)
        finally:
            if ticket is not None:
                self.tickets.release(ticket, connection, time.monotonic())

    async def _stream(
        self,
        connection: StreamConnection,
        request: Request,
        query: dict[str, str],
        token: str | None,
        cors: list[tuple[str, str]],
        replaced: object | None,
    ) -> Response:
        session = connection.v1
        actions = list(session.authenticate(token or "", time.time()))
        if (close := next((a for a in actions if isinstance(a, Close)), None)) is not None:
            return _json(401, SSE.poll_error("token refused", reason=close.reason), cors)
        if isinstance(replaced, StreamConnection):  # the ticket's token is still good: it moves
            replaced.close_soon(CLOSE_REPLACED, "replaced")
        since = request.headers.get("Last-Event-ID") or query.get("since") or None
        replays: list[Close | Abort | Replay] = []
        try:
            for message in stream_messages(query, since):
                replays.extend(session.subscribe(message))
        except ProtocolError as exc:
            session.close()
            body = SSE.poll_error(exc.message, code=exc.code, **_sub(exc.sub_id))
            return _json(400, body, cors)
        await connection.stream(_head(cors), replays)
        return response(204, b"", "text/plain")  # never sent: the socket is closed


def _head(cors: list[tuple[str, str]]) -> bytes:
    """The stream's response head: no length (the stream ends when the socket closes), never
    cached, never buffered by a proxy that honours X-Accel-Buffering."""
    lines = [
        "HTTP/1.1 200 OK",
        "Content-Type: text/event-stream",
        "Cache-Control: no-store",
        "Connection: close",
        "X-Accel-Buffering: no",
        *(f"{name}: {value}" for name, value in cors),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _sub(sub_id: str | None) -> dict[str, str]:
    return {} if sub_id is None else {"id": sub_id}


def _json(status: int, body: str, cors: list[tuple[str, str]]) -> Response:
    return response(
        status, body.encode(), "application/json", [("Cache-Control", "no-store"), *cors]
    )
