"""HTTP long-polling, the fallback for clients whose websockets fail (or are switched off).

``GET /v1/poll?table=T[&schema=S][&since=C][&filter=JSON][&ops=INSERT,UPDATE][&wait=25]`` with
``Authorization: Bearer``. The same per-user rules as websockets: the log is read for the
user's audience only, narrowed in SQL by the ops and filter, which the relay then applies
exactly. A request first catches up from the log, one pool connection per query and at most
``MAX_PAGES`` queries; if nothing matched it registers with the router like a websocket
subscription and waits, up to ``wait`` seconds, for the next matching event: waiting holds no
database connection and costs no query per event.
"""

from __future__ import annotations

import itertools
import json
import time
from typing import Any, Final

import anyio

from relay.core.auth import Authenticator
from relay.core.cursor import Cursor
from relay.core.events import Event, dumps
from relay.core.log import LogSource, resume_problem
from relay.core.router import Router
from relay.core.session import parse_subscription
from relay.core.subscription import Subscription
from relay.errors import AuthError, LogUnavailable, ProtocolError
from relay.net.hub import Hub
from relay.net.responses import bearer_token, query_params

__all__ = ["MAX_EVENTS", "MAX_PAGES", "MAX_WAIT", "handle_poll"]

MAX_WAIT: Final = 25.0
MAX_EVENTS: Final = 500  # per response; the cursor says where the next request continues
# Log queries per request's catch-up, each examining at most REPLAY_SCAN_ROWS of the user's rows
# of the table: a request's database time is bounded; past it, the answer carries the cursor
# where it stopped and the client's next request goes on from there.
MAX_PAGES: Final = 10
LINGER: Final = 0.02  # after the first live event, gather what arrives with it
SUB_ID: Final = "poll"

_ids = itertools.count(1)


class PollError(Exception):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(body.get("error", ""))
        self.status = status
        self.body = body


class _PollTarget:
    """A router target that collects at most MAX_EVENTS events for one request."""

    def __init__(self, user: str) -> None:
        self.user = user
        self.conn_id = f"poll-{next(_ids)}"
        self.events: list[Event] = []
        self.arrived = anyio.Event()
        self.router: Router | None = None  # the router it is registered with

    def offer(self, sub: Subscription, event: Event, now: float) -> None:
        if len(self.events) < MAX_EVENTS:
            self.events.append(event)
            self.arrived.set()


def _message(query: dict[str, str]) -> dict[str, Any]:
    """The query string as a subscribe message, so both transports validate alike."""
    message: dict[str, Any] = {"table": query.get("table"), "schema": query.get("schema")}
    if query.get("since"):
        message["since"] = query["since"]
    if query.get("filter"):
        try:
            message["filter"] = json.loads(query["filter"])
        except (ValueError, RecursionError):
            raise ProtocolError("bad_message", "filter is not valid JSON") from None
    if query.get("ops"):
        message["ops"] = [op.strip() for op in query["ops"].split(",")]
    return message


def _body(events: list[Event], cursor: str, epoch: str) -> str:
    frames = ",".join('{"type":"event",' + event.wire_tail(epoch) for event in events)
    return '{"events":[' + frames + '],"cursor":' + dumps(cursor) + "}"


async def handle_poll(
    hub: Hub,
    authenticator: Authenticator,
    source: LogSource,
    request_target: str,
    authorization: str | None,
) -> tuple[int, str]:
    """Answers one long-poll request (its path and query, its Authorization header)."""
    try:
        return 200, await _poll(hub, authenticator, source, request_target, authorization)
    except PollError as exc:
        return exc.status, dumps(exc.body)


async def _poll(
    hub: Hub,
    authenticator: Authenticator,
    source: LogSource,
    request_target: str,
    authorization: str | None,
) -> str:

    epoch = hub.epoch
    if epoch is None or not hub.ready():
        raise PollError(503, {"error": "not ready"})
    try:
        claims = authenticator.verify(bearer_token(authorization) or "", time.time())
    except AuthError as exc:
        hub.metrics.auth_failures.labels(exc.reason).inc()
        raise PollError(401, {"error": "token refused", "reason": exc.reason}) from None

    try:
        query = query_params(request_target)
    except ValueError:
        raise PollError(
            400, {"error": "too many query parameters", "code": "bad_message"}
        ) from None
    try:
        wait = min(MAX_WAIT, max(0.0, float(query.get("wait", MAX_WAIT))))
        sub, since = parse_subscription(
            _message(query), SUB_ID, tracked=hub.tracked(), head=hub.router.head, epoch=epoch
        )
    except ProtocolError as exc:
        raise PollError(400, {"error": exc.message, "code": exc.code}) from None
    except ValueError:
        raise PollError(400, {"error": "wait must be a number", "code": "bad_message"}) from None

    def head_cursor() -> str:
        return Cursor(epoch, hub.router.head).encode()

    if since is None:
        return _body([], head_cursor(), epoch)
    if isinstance(since, str):
        hub.metrics.resets.labels(since).inc()
        return dumps({"reset": {"reason": since}, "cursor": head_cursor()})

    deadline = anyio.current_time() + wait
    target: _PollTarget | None = None
    # The source holds a pool connection for one query at a time, never across pages nor
    # while waiting for live events (relay/pg/replay.py).
    try:
        state = await source.state()
        if (reason := resume_problem(since, state)) is not None:
            hub.metrics.resets.labels(reason).inc()
            return dumps({"reset": {"reason": reason}, "cursor": head_cursor()})
        after = since.pos
        # Catch up from the log until the router's head, as a websocket replay does: at least
        # one page (so even wait=0 moves on), at most MAX_PAGES, then answer where it stopped.
        pages = 0
        while True:
            if after >= hub.router.head:
                # No await between that check and going live: no event can slip between.
                target = _go_live(hub, claims.sub, sub, after)
                break
            if pages >= MAX_PAGES or (pages and anyio.current_time() >= deadline):
                break
            page = await source.page(claims.sub, sub, after, hub.router.head, MAX_EVENTS)
            pages += 1
            found = [e for e in page.events if e.op in sub.ops and sub.filter.matches(e)]
            after = page.scanned_to
            if found:
                return _body(found, Cursor(epoch, after).encode(), epoch)
    except LogUnavailable:
        if target is not None and target.router is not None:
            target.router.remove(target)
        raise PollError(503, {"error": "the log is unreachable, retry"}) from None
    if target is None:  # the page budget or the wait ran out while catching up
        return _body([], Cursor(epoch, after).encode(), epoch)
    return await _wait_live(hub, target, after, deadline, epoch)


def _go_live(hub: Hub, user: str, sub: Subscription, after: int) -> _PollTarget:
    target = _PollTarget(user)
    target.router = router = hub.router
    router.add(target)
    router.subscribe(target, sub)
    router.go_live(target, sub.id, after)
    return target


async def _wait_live(hub: Hub, target: _PollTarget, after: int, deadline: float, epoch: str) -> str:
    router = target.router
    assert router is not None
    try:
        with anyio.move_on_after(max(0.0, deadline - anyio.current_time())):
            await target.arrived.wait()
            await anyio.sleep(LINGER)
        events = target.events
        # Every event up to the head was routed to the target, so the head is where the next
        # request goes on; unless the response is full: then after the last event it carries.
        pos = events[-1].pos if len(events) >= MAX_EVENTS else max(after, router.head)
        return _body(events, Cursor(epoch, pos).encode(), epoch)
    finally:
        router.remove(target)
