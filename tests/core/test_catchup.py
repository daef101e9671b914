"""The catch-up stepper: replay from a cursor in pages, then go live with no gap and no duplicate."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from relay.core.catchup import (
    Catchup,
    Gone,
    Live,
    LiveTogether,
    Lockstep,
    Paused,
    ReadPage,
    ReadPages,
    Reset,
)  # fmt: skip
from relay.core.cursor import Cursor
from relay.core.events import OPS
from relay.core.log import LogState, ReplayPage
from relay.core.router import Router
from relay.core.subscription import Subscription
from tests.support.factories import RecordingTarget, make_event, make_sub

EPOCH = "c" * 32


def registered(head: int, ops: Iterable[str] = OPS) -> tuple[Router, RecordingTarget, Subscription]:
    """A router at ``head`` with one connection and one subscription awaiting its catch-up."""
    router = Router(head=head)
    target = RecordingTarget("alice", "c1")
    router.add(target)
    sub = make_sub("s", live=False, ops=ops)
    router.subscribe(target, sub)
    return router, target, sub


def state(head: int, pruned_through: int = 0, epoch: str = EPOCH) -> LogState:
    return LogState(epoch=epoch, head=head, pruned_through=pruned_through, notify=True)


@pytest.mark.parametrize(
    ("log", "reason"),
    [
        (state(20, pruned_through=8), "cursor_expired"),
        (state(20, epoch="d" * 32), "epoch_changed"),
        (state(4), "epoch_changed"),  # the log went back in time: a restore
    ],
)
def test_a_cursor_the_log_cannot_resume_from_is_a_reset(log: LogState, reason: str) -> None:
    """Pruned past the cursor, another epoch, or a head behind the cursor: Reset with the reason."""
    router, target, sub = registered(20)
    assert Reset(reason) == Catchup(router, target, sub, Cursor(EPOCH, 5), limit=10).start(log, 0)


def test_a_cursor_at_the_head_goes_live_at_once() -> None:
    """Nothing to replay: the first step is Live, and the router delivers what comes next."""
    router, target, sub = registered(20)
    assert Live(20) == Catchup(router, target, sub, Cursor(EPOCH, 20), limit=10).start(state(20), 0)
    assert (True, 20) == (sub.live, sub.after)
    router.route(make_event(21), 0.0)
    assert [("s", 21)] == target.received


def test_pages_run_to_the_head_then_live_with_no_gap_and_no_duplicate() -> None:
    """Without holding, each page reads up to the head as it is then; live starts after it."""
    router, target, sub = registered(10, ops=["INSERT"])
    catchup = Catchup(router, target, sub, Cursor(EPOCH, 5), limit=2, hold=0)
    assert ReadPage(5, 10, 2) == catchup.start(state(10), 0)
    page = ReplayPage([make_event(6), make_event(7, op="UPDATE"), make_event(9)], scanned_to=9)
    assert [6, 9] == [event.pos for event in catchup.feed(page)]  # the op it does not want: out
    router.route(make_event(11), 0.0)  # routed while replaying: not delivered, read by a page
    assert ReadPage(9, 11, 2) == catchup.next(0)
    assert [11] == [event.pos for event in catchup.feed(ReplayPage([make_event(11)], 11))]
    assert Live(11) == catchup.next(0)
    router.route(make_event(12), 0.0)
    assert ([("s", 12)], 12) == (target.received, sub.after)


def test_events_routed_while_catching_up_are_held_and_handed_over_when_live() -> None:
    """The log is read up to the head at the start only; what is routed meanwhile is held (the
    events the subscription wants, in order) and handed over in the step that goes live."""
    router, target, sub = registered(10, ops=["INSERT"])
    catchup = Catchup(router, target, sub, Cursor(EPOCH, 5), limit=2)
    assert ReadPage(5, 10, 2) == catchup.start(state(10), 0)
    assert [6] == [e.pos for e in catchup.feed(ReplayPage([make_event(6)], scanned_to=8))]
    router.route(make_event(11), 0.0)
    router.route(make_event(12, op="UPDATE"), 0.0)  # not wanted: not held
    router.route(make_event(13), 0.0)
    assert ReadPage(8, 10, 2) == catchup.next(0)  # the target stays where holding began
    assert [] == catchup.feed(ReplayPage([], scanned_to=10))
    step = catchup.next(0)
    assert isinstance(step, Live)
    assert (13, [11, 13]) == (step.after, [e.pos for e in step.events])
    assert ([], True, 13, None) == (target.received, sub.live, sub.after, sub.held)
    router.route(make_event(14), 0.0)
    assert [("s", 14)] == target.received


def test_holding_past_its_bound_moves_the_target_once() -> None:
    """More events than the bound arrive before the target is read: holding starts again from
    the head of that moment, and the dropped events are read from the log instead."""
    router, target, sub = registered(10)
    catchup = Catchup(router, target, sub, Cursor(EPOCH, 5), limit=10, hold=2)
    assert ReadPage(5, 10, 10) == catchup.start(state(10), 0)
    for pos in (11, 12, 13):  # the third passes the bound
        router.route(make_event(pos), 0.0)
    assert sub.held is None
    catchup.feed(ReplayPage([], scanned_to=10))
    assert ReadPage(10, 13, 10) == catchup.next(0)
    router.route(make_event(14), 0.0)
    assert [11, 12, 13] == [e.pos for e in catchup.feed(ReplayPage(
        [make_event(11), make_event(12), make_event(13)], scanned_to=13))]  # fmt: skip
    step = catchup.next(0)
    assert isinstance(step, Live)
    assert (14, [14]) == (step.after, [e.pos for e in step.events])


def test_events_at_or_before_the_cursor_are_not_handed_over() -> None:
    """A page that repeats positions the client has is filtered by position."""
    router, target, sub = registered(10)
    catchup = Catchup(router, target, sub, Cursor(EPOCH, 5), limit=10)
    catchup.start(state(10), 0)
    assert [6] == [e.pos for e in catchup.feed(ReplayPage([make_event(5), make_event(6)], 10))]


def test_the_page_budget_pauses_where_the_catch_up_stopped() -> None:
    """Past max_pages pages the step is Paused at the last position scanned."""
    router, target, sub = registered(100)
    catchup = Catchup(router, target, sub, Cursor(EPOCH, 0), limit=10, max_pages=2)
    catchup.start(state(100), 0)
    catchup.feed(ReplayPage([], scanned_to=30))
    assert ReadPage(30, 100, 10) == catchup.next(0)
    catchup.feed(ReplayPage([], scanned_to=60))
    assert (Paused(60), False) == (catchup.next(0), sub.live)


def test_the_deadline_pauses_only_after_one_page() -> None:
    """A deadline already past still reads one page, so even a zero wait moves on."""
    router, target, sub = registered(100)
    catchup = Catchup(router, target, sub, Cursor(EPOCH, 0), limit=10, deadline=5.0)
    assert ReadPage(0, 100, 10) == catchup.start(state(100), 9.0)
    catchup.feed(ReplayPage([], scanned_to=40))
    assert Paused(40) == catchup.next(9.0)


@pytest.mark.parametrize("how", ["unsubscribed", "id_reused", "connection_closed"])
def test_a_subscription_that_is_no_longer_pending_is_gone(how: str) -> None:
    """Unsubscribed, its id taken by a new subscription, or its connection closed: Gone."""
    router, target, sub = registered(10)
    catchup = Catchup(router, target, sub, Cursor(EPOCH, 5), limit=10)
    assert catchup.pending()
    if how == "unsubscribed":
        router.unsubscribe(target, "s")
    elif how == "id_reused":
        router.subscribe(target, make_sub("s", live=False))
    else:
        router.remove(target)
    assert (False, Gone(), Gone()) == (catchup.pending(), catchup.start(state(10), 0),
                                       catchup.next(0))  # fmt: skip
    assert (False, None) == (sub.live, sub.held)


def two_subscriptions(head: int) -> tuple[Router, RecordingTarget, Subscription, Subscription]:
    """A router at ``head`` with one connection whose subscriptions a (items) and b (others)
    await their catch-up."""
    router = Router(head=head)
    target = RecordingTarget("alice", "c1")
    router.add(target)
    a, b = make_sub("a", live=False), make_sub("b", table="others", live=False)
    router.subscribe(target, a)
    router.subscribe(target, b)
    return router, target, a, b


def lockstep(router: Router, target: RecordingTarget, *subs: Subscription, since: int,
             limit: int = 10) -> Lockstep:  # fmt: skip
    return Lockstep(
        router, [Catchup(router, target, s, Cursor(EPOCH, since), limit=limit) for s in subs]
    )


def test_lockstep_hands_events_over_in_log_order_up_to_what_every_page_covered() -> None:
    """Each subscription's page is read; only events up to the shorter page's end are handed
    over, merged by position; the longer page's later events are read again next time."""
    router, target, a, b = two_subscriptions(20)
    steps = lockstep(router, target, a, b, since=0, limit=2)
    assert ReadPages(((a, ReadPage(0, 20, 2)), (b, ReadPage(0, 20, 2)))) == steps.start(
        state(20), 0
    )
    page_a = ReplayPage([make_event(3), make_event(9)], scanned_to=9)
    page_b = ReplayPage([make_event(2, table="others"), make_event(5, table="others")], 5)
    handed = steps.feed([page_a, page_b])
    assert [("b", 2), ("a", 3), ("b", 5)] == [(s.id, e.pos) for s, e in handed]
    assert (5, 5, 5) == (steps.after, steps.catchups[0].after, steps.catchups[1].after)
    assert ReadPages(((a, ReadPage(5, 20, 2)), (b, ReadPage(5, 20, 2)))) == steps.next(0)


