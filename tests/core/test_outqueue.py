"""OutQueue: bounds, conflation, overflow resets and coalescing windows (pure, no I/O)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.core.events import Event, JSONValue, Op
from relay.core.filters import RowFilter
from relay.core.outqueue import OutQueue
from relay.core.subscription import Subscription
from relay.core.wire import V1

EPOCH = "0123456789abcdef0123456789abcdef"
AT = datetime(2026, 1, 1, tzinfo=UTC)


def ev(
    pos: int,
    op: Op = "UPDATE",
    *,
    pk: int = 1,
    old_pk: int | None = None,
    changed: tuple[str, ...] = ("v",),
    table: str = "items",
) -> Event:
    """An event of row ``pk``; an UPDATE with ``old_pk`` changed the primary key from it."""
    key: Mapping[str, JSONValue] = {"id": pk}
    old: Mapping[str, JSONValue] | None = None
    if op != "INSERT":
        old = {"id": old_pk if old_pk is not None else pk}
    return Event(
        pos=pos,
        schema="public",
        table=table,
        op=op,
        pk=key,
        row={"id": pk, "v": pos},
        old_key=old,
        changed=changed if op == "UPDATE" else (),
        audience=frozenset({"alice"}),
        committed_at=AT,
    )


def sub(sub_id: str = "s1", coalesce_ms: int = 0) -> Subscription:
    return Subscription(
        id=sub_id,
        table="items",
        schema=None,
        ops=frozenset({"INSERT", "UPDATE", "DELETE"}),
        filter=RowFilter.parse(None),
        after=0,
        live=True,
        coalesce_ms=coalesce_ms,
    )


def frame_size(s: Subscription, e: Event) -> int:
    return len(V1(EPOCH).event(s.id, e))


def parsed(frames: list[str]) -> list[dict[str, Any]]:
    return [json.loads(f) for f in frames]


def summary(frames: list[str]) -> list[tuple[str, str, str]]:
    """(type, sub, cursor position or reason) per frame: compact enough to compare whole lists."""
    out = []
    for f in parsed(frames):
        if f["type"] in ("event", "reset"):
            out.append((f["type"], f["sub"], f["cursor"].split(".")[1]))
        else:
            out.append((f["type"], f.get("sub", ""), ""))
    return out


def control(name: str) -> str:
    return json.dumps({"type": name}, separators=(",", ":"))


# -- plain delivery -------------------------------------------------------------------------


def test_offered_event_pops_as_its_frame() -> None:
    """An offered event comes out as exactly its encoder's frame, V1(epoch).event(sub.id, event)."""
    q, s, e = OutQueue(V1(EPOCH)), sub(), ev(7, "INSERT")
    q.offer(s, e, now=0.0)
    assert 1 == len(q)
    assert [V1(EPOCH).event("s1", e)] == q.pop_ready(now=0.0)
    assert 0 == len(q)


def test_pending_bytes_is_the_size_of_the_queued_frames() -> None:
    """pending_bytes counts every queued frame (events and controls) and returns to 0 on pop."""
    q, s = OutQueue(V1(EPOCH)), sub()
    events = [ev(1, "INSERT"), ev(2, pk=2)]
    for e in events:
        q.offer(s, e, now=0.0)
    q.push_control(control("pong"))
    expected = sum(frame_size(s, e) for e in events) + len(control("pong"))
    assert expected == q.pending_bytes
    assert expected == sum(len(f) for f in q.pop_ready(now=0.0))
    assert 0 == q.pending_bytes


def test_control_frames_keep_their_place_among_events() -> None:
    """Control frames come out in push order relative to events."""
    q, s = OutQueue(V1(EPOCH)), sub()
    q.push_control('{"type":"subscribed","sub":"s1"}')
    q.offer(s, ev(1, "INSERT"), now=0.0)
    q.push_control(control("pong"))
    q.offer(s, ev(2, "INSERT", pk=2), now=0.0)
    assert [
        ("subscribed", "s1", ""),
        ("event", "s1", "1"),
        ("pong", "", ""),
        ("event", "s1", "2"),
    ] == summary(q.pop_ready(now=0.0))


