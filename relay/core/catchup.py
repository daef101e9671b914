"""Catching a subscription up from a cursor, then going live: one stepper for every transport.

In the style of psycopg's generators: the stepper decides and never waits; the shell that runs it
does the waiting. A connection's replay (relay/net/connection.py) and a long-poll
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

``Lockstep`` runs several ``Catchup``s as one, for a stream with one position for all its
subscriptions (SSE): one target for all of them, events in log order across them, and all live
in one call. Connections run their replays through it (a websocket's subscription alone, an SSE
stream's all together).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from relay.core.cursor import Cursor
from relay.core.events import Event
from relay.core.log import LogState, ReplayPage
from relay.core.router import Router, Target
from relay.core.subscription import Subscription

__all__ = [
    "Catchup", "Gone", "Live", "LiveTogether", "Lockstep", "Paused", "ReadPage", "ReadPages",
    "Reset", "Step",
]  # fmt: skip


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
        self.hold_from_head()
        return self.next(now)

    def hold_from_head(self) -> None:
        """The router holds what the subscription wants from its head on: the target."""
        if self.hold:
            sub = self.sub
            sub.hold_max = self.hold
            sub.held = []
            sub.held_from = self.router.head

    def held_out(self) -> bool:
        """More arrived than it may hold: holding must start again (the target moves)."""
        return bool(self.hold) and self.sub.held is None

    def upto(self) -> int:
        """The position the log must be read up to before it goes live."""
        return self.sub.held_from if self.hold else self.router.head

    def go_live(self) -> Live:
        """Goes live now (the log was read up to the target), handing over what was held."""
        sub, after, head = self.sub, self.after, self.router.head
        events = tuple(e for e in sub.held or () if e.pos > after)
        sub.held = None
        live_at = max(after, head)
        self.after = live_at
        self.router.go_live(self.target, sub.id, live_at)
        return Live(live_at, events)

    def next(self, now: float) -> Step:
        """Goes live if the catch-up has read the log up to its target (in this call), else asks
        for the next page, or pauses when a budget ran out."""
        if not self.pending():
            self.sub.held = None
            return Gone()
        if self.held_out():
            self.hold_from_head()  # the target moves, once
        target, after = self.upto(), self.after
        if after >= target:
            return self.go_live()
        if (self.max_pages is not None and self.pages >= self.max_pages) or (
            self.pages and self.deadline is not None and now >= self.deadline
        ):
            self.sub.held = None
            return Paused(after)
        return ReadPage(after, target, self.limit)

    def feed(self, page: ReplayPage, through: int | None = None) -> list[Event]:
        """What the subscription is sent of the page's events (``Subscription.delivery`` for the
        connection's audience keys, as the router has them: the events, or an UPDATE's move-out
        or entry), in order; the catch-up moves past the page, or only up to ``through`` (the
        events after it are read again by the next page)."""
        after, sub, keys = self.after, self.sub, self.router.keys(self.target)
        upto = page.scanned_to if through is None else min(page.scanned_to, through)
        events = [
            form
            for event in page.events
            if after < event.pos <= upto and (form := sub.delivery(event, keys)) is not None
        ]
        self.after = max(after, upto)
        self.pages += 1
        return events


@dataclass(frozen=True, slots=True)
class ReadPages:
    """Read these pages (each subscription's ``ReadPage``) and feed them back in this order."""

    reads: tuple[tuple[Subscription, ReadPage], ...]


@dataclass(frozen=True, slots=True)
class LiveTogether:
    """Every subscription is live, the stream standing at ``after``; ``events`` (held while
    catching up, each with its subscription, in log order) go to the client first."""

    after: int
    events: tuple[tuple[Subscription, Event], ...] = ()


class Lockstep:
    """Catches several subscriptions of one connection up together, for a stream that has one
    position for all of them (an SSE stream's ``id:``): its events come in log order across the
    subscriptions, and they go live in the same call.

    They hold from the same head, so they share one target; when one holds out, all hold again
    from the head of that moment. Each step reads a page for the catch-ups that stand furthest
    behind; only events up to the lowest position that every catch-up has covered (a page's end,
    or a catch-up already past it) are handed over, merged by position; the pages' events past it
    are read again. The held events are handed over merged too. With one catch-up it steps as
    that ``Catchup`` does. No page or time budget: it never pauses.
    """

    __slots__ = ("_reading", "catchups", "router")

    def __init__(self, router: Router, catchups: Sequence[Catchup]) -> None:
        if not catchups:
            raise ValueError("a lockstep catch-up needs at least one subscription")
        self.router = router
        self.catchups = tuple(catchups)
        self._reading: tuple[Catchup, ...] = ()

    @property
    def after(self) -> int:
        """The position every subscription has been given everything up to."""
        return min(c.after for c in self.catchups)

    def pending(self) -> bool:
        """Whether every subscription still awaits its catch-up (none gone)."""
        return all(c.pending() for c in self.catchups)

    def start(self, state: LogState, now: float) -> Reset | Gone | LiveTogether | ReadPages:
        """The first step, given the log's state as read after the subscriptions were
        registered: a Reset (for all of them) when the log cannot resume from a cursor."""
        if not self.pending():
            return Gone()
        for catchup in self.catchups:
            reason = state.problem(catchup.since)
            if reason is not None:
                return Reset(reason)
        for catchup in self.catchups:
            catchup.hold_from_head()  # one head: one target
        return self.next(now)

    def next(self, now: float) -> Gone | LiveTogether | ReadPages:
        """Goes live (all of them, in this call) once every catch-up has read the log up to the
        target; else asks for the pages of those furthest behind."""
        catchups = self.catchups
        if not self.pending():
            for catchup in catchups:
                catchup.sub.held = None
            return Gone()
        if any(c.held_out() for c in catchups):
            for catchup in catchups:
                catchup.hold_from_head()  # the target moves, for all
        target = max(c.upto() for c in catchups)  # one head: the same for all
        if all(c.after >= target for c in catchups):
            lives = [c.go_live() for c in catchups]  # no await since the check
            held = [
                (c.sub, e) for c, live in zip(catchups, lives, strict=True) for e in live.events
            ]
            held.sort(key=lambda pair: pair[1].pos)  # stable
            return LiveTogether(max(live.after for live in lives), tuple(held))
        low = self.after
        self._reading = tuple(c for c in catchups if c.after == low)
        return ReadPages(tuple((c.sub, ReadPage(low, target, c.limit)) for c in self._reading))

    def feed(self, pages: Sequence[ReplayPage]) -> list[tuple[Subscription, Event]]:
        """The pages' wanted events up to the position all catch-ups have covered, in log order
        (subscriptions in their order for one position)."""
        reading = self._reading
        if len(pages) != len(reading):
            raise ValueError(f"{len(reading)} pages were asked for, {len(pages)} fed")
        ahead = [c.after for c in self.catchups if c not in reading]
        through = min([page.scanned_to for page in pages] + ahead)
        handed: list[tuple[Subscription, Event]] = []
        for catchup, page in zip(reading, pages, strict=True):
            handed.extend((catchup.sub, event) for event in catchup.feed(page, through))
        handed.sort(key=lambda pair: pair[1].pos)  # stable
        return handed
