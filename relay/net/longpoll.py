"""HTTP long-polling, the fallback for clients whose websockets fail (or are switched off).

``GET /v1/poll?table=T[&schema=S][&since=C][&filter=JSON][&ops=INSERT,UPDATE][&wait=25]`` with
``Authorization: Bearer``. The same per-user rules as websockets: the log is read for the
user's audience only, narrowed in SQL by the ops and filter, which the relay then applies
exactly. A request first catches up from the log with the catch-up a websocket replay runs
(relay/core/catchup.py), one pool connection per query and at most ``MAX_PAGES`` queries; if
nothing matched, its subscription goes live with the router like a websocket's and it waits, up
to ``wait`` seconds, for the next matching event: waiting holds no database connection and costs
no query per event. Answers are encoded by relay/core/wire.py.
"""

from __future__ import annotations

import itertools
import time
from typing import Final

import anyio

from relay.core.audience import audience_keys
from relay.core.auth import Authenticator
from relay.core.catchup import Catchup, Live, ReadPage, Reset
from relay.core.events import Event
from relay.core.log import LogSource
from relay.core.requests import parse_subscription, query_message
from relay.core.router import Router
from relay.core.subscription import Subscription
from relay.core.wire import V1
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
    """A request answered with an HTTP error status and a JSON body (relay/core/wire.py)."""

    def __init__(self, status: int, error: str, **members: str) -> None:
        super().__init__(error)
        self.status = status
        self.body = V1.poll_error(error, **members)


class _PollTarget:
    """A router target that collects at most MAX_EVENTS events for one request."""

    def __init__(self, user: str) -> None:
        self.user = user
        self.conn_id = f"poll-{next(_ids)}"
        self.events: list[Event] = []
        self.arrived = anyio.Event()

    def offer(self, sub: Subscription, event: Event, now: float) -> bool:
        if len(self.events) < MAX_EVENTS:
            self.events.append(event)
            self.arrived.set()
        return False  # nothing written: the request answers when it wakes


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
        return exc.status, exc.body


async def _poll(
    hub: Hub,
    authenticator: Authenticator,
    source: LogSource,
    request_target: str,
    authorization: str | None,
) -> str:
    epoch = hub.epoch
    if epoch is None or not hub.ready():
        raise PollError(503, "not ready")
    try:
        claims = authenticator.verify(bearer_token(authorization) or "", time.time())
    except AuthError as exc:
        hub.metrics.auth_failures.labels(exc.reason).inc()
        raise PollError(401, "token refused", reason=exc.reason) from None

    try:
        query = query_params(request_target)
    except ValueError:
        raise PollError(400, "too many query parameters", code="bad_message") from None
    router, wire = hub.router, V1(epoch)  # the epoch and router this request lives in
    try:
        wait = min(MAX_WAIT, max(0.0, float(query.get("wait", MAX_WAIT))))
        sub, since = parse_subscription(
            query_message(query), SUB_ID, tracked=hub.tracked(), head=router.head, epoch=epoch
        )
    except ProtocolError as exc:
        raise PollError(400, exc.message, code=exc.code) from None
    except ValueError:
        raise PollError(400, "wait must be a number", code="bad_message") from None

    if since is None:
        return wire.poll([], router.head)
    if isinstance(since, str):
        hub.metrics.resets.labels(since).inc()
        return wire.poll_reset(since, router.head)

    deadline = anyio.current_time() + wait
    # Registered, not live, for the catch-up: the router skips it until it goes live.
    target = _PollTarget(claims.sub)
    router.add(target, audience_keys(claims))
    router.subscribe(target, sub)
    # Catch up from the log as a websocket replay does: at least one page (so even wait=0 moves
    # on), at most MAX_PAGES, answering with the first events found or where it stopped. The
    # source holds a pool connection for one query at a time, never across pages nor while
    # waiting for live events (relay/pg/replay.py).
    catchup = Catchup(
        router, target, sub, since, limit=MAX_EVENTS, max_pages=MAX_PAGES, deadline=deadline
    )
    try:
        step = catchup.start(await source.state(), anyio.current_time())
        while isinstance(step, ReadPage):
            page = await source.page(audience_keys(claims), sub, step.after, step.upto, step.limit)
            if found := catchup.feed(page):
                return wire.poll(found, catchup.after)
            step = catchup.next(anyio.current_time())
        if isinstance(step, Reset):
            hub.metrics.resets.labels(step.reason).inc()
            return wire.poll_reset(step.reason, router.head)
        if isinstance(step, Live):
            if step.events:  # held while catching up: the answer, without waiting
                return wire.poll(list(step.events), step.after)
            return await _wait_live(router, target, step.after, deadline, wire)
        return wire.poll([], catchup.after)  # the page budget or the wait ran out
    except LogUnavailable:
        raise PollError(503, "the log is unreachable, retry") from None
    finally:
        router.remove(target)


async def _wait_live(
    router: Router, target: _PollTarget, after: int, deadline: float, wire: V1
) -> str:
    with anyio.move_on_after(max(0.0, deadline - anyio.current_time())):
        await target.arrived.wait()
        await anyio.sleep(LINGER)
    events = target.events
    # Every event up to the head was routed to the target, so the head is where the next
    # request goes on; unless the response is full: then after the last event it carries.
    pos = events[-1].pos if len(events) >= MAX_EVENTS else max(after, router.head)
    return wire.poll(events, pos)