def test_pop_ready_honours_max_frames() -> None:
    """pop_ready returns at most max_frames frames and leaves the rest queued, in order."""
    q, s = OutQueue(V1(EPOCH)), sub()
    for pos in range(1, 6):
        q.offer(s, ev(pos, "INSERT", pk=pos), now=0.0)
    assert ["1", "2"] == [c for _, _, c in summary(q.pop_ready(now=0.0, max_frames=2))]
    assert [] == q.pop_ready(now=0.0, max_frames=0)
    assert ["3", "4", "5"] == [c for _, _, c in summary(q.pop_ready(now=0.0))]


def test_no_conflation_below_the_bounds() -> None:
    """Without pressure and without a window, every UPDATE of a row is delivered."""
    q, s = OutQueue(V1(EPOCH)), sub()
    for pos in (1, 2, 3):
        q.offer(s, ev(pos), now=0.0)
    assert ["1", "2", "3"] == [c for _, _, c in summary(q.pop_ready(now=0.0))]
    assert 0 == q.conflated


def test_rejects_non_positive_bounds() -> None:
    """A queue with a zero bound is a configuration error."""
    with pytest.raises(ValueError):
        OutQueue(V1(EPOCH), max_messages=0)
    with pytest.raises(ValueError):
        OutQueue(V1(EPOCH), max_bytes=0)


# -- conflation under pressure --------------------------------------------------------------


def test_conflation_at_the_message_bound_merges_into_the_newer_place() -> None:
    """At max_messages, UPDATEs of one row merge at the newer position, in the newer's place."""
    q, s = OutQueue(V1(EPOCH), max_messages=2), sub()
    q.offer(s, ev(1, pk=1, changed=("a",)), now=0.0)
    q.offer(s, ev(2, pk=2), now=0.0)
    q.offer(s, ev(3, pk=1, changed=("b",)), now=0.0)
    frames = parsed(q.pop_ready(now=0.0))
    assert [f"{EPOCH}.2", f"{EPOCH}.3"] == [f["cursor"] for f in frames]
    assert ["a", "b"] == frames[1]["changed"]
    assert {"id": 1, "v": 3} == frames[1]["row"]
    assert 1 == q.conflated
    assert 0 == q.dropped


def test_conflation_merges_a_whole_backlog_chain() -> None:
    """A push at the bound conflates every chain in the backlog, not only the offered row."""
    q, s = OutQueue(V1(EPOCH), max_messages=4), sub()
    for pos, pk in ((1, 1), (2, 2), (3, 1), (4, 2)):
        q.offer(s, ev(pos, pk=pk), now=0.0)
    q.offer(s, ev(5, pk=3), now=0.0)
    assert ["3", "4", "5"] == [c for _, _, c in summary(q.pop_ready(now=0.0))]
    assert 2 == q.conflated


