"""Decoding the log's JSON: no value a writer can store stops the stream (pure, no database)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from relay.core.events import (
    MAX_DEPTH,
    MAX_INT_DIGITS,
    BigNumber,
    Event,
    RawJSON,
    Uncarriable,
    decode_json,
    decode_key,
    dumps,
    nesting_depth,
)
from relay.core.filters import RowFilter
from relay.core.log import LogState
from relay.core.wire import V1
from relay.net.hub import Hub
from relay.ops.config import Settings
from relay.ops.metrics import Metrics
from relay.pg.rows import decode_event
from tests.support.factories import RecordingTarget, make_event, make_sub

EPOCH = "e" * 32
TS = datetime(2026, 1, 1, tzinfo=UTC)


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def row(pos: int, pk: str, data: str | None, old: str | None = None) -> tuple[Any, ...]:
    """A relay.log row in LOG_COLUMNS order, its JSON columns as text."""
    return (
        pos,
        "public",
        "docs",
        "UPDATE",
        pk,
        data,
        old,
        ["doc"],
        ["alice"],
        TS,
        False,
        None,
        None,
    )


def frame(event: Event) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(V1(EPOCH).event("s", event))
    return decoded


# -- numbers -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "1" + "0" * 5000,  # numeric 1e5000 as to_jsonb renders it
        "-" + "9" * (MAX_INT_DIGITS + 1),
        "1" + "0" * 400 + ".5",  # a fraction past the float range
        "1e400",
        "-2.5E+309",
        "1e-400",  # non-zero, but a double rounds it to zero
        "0." + "0" * 399 + "1",
    ],
)
def test_numbers_a_double_cannot_hold_arrive_as_their_exact_text(text: str) -> None:
    """Past the int limit, overflowing or underflowing a double: a BigNumber of the exact text."""
    value = decode_json('{"n": ' + text + "}")["n"]
    assert (BigNumber, text) == (type(value), str(value))
    assert '{"n":"' + text + '"}' == dumps({"n": value})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1" + "0" * 308, 10**308),  # past 2^1024 stays an exact integer while Python can
        ("9" * MAX_INT_DIGITS, int("9" * MAX_INT_DIGITS)),
        ("-" + "9" * MAX_INT_DIGITS, -int("9" * MAX_INT_DIGITS)),
        ("1e308", 1e308),
        ("1.5", 1.5),
        ("0.000", 0.0),
        ("-0.0e5", -0.0),
        ("5e-324", 5e-324),
    ],
)
def test_numbers_within_reach_decode_as_before(text: str, expected: object) -> None:
    """Integers up to MAX_INT_DIGITS stay exact ints; in-range fractions stay floats."""
    value = decode_json(text)
    assert (type(expected), expected) == (type(value), value)


def test_an_ordinary_row_decodes_as_json_loads_does() -> None:
    """Strings, unicode, nulls, booleans, arrays and objects come through unchanged."""
    text = '{"a": "é\\u2028\\"x", "b": null, "c": [true, false, 1, 2.5], "d": {"e": []}}'
    assert json.loads(text) == decode_json(text)


# -- nesting -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "depth"),
    [
        ("1", 0),
        ("{}", 1),
        ('{"a": [1, {"b": []}]}', 4),
        ('["[[[[", "]]]]", "\\"[{"]', 1),  # brackets and escaped quotes inside strings
        (nested(2000), 2000),
    ],
)
def test_nesting_depth_counts_arrays_and_objects_outside_strings(text: str, depth: int) -> None:
    """The depth is the deepest bracket nesting, strings excluded."""
    assert depth == nesting_depth(text)


def test_nesting_up_to_the_limit_decodes_and_past_it_is_refused() -> None:
    """MAX_DEPTH levels decode; one more, or 2000, raise Uncarriable('too_deep')."""
    assert json.loads(nested(MAX_DEPTH)) == decode_json(nested(MAX_DEPTH))
    for depth in (MAX_DEPTH + 1, 2000, 100_000):
        with pytest.raises(Uncarriable) as raised:
            decode_json(nested(depth))
        assert "too_deep" == raised.value.reason


def test_many_brackets_inside_strings_are_not_nesting() -> None:
    """A string of 5000 opening brackets is a shallow value."""
    assert ["[" * 5000] == decode_json('["' + "[" * 5000 + '"]')


def test_text_that_is_not_json_is_invalid() -> None:
    """Anything that is not JSON raises Uncarriable('invalid'), never another exception."""
    with pytest.raises(Uncarriable) as raised:
        decode_json('{"a": ')
    assert "invalid" == raised.value.reason


# -- keys ----------------------------------------------------------------------------------------


def test_a_key_member_too_deep_to_carry_travels_as_its_text() -> None:
    """Each key member that cannot be carried is a RawJSON of its exact text; others decode."""
    deep = nested(500)
    text = '{"a": "x, \\"y\\": [", "b": ' + deep + ', "c": {"d": [1, 2]}, "e": 1e400}'
    key = decode_key(text)
    assert {"a": 'x, "y": [', "b": deep, "c": {"d": [1, 2]}, "e": "1e400"} == key
    assert key is not None
    assert (str, RawJSON, dict, BigNumber) == tuple(type(key[name]) for name in "abce")


def test_a_carriable_key_decodes_whole() -> None:
    """An ordinary key is decoded as is; None stays None (an INSERT has no old key)."""
    assert ({"id": 7, "k": "x"}, None) == (decode_key('{"id": 7, "k": "x"}'), decode_key(None))


# -- events --------------------------------------------------------------------------------------


def test_an_event_with_big_numbers_carries_them_exactly() -> None:
    """numeric 1e5000 and a fractional overflow arrive as strings of their digits, not truncated."""
    big, frac = "1" + "0" * 5000, "1" + "0" * 400 + ".5"
    event, problem = decode_event(
        row(9, '{"id": 1}', '{"id": 1, "budget": ' + big + ', "doc": {"n": ' + frac + "}}")
    )
    assert None is problem
    assert {
        "type": "event", "sub": "s", "cursor": f"{EPOCH}.9", "schema": "public", "table": "docs",
        "op": "UPDATE", "pk": {"id": 1}, "row": {"id": 1, "budget": big, "doc": {"n": frac}},
        "changed": ["doc"], "ts": "2026-01-01T00:00:00+00:00",
    } == frame(event)  # fmt: skip


def test_a_row_too_deep_becomes_the_documented_truncated_event() -> None:
    """Key kept, row null, truncated true, the reason reported; the frame encodes."""
    event, problem = decode_event(
        row(9, '{"id": 1}', '{"id": 1, "doc": ' + nested(2000) + "}", '{"id": 1}')
    )
    assert "too_deep" == problem
    assert {
        "type": "event", "sub": "s", "cursor": f"{EPOCH}.9", "schema": "public", "table": "docs",
        "op": "UPDATE", "pk": {"id": 1}, "row": None, "changed": ["doc"],
        "ts": "2026-01-01T00:00:00+00:00", "old": {"id": 1}, "truncated": True,
    } == frame(event)  # fmt: skip


def test_a_key_too_deep_travels_as_text_in_the_truncated_event() -> None:
    """A jsonb primary key nested 500 deep (Postgres accepts it) arrives as its JSON text."""
    deep = nested(500)
    event, problem = decode_event(row(9, '{"id": ' + deep + "}", '{"id": ' + deep + "}", None))
    assert ("too_deep", {"id": deep}, None, True) == (
        problem,
        frame(event)["pk"],
        frame(event)["row"],
        frame(event)["truncated"],
    )


def test_undecodable_text_becomes_a_truncated_event_too() -> None:
    """A row that is not JSON at all (cannot happen from jsonb) is still an event: truncated."""
    event, problem = decode_event(row(9, '{"id": 1}', "{nope"))
    assert ("invalid", None, True) == (problem, event.row, event.truncated)


def test_old_values_and_audience_are_read_and_a_bad_old_value_never_matches() -> None:
    """An UPDATE's old values and old audience come with the event; an old value too deep to
    decode is kept as its text (which no filter value equals) and the event stays whole."""
    deep = nested(2000)
    base = row(9, '{"id": 1}', '{"id": 1, "v": "b", "doc": 1}', '{"id": 1}')[:-2]
    event, problem = decode_event((*base, '{"v": "a", "doc": ' + deep + "}", ["bob"]))
    assert (None, False, frozenset({"bob"})) == (problem, event.truncated, event.old_audience)
    assert event.old_values is not None
    assert ("a", RawJSON) == (event.old_values["v"], type(event.old_values["doc"]))
    assert RowFilter.parse({"v": "a"}).matched_before(event)
    assert not RowFilter.parse({"doc": 1}).matched_before(event)
    truncated, problem = decode_event((*base[:5], '{"id": 1, "d": ' + deep + "}", *base[6:],
                                       '{"v": "a"}', ["bob"]))  # fmt: skip
    assert ("too_deep", None, frozenset({"bob"})) == (
        problem,
        truncated.old_values,
        truncated.old_audience,
    )


# -- filters -------------------------------------------------------------------------------------


def test_filters_compare_big_numbers_by_value_as_jsonb_does() -> None:
    """1e400 equals the 401-digit integer and not the string "1e400"; RawJSON matches nothing."""
    value = decode_json("1e400")
    assert RowFilter.parse({"n": 10**400}).matches(make_event(1, row={"n": value}))
    assert not RowFilter.parse({"n": "1e400"}).matches(make_event(1, row={"n": value}))
    assert not RowFilter.parse({"n": 0}).matches(make_event(1, row={"n": decode_json("1e-400")}))
    raw = RawJSON(nested(200))
    assert not RowFilter.parse({"n": nested(200)}).matches(make_event(1, row={"n": raw}))


# -- the hub -------------------------------------------------------------------------------------


class FailingTarget(RecordingTarget):
    """A connection whose queue fails on one position (a bug, say): the rest must still flow."""

    def offer(self, sub: Any, event: Event, now: float) -> bool:
        if event.pos == 101:
            raise RuntimeError("boom")
        return super().offer(sub, event, now)


def test_one_failing_event_does_not_stop_the_batch() -> None:
    """An exception routing one event is contained and counted; later events are delivered."""
    hub = Hub(Settings(dsn="postgresql:///x", jwt_secret="s" * 32), Metrics())
    hub.on_log_state(LogState(epoch=EPOCH, head=100, pruned_through=10, notify=True))
    target = FailingTarget("alice", "c1")
    hub.router.add(target)
    hub.router.subscribe(target, make_sub("s", after=100))
    hub.deliver([make_event(101), make_event(102), make_event(103)])
    assert ([("s", 102), ("s", 103)], 103) == (target.received, hub.router.head)
    assert b'relay_drops_total{reason="error"} 1.0' in hub.metrics.render()


def test_an_uncarriable_event_is_counted_by_reason() -> None:
    """The reader's report of a truncated event lands in relay_events_unencodable_total."""
    hub = Hub(Settings(dsn="postgresql:///x", jwt_secret="s" * 32), Metrics())
    event, problem = decode_event(row(9, '{"id": 1}', nested(MAX_DEPTH + 1)))
    assert problem is not None
    hub.on_uncarriable(event, problem)
    assert b'relay_events_unencodable_total{reason="too_deep"} 1.0' in hub.metrics.render()