def test_lockstep_reads_only_for_the_subscriptions_furthest_behind() -> None:
    """A catch-up already further on waits; events up to where it stands are handed over."""
    router, target, a, b = two_subscriptions(20)
    steps = Lockstep(router, [Catchup(router, target, a, Cursor(EPOCH, 4), limit=10),
                              Catchup(router, target, b, Cursor(EPOCH, 8), limit=10)])  # fmt: skip
    assert ReadPages(((a, ReadPage(4, 20, 10)),)) == steps.start(state(20), 0)
    handed = steps.feed([ReplayPage([make_event(6), make_event(12)], scanned_to=20)])
    assert [("a", 6)] == [(s.id, e.pos) for s, e in handed]  # 12 waits: b stands at 8
    assert ReadPages(((a, ReadPage(8, 20, 10)), (b, ReadPage(8, 20, 10)))) == steps.next(0)


def test_lockstep_goes_live_all_at_once_at_the_head() -> None:
    """None goes live before all have reached the head; then all do, in the same call."""
    router, target, a, b = two_subscriptions(10)
    steps = lockstep(router, target, a, b, since=10)
    assert (LiveTogether(10), True, True) == (steps.start(state(10), 0), a.live, b.live)
    router.route(make_event(11), 0.0)
    router.route(make_event(12, table="others"), 0.0)
    assert [("a", 11), ("b", 12)] == target.received


