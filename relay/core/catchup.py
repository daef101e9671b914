"""Catching a subscription up from a cursor, then going live: one stepper for every transport.

In the style of psycopg's generators: the stepper decides and never waits; the shell that runs it
does the waiting. A websocket replay (relay/net/connection.py) and a long-poll
(relay/net/longpoll.py) both run it:

    catchup = Catchup(router, target, sub, since, limit=...)
    step = catchup.start(await source.state(), now)     # Reset, or the first step
    while isinstance(step, ReadPage):
        page = await source.page(keys, sub, step.after, step.upto, step.limit)
        for event in catchup.feed(page):                  # what sub is sent, in order
            ...                                           # hand them to the client
        step = catchup.next(now)
    # Live (the router now delivers to sub), Reset, Paused or Gone

The subscription is registered with the router, not live, before the catch-up starts (the router
does not deliver to it). From ``start`` on, the router holds what the subscription is sent
(``Subscription.held``, at most ``hold`` of them): the catch-up then reads the log only up to
``held_from``, the router's head when holding began, a fixed target, and hands the held events
over when it goes live. Without holding, a replay would chase the head: under a fast-growing log
and a busy pool every page ends behind a head that has moved on, and the replay may never go live.
When more than ``hold`` events arrive before the target is reached, holding starts again from the
head of that moment (the dropped events are read from the log instead): the target moves only
then.

``next`` makes the subscription live in the call that finds the log read up to the target: no
await separates that check from going live, so no event can be routed in between, and the seam
between replay, held events and live has no gap and no duplicate. The shell hands ``Live.events``
to the client before anything else, in that same step.
"""

from __future__ import annotations

from dataclasses import dataclass

from relay.core.cursor import Cursor
from relay.core.events import Event
from relay.core.log import LogState, ReplayPage
from relay.core.router import Router, Target
from relay.core.subscription import Subscription

__all__ = ["Catchup", "Gone", "Live", "Paused", "ReadPage", "Reset", "Step"]


@dataclass(frozen=True, slots=True)
class ReadPage:
    """Read the events of the subscription's table in (after, upto], at most ``limit``."""

    after: int
    upto: int
    limit: int


@dataclass(frozen=True, slots=True)
class Live:
    """Caught up: the subscription is live, its stream standing at ``after``; ``events`` (held
    while catching up, in order) go to the client first."""

    after: int
    events: tuple[Event, ...] = ()


@dataclass(frozen=True, slots=True)
class Reset:
    """The log cannot resume from the cursor: the client refetches (``reason`` says why)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Paused:
    """The page or time budget ran out before the head: answer, resuming later from ``after``."""

    after: int


@dataclass(frozen=True, slots=True)
class Gone:
    """The subscription is no longer this catch-up's to finish (unsubscribed, its id reused, or
    its connection closed): stop without a word."""


Step = ReadPage | Live | Reset | Paused | Gone


class Catchup:
    """Replays one subscription from ``since`` in pages of ``limit``, then makes it live.

    ``max_pages`` and ``deadline`` (in the clock ``now`` is given in) bound a catch-up that must
    answer in time (a long-poll): past ``max_pages`` pages, or past the deadline after at least
    one page (so even a zero wait moves on), ``next`` says ``Paused``.
    ``after`` is the position the client has been given everything up to.
    """

    __slots__ = ("after", "deadline", "hold", "limit", "max_pages", "pages", "router", "since",
                 "sub", "target")  # fmt: skip

    def __init__(
        self,
        router: Router,
        target: Target,
        sub: Subscription,
        since: Cursor,
        *,
        limit: int,
        max_pages: int | None = None,
        deadline: float | None = None,
        hold: int | None = None,
    ) -> None:
        self.router = router
        self.target = target
        self.sub = sub
        self.since = since
        self.limit = limit
        self.max_pages = max_pages
        self.deadline = deadline
        self.hold = limit if hold is None else hold  # 0: no holding, chase the head
        self.after = since.pos
        self.pages = 0

    def pending(self) -> bool:
        """Whether this very subscription (not a newer one reusing its id) still awaits it."""
        sub = self.sub
        return self.router.subscription(self.target, sub.id) is sub and not sub.live

    def start(self, state: LogState, now: float) -> Step:
        """The first step, given the log's state as read after the subscription was registered."""
        if not self.pending():
            return Gone()
        reason = state.problem(self.since)
        if reason is not None:
            return Reset(reason)
        if self.hold:
            self.sub.hold_max = self.hold
            self._hold_from_head()
        return self.next(now)

    def _hold_from_head(self) -> None:
        sub = self.sub
        sub.held = []
        sub.held_from = self.router.head

    def next(self, now: float) -> Step:
        """Goes live if the catch-up has read the log up to its target (in this call), else asks
        for the next page, or pauses when a budget ran out."""
        sub = self.sub
        if not self.pending():
            sub.held = None
            return Gone()
        head = self.router.head
        if self.hold and sub.held is None:
            self._hold_from_head()  # more arrived than it may hold: the target moves, once
        target = sub.held_from if self.hold else head
        after = self.after
        if after >= target:
            events = tuple(e for e in sub.held or () if e.pos > after)
            sub.held = None
            live_at = max(after, head)
            self.after = live_at
            self.router.go_live(self.target, sub.id, live_at)
            return Live(live_at, events)
        if (self.max_pages is not None and self.pages >= self.max_pages) or (
            self.pages and self.deadline is not None and now >= self.deadline
        ):
            sub.held = None
            return Paused(after)
        return ReadPage(after, target, self.limit)

    def feed(self, page: ReplayPage) -> list[Event]:
        """What the subscription is sent of the page's events (``Subscription.delivery`` for the
        connection's audience keys, as the router has them: the events, or an UPDATE's move-out
        or entry), in order; the catch-up moves past the page."""
        after, sub, keys = self.after, self.sub, self.router.keys(self.target)
        events = [
            form
            for event in page.events
            if event.pos > after and (form := sub.delivery(event, keys)) is not None
        ]
        self.after = max(after, page.scanned_to)
        self.pages += 1
        return events