def test_conflation_at_the_byte_bound() -> None:
    """Passing max_bytes conflates like passing max_messages."""
    s = sub()
    one = frame_size(s, ev(1))
    q = OutQueue(V1(EPOCH), max_bytes=one * 2 + one // 2)
    for pos in (1, 2, 3):
        q.offer(s, ev(pos), now=0.0)
    assert ["3"] == [c for _, _, c in summary(q.pop_ready(now=0.0))]
    assert 2 == q.conflated
    assert 0 == q.resets


def test_no_conflation_across_delete_or_insert_of_the_row() -> None:
    """An UPDATE is never merged across a DELETE or INSERT of the same row."""
    q, s = OutQueue(V1(EPOCH), max_messages=4), sub()
    q.offer(s, ev(1), now=0.0)
    q.offer(s, ev(2, "DELETE"), now=0.0)
    q.offer(s, ev(3, "INSERT"), now=0.0)
    q.offer(s, ev(4), now=0.0)
    q.offer(s, ev(5), now=0.0)  # merges with 4 only
    assert ["1", "2", "3", "5"] == [c for _, _, c in summary(q.pop_ready(now=0.0))]
    assert 1 == q.conflated


def test_no_conflation_of_a_key_changing_update() -> None:
    """An UPDATE that changed the primary key is never merged, on either of its keys."""
    q, s = OutQueue(V1(EPOCH), max_messages=3), sub()
    q.offer(s, ev(1, pk=1), now=0.0)
    q.offer(s, ev(2, pk=2, old_pk=1), now=0.0)  # row 1 became row 2
    q.offer(s, ev(3, pk=2), now=0.0)  # not merged into the key change
    q.offer(s, ev(4, pk=1), now=0.0)  # a new row 1: not merged into the old one
    assert 0 == q.conflated
    assert 4 == q.dropped
    assert [("reset", "s1", "4")] == summary(q.pop_ready(now=0.0))


def test_conflation_stays_within_one_subscription() -> None:
    """The same row queued for two subscriptions is never merged across them."""
    q, a, b = OutQueue(V1(EPOCH), max_messages=2), sub("a"), sub("b")
    q.offer(a, ev(1), now=0.0)
    q.offer(b, ev(1), now=0.0)
    q.offer(a, ev(2), now=0.0)
    assert [("event", "b", "1"), ("event", "a", "2")] == summary(q.pop_ready(now=0.0))


# -- overflow -------------------------------------------------------------------------------


def test_overflow_drops_events_keeps_controls_and_resets_each_subscription() -> None:
    """Still over after conflation: all events go, controls stay, one reset per losing sub."""
    q, a, b = OutQueue(V1(EPOCH), max_messages=4), sub("a"), sub("b")
    q.push_control(control("pong"))
    q.offer(a, ev(1, "INSERT", pk=1), now=0.0)
    q.offer(b, ev(2, "INSERT", pk=2), now=0.0)
    q.offer(a, ev(3, "INSERT", pk=3), now=0.0)
    q.offer(b, ev(4, "INSERT", pk=4), now=0.0)  # the fifth frame
    assert [("pong", "", ""), ("reset", "a", "3"), ("reset", "b", "4")] == summary(
        q.pop_ready(now=0.0)
    )
    assert (4, 2, 0) == (q.dropped, q.resets, q.conflated)
    assert not q.overflowed


def test_reset_frame_text() -> None:
    """The overflow reset frame is exactly the protocol's reset object."""
    q, s = OutQueue(V1(EPOCH), max_messages=1), sub("s\u00e9")
    q.offer(s, ev(1, "INSERT"), now=0.0)
    q.offer(s, ev(2, "INSERT", pk=2), now=0.0)
    expected = '{"type":"reset","sub":"s\u00e9","reason":"overflow","cursor":"' + EPOCH + '.2"}'
    assert [expected] == q.pop_ready(now=0.0)


def test_events_after_a_reset_keep_flowing() -> None:
    """After an overflow reset at C, the subscription's later events follow the reset."""
    q, s = OutQueue(V1(EPOCH), max_messages=2), sub()
    for pos in (1, 2, 3):
        q.offer(s, ev(pos, "INSERT", pk=pos), now=0.0)
    q.offer(s, ev(4, "INSERT", pk=4), now=0.0)
    assert [("reset", "s1", "3"), ("event", "s1", "4")] == summary(q.pop_ready(now=0.0))


def test_a_pending_reset_moves_forward_instead_of_repeating() -> None:
    """A second overflow before the first reset is sent updates that reset's cursor."""
    q, s = OutQueue(V1(EPOCH), max_messages=2), sub()
    for pos in range(1, 7):
        q.offer(s, ev(pos, "INSERT", pk=pos), now=0.0)
    assert [("reset", "s1", "5"), ("event", "s1", "6")] == summary(q.pop_ready(now=0.0))
    assert 2 == q.resets
    assert 5 == q.dropped
    assert 0 == q.pending_bytes


def test_an_event_larger_than_max_bytes_becomes_a_reset() -> None:
    """An event that can never fit is dropped and replaced by a reset at its position."""
    q, s = OutQueue(V1(EPOCH), max_bytes=150), sub()
    big = Event(
        pos=9,
        schema="public",
        table="items",
        op="INSERT",
        pk={"id": 1},
        row={"id": 1, "blob": "x" * 500},
        old_key=None,
        changed=(),
        audience=frozenset({"alice"}),
        committed_at=AT,
    )
    q.offer(s, big, now=0.0)
    assert [("reset", "s1", "9")] == summary(q.pop_ready(now=0.0))


def test_control_flood_sets_overflowed() -> None:
    """Control frames alone passing a bound mark the connection for abort; nothing is accepted."""
    q, s = OutQueue(V1(EPOCH), max_messages=3), sub()
    q.offer(s, ev(1, "INSERT"), now=0.0)
    q.push_control(control("pong"))
    q.push_control(control("pong"))
    assert not q.overflowed
    q.push_control(control("pong"))  # the event goes first, but pongs plus its reset pass 3
    assert q.overflowed
    assert 1 == q.dropped
    before = len(q)
    q.offer(s, ev(2, "INSERT", pk=2), now=0.0)
    q.push_control(control("pong"))
    assert before == len(q)


def test_control_bytes_alone_set_overflowed() -> None:
    """max_bytes applies to control frames too."""
    q = OutQueue(V1(EPOCH), max_bytes=40)
    q.push_control(control("pong"))
    q.push_control(control("pong"))
    assert not q.overflowed
    q.push_control(control("pong"))
    assert q.overflowed


# -- coalescing windows ---------------------------------------------------------------------


def test_first_update_opens_a_window_and_is_held() -> None:
    """An UPDATE with coalesce_ms > 0 is held until its window closes, then delivered."""
    q, s = OutQueue(V1(EPOCH)), sub(coalesce_ms=100)
    q.offer(s, ev(1), now=10.0)
    deadline = q.next_deadline()
    assert deadline is not None
    assert deadline == pytest.approx(10.1)
    assert [] == q.pop_ready(now=10.05)
    assert 1 == len(q)
    assert ["1"] == [c for _, _, c in summary(q.pop_ready(now=deadline))]
    assert q.next_deadline() is None


def test_window_merges_updates_of_a_row_without_pressure() -> None:
    """Inside a window, UPDATEs of one row merge into one delivery at the newest position."""
    q, s = OutQueue(V1(EPOCH)), sub(coalesce_ms=50)
    q.offer(s, ev(1, changed=("a",)), now=0.0)
    q.offer(s, ev(2, changed=("b",)), now=0.01)
    q.offer(s, ev(3, changed=("a",)), now=0.02)
    assert 1 == len(q)
    frames = parsed(q.pop_ready(now=0.05))
    assert [(f"{EPOCH}.3", ["a", "b"])] == [(f["cursor"], f["changed"]) for f in frames]
    assert 2 == q.conflated


def test_window_holds_every_event_of_the_subscription_in_order() -> None:
    """Non-UPDATEs and other rows queue behind an open window, keeping cursor order."""
    q, s = OutQueue(V1(EPOCH)), sub(coalesce_ms=50)
    q.offer(s, ev(1, pk=1), now=0.0)
    q.offer(s, ev(2, "INSERT", pk=2), now=0.0)
    q.offer(s, ev(3, pk=1), now=0.0)  # merges with 1, in 3's place: after 2
    q.offer(s, ev(4, "DELETE", pk=1), now=0.0)
    q.offer(s, ev(5, pk=1), now=0.0)  # not merged across the DELETE
    assert [] == q.pop_ready(now=0.01)
    assert ["2", "3", "4", "5"] == [c for _, _, c in summary(q.pop_ready(now=0.05))]


def test_first_non_update_is_not_held() -> None:
    """With no window open, an INSERT or DELETE of a coalescing subscription is ready at once."""
    q, s = OutQueue(V1(EPOCH)), sub(coalesce_ms=50)
    q.offer(s, ev(1, "INSERT"), now=0.0)
    q.offer(s, ev(2, "DELETE", pk=2), now=0.0)
    assert ["1", "2"] == [c for _, _, c in summary(q.pop_ready(now=0.0))]
    assert q.next_deadline() is None


def test_window_blocks_neither_other_subscriptions_nor_controls() -> None:
    """Another subscription's events and control frames pass an open window."""
    q, slow, fast = OutQueue(V1(EPOCH)), sub("slow", coalesce_ms=100), sub("fast")
    q.offer(slow, ev(1), now=0.0)
    q.offer(fast, ev(2), now=0.0)
    q.push_control(control("pong"))
    assert [("event", "fast", "2"), ("pong", "", "")] == summary(q.pop_ready(now=0.0))
    assert [("event", "slow", "1")] == summary(q.pop_ready(now=0.1))


def test_an_expired_window_closes_before_the_next_offer() -> None:
    """An offer after the deadline releases the old window and opens a fresh one."""
    q, s = OutQueue(V1(EPOCH)), sub(coalesce_ms=100)
    q.offer(s, ev(1), now=0.0)
    q.offer(s, ev(2), now=0.2)  # window 1 is over: not merged, opens window 2
    deadline = q.next_deadline()
    assert deadline is not None
    assert deadline == pytest.approx(0.3)
    assert ["1"] == [c for _, _, c in summary(q.pop_ready(now=0.2))]
    assert ["2"] == [c for _, _, c in summary(q.pop_ready(now=deadline))]
    assert 0 == q.conflated


def test_windows_close_in_deadline_order() -> None:
    """Windows due at the same pop are released earliest deadline first."""
    q, a, b = OutQueue(V1(EPOCH)), sub("a", coalesce_ms=200), sub("b", coalesce_ms=50)
    q.offer(a, ev(1), now=0.0)
    q.offer(b, ev(2), now=0.0)
    assert 0.05 == q.next_deadline()
    assert [("event", "b", "2"), ("event", "a", "1")] == summary(q.pop_ready(now=1.0))


def test_held_frames_count_toward_the_bounds() -> None:
    """Held frames fill the queue; an overflow drops them and closes the window."""
    q, s = OutQueue(V1(EPOCH), max_messages=2), sub(coalesce_ms=100)
    q.offer(s, ev(1, pk=1), now=0.0)
    q.offer(s, ev(2, pk=2), now=0.0)
    assert 2 == len(q)
    q.offer(s, ev(3, pk=3), now=0.0)
    assert q.next_deadline() is None
    assert [("reset", "s1", "3")] == summary(q.pop_ready(now=0.0))


def test_window_does_not_pull_back_a_ready_update() -> None:
    """A new window's UPDATE is not merged into an already-ready (unsent) UPDATE of the row."""
    q, s = OutQueue(V1(EPOCH)), sub(coalesce_ms=100)
    q.offer(s, ev(1), now=0.0)
    q.offer(s, ev(2), now=0.15)  # 1 became ready at 0.1 but was never popped
    assert ["1"] == [c for _, _, c in summary(q.pop_ready(now=0.15))]
    assert ["2"] == [c for _, _, c in summary(q.pop_ready(now=0.25))]


def test_pressure_merges_a_ready_update_into_a_held_one() -> None:
    """Under pressure, a ready UPDATE merges into the held newer one of the same row."""
    q, s = OutQueue(V1(EPOCH), max_messages=2), sub(coalesce_ms=100)
    q.offer(s, ev(1), now=0.0)
    q.offer(s, ev(2, pk=2), now=0.0)
    q.offer(s, ev(3), now=0.15)  # window 1 released (1, 2 ready); 3 opens window 2
    assert ["2"] == [c for _, _, c in summary(q.pop_ready(now=0.15))]
    assert ["3"] == [c for _, _, c in summary(q.pop_ready(now=0.25))]
    assert 1 == q.conflated


def test_discard_forgets_a_subscription() -> None:
    """discard removes a subscription's queued and held events and its pending reset."""
    q, a, b = OutQueue(V1(EPOCH), max_messages=2), sub("a", coalesce_ms=100), sub("b")
    q.offer(b, ev(1, "INSERT"), now=0.0)
    q.offer(b, ev(2, "INSERT", pk=2), now=0.0)
    q.offer(b, ev(3, "INSERT", pk=3), now=0.0)  # overflow: a reset for b is pending
    q.offer(a, ev(4), now=0.0)
    assert 1 == q.discard("a")
    assert 0 == q.discard("b")
    assert (0, 0, None) == (len(q), q.pending_bytes, q.next_deadline())
    assert [] == q.pop_ready(now=1.0)


# -- the invariants, on random workloads ----------------------------------------------------

_offer = st.tuples(
    st.just("offer"),
    st.sampled_from(["a", "b", "c"]),
    st.sampled_from(["INSERT", "UPDATE", "UPDATE", "UPDATE", "UPDATE", "DELETE", "MOVE"]),
    st.integers(1, 2),
)
# Offers outnumber pops so that the bounds, conflation and resets are reached often.
_steps = st.lists(
    st.one_of(
        _offer,
        _offer,
        _offer,
        _offer,
        st.tuples(st.just("pop"), st.integers(0, 3)),
        st.tuples(st.just("pop"), st.integers(0, 3)),
        st.tuples(st.just("tick"), st.floats(0.0, 0.08)),
        st.tuples(st.just("control")),
    ),
    min_size=10,
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(
    steps=_steps,
    max_messages=st.integers(3, 10),
    max_bytes=st.integers(500, 3000),
)
def test_random_workloads_lose_nothing_and_keep_order(
    steps: list[tuple[Any, ...]], max_messages: int, max_bytes: int
) -> None:
    """Per sub, positions only rise, and every offered event is delivered, merged or reset."""
    subs = {"a": sub("a"), "b": sub("b", coalesce_ms=30), "c": sub("c", coalesce_ms=70)}
    q = OutQueue(V1(EPOCH), max_messages=max_messages, max_bytes=max_bytes)
    now, pos = 0.0, 0
    offered: list[tuple[str, Event]] = []
    delivered: list[dict[str, Any]] = []
    for step in steps:
        if step[0] == "offer":
            _, sub_id, op, pk = step
            pos += 1
            if op == "MOVE":  # a key change: pk -> pk + 3
                event = ev(pos, pk=pk + 3, old_pk=pk)
            else:
                event = ev(pos, op, pk=pk, changed=(f"c{pos % 3}",))
            offered.append((sub_id, event))
            q.offer(subs[sub_id], event, now)
        elif step[0] == "pop":
            delivered += parsed(q.pop_ready(now, max_frames=step[1]))
        elif step[0] == "tick":
            now += step[1]
        else:
            q.push_control(control("pong"))
        if not q.overflowed:
            assert len(q) <= max_messages
            assert q.pending_bytes <= max_bytes
    delivered += parsed(q.pop_ready(now + 1.0))
    assert (0, 0) == (len(q), q.pending_bytes)
    if q.overflowed:
        return

    events = [f for f in delivered if f["type"] == "event"]
    assert len(offered) == len(events) + q.conflated + q.dropped
    for sub_id in subs:
        last = 0
        for f in delivered:
            if f["type"] in ("event", "reset") and f["sub"] == sub_id:
                at = int(f["cursor"].split(".")[1])
                assert at > last if f["type"] == "event" else at >= last
                last = at
    sent = {(f["sub"], int(f["cursor"].split(".")[1])): f for f in events}
    for sub_id, e in offered:
        if (sub_id, e.pos) in sent:
            continue
        covered_by_reset = any(
            f["type"] == "reset" and f["sub"] == sub_id and int(f["cursor"].split(".")[1]) >= e.pos
            for f in delivered
        )
        merged_later = e.op == "UPDATE" and any(
            s == sub_id
            and p > e.pos
            and f["pk"] == e.pk
            and f["op"] == "UPDATE"
            and set(e.changed) <= set(f["changed"])
            for (s, p), f in sent.items()
        )
        assert covered_by_reset or merged_later, (sub_id, e.pos)