def test_lockstep_resets_all_or_stops_when_any_is_gone() -> None:
    """A cursor the log cannot resume from resets every subscription; one gone stops them all."""
    router, target, a, b = two_subscriptions(20)
    assert Reset("cursor_expired") == lockstep(router, target, a, b, since=5).start(
        state(20, pruned_through=8), 0
    )
    steps = lockstep(router, target, a, b, since=5)
    router.unsubscribe(target, "b")
    assert (Gone(), False) == (steps.start(state(20), 0), steps.pending())


def test_lockstep_of_one_steps_as_its_catchup() -> None:
    """One subscription: the same reads, events and live step as Catchup alone."""
    router, target, sub = registered(10, ops=["INSERT"])
    steps = lockstep(router, target, sub, since=5, limit=2)
    assert ReadPages(((sub, ReadPage(5, 10, 2)),)) == steps.start(state(10), 0)
    page = ReplayPage([make_event(6), make_event(7, op="UPDATE"), make_event(9)], scanned_to=9)
    assert [6, 9] == [event.pos for _, event in steps.feed([page])]
    assert ReadPages(((sub, ReadPage(9, 10, 2)),)) == steps.next(0)
    steps.feed([ReplayPage([], scanned_to=10)])
    assert (LiveTogether(10), True) == (steps.next(0), sub.live)


def test_lockstep_hands_over_what_was_held_merged_by_position() -> None:
    """Both hold from one head (one target); what each held is handed over in log order in the
    step that makes them all live."""
    router, target, a, b = two_subscriptions(10)
    steps = lockstep(router, target, a, b, since=8)
    assert ReadPages(((a, ReadPage(8, 10, 10)), (b, ReadPage(8, 10, 10)))) == steps.start(
        state(10), 0
    )
    router.route(make_event(11, table="others"), 0.0)
    router.route(make_event(12), 0.0)
    router.route(make_event(13, table="others"), 0.0)
    assert [("a", 9)] == [(s.id, e.pos) for s, e in steps.feed(
        [ReplayPage([make_event(9)], 10), ReplayPage([], 10)])]  # fmt: skip
    step = steps.next(0)
    assert isinstance(step, LiveTogether)
    assert (13, [("b", 11), ("a", 12), ("b", 13)]) == (
        step.after,
        [(s.id, e.pos) for s, e in step.events],
    )
    assert ([], True, True, 13, 13) == (target.received, a.live, b.live, a.after, b.after)


def test_one_holding_out_moves_the_target_for_all() -> None:
    """Past one subscription's bound, both hold again from the head of that moment: the one
    target moves for all, and what was held is read from the log instead."""
    router, target, a, b = two_subscriptions(10)
    steps = Lockstep(router, [Catchup(router, target, s, Cursor(EPOCH, 8), limit=10, hold=1)
                              for s in (a, b)])  # fmt: skip
    steps.start(state(10), 0)
    router.route(make_event(11, table="others"), 0.0)
    router.route(make_event(12), 0.0)
    router.route(make_event(13), 0.0)  # a's second: past its bound
    steps.feed([ReplayPage([], 10), ReplayPage([], 10)])
    assert ReadPages(((a, ReadPage(10, 13, 10)), (b, ReadPage(10, 13, 10)))) == steps.next(0)
    assert ([], []) == (a.held, b.held)


def test_a_replayed_page_is_decided_with_the_connections_audience_keys() -> None:
    """The catch-up decides each replayed event with the keys the router holds for the
    connection: a row that left an audience naming only its role key is its move-out."""
    router = Router(head=10)
    target = RecordingTarget("", "c1")
    router.add(target, ["role:anon"])
    sub = make_sub("s", live=False)
    router.subscribe(target, sub)
    catchup = Catchup(router, target, sub, Cursor(EPOCH, 5), limit=10, hold=0)
    assert ReadPage(5, 10, 10) == catchup.start(state(10), 0)
    public = make_event(6, audience=["alice", "role:anon"])
    hidden = make_event(7, op="UPDATE", old_values={}, audience=["alice"],
                        old_audience=["alice", "role:anon"])  # fmt: skip
    assert [public, hidden.moved_out()] == catchup.feed(ReplayPage([public, hidden], 10))
