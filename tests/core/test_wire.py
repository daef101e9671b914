"""Protocol v1's frames: events encoded once and framed exactly as websockets frames them; control
frames and cursors as docs/protocol.md writes them."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime

import pytest
from websockets.frames import Frame, Opcode

from relay.core.cursor import Cursor
from relay.core.events import Event
from relay.core.wire import V1, cursor_text

EPOCH = "e" * 32
WIRE = V1(EPOCH)


def event(title: str, pos: int = 7) -> Event:
    return Event(pos=pos, schema="public", table="t", op="UPDATE", pk={"id": 1},
                 row={"id": 1, "title": title}, old_key={"id": 1}, changed=("title",),
                 audience=frozenset({"u"}), committed_at=datetime(2026, 1, 1, tzinfo=UTC))  # fmt: skip


@pytest.mark.parametrize("size", [0, 50, 125, 126, 65_535, 65_536, 200_000])
def test_wire_frame_is_what_websockets_would_send(size: int) -> None:
    """The cached frame is byte-for-byte websockets' own unmasked text frame, at every length class."""
    item = event("é" * (size // 2))
    payload = WIRE.event("sub-1", item).encode()
    assert Frame(Opcode.TEXT, payload).serialize(mask=False, extensions=[]) == WIRE.event_frame(
        "sub-1", item
    )


def test_frame_is_the_documented_json() -> None:
    """An event frame is one JSON object with the subscription id and the event's fields."""
    assert {
        "type": "event", "sub": "s", "cursor": f"{EPOCH}.7", "schema": "public", "table": "t",
        "op": "UPDATE", "pk": {"id": 1}, "old": {"id": 1}, "row": {"id": 1, "title": "x"},
        "changed": ["title"], "ts": "2026-01-01T00:00:00+00:00",
    } == json.loads(WIRE.event("s", event("x")))  # fmt: skip


def test_replace_does_not_carry_the_cached_encoding() -> None:
    """dataclasses.replace() makes an event that encodes its own position, not the original's."""
    original = event("x", pos=1)
    WIRE.event_frame("s", original)
    moved = dataclasses.replace(original, pos=2)
    assert f"{EPOCH}.2" == json.loads(WIRE.event("s", moved))["cursor"]


def test_event_size_is_the_frame_length_for_plain_ids() -> None:
    """The queue's size estimate is the exact frame length for an id that needs no escaping."""
    item = event("x")
    assert len(WIRE.event("sub-1", item)) == WIRE.event_size("sub-1", item)


def test_cursor_text_round_trips() -> None:
    """A cursor's text decodes back to its epoch and position."""
    assert Cursor(EPOCH, 42) == Cursor.decode(cursor_text(EPOCH, 42))
    assert cursor_text(EPOCH, 42) == Cursor(EPOCH, 42).encode()


def test_control_frames_are_compact_json_in_documented_order() -> None:
    """Each control frame is compact JSON with its members in the documented order."""
    assert [
        f'{{"type":"ready","user":"ü","cursor":"{EPOCH}.1"}}',
        f'{{"type":"subscribed","id":"s","cursor":"{EPOCH}.2"}}',
        f'{{"type":"reset","sub":"s","reason":"cursor_expired","cursor":"{EPOCH}.3"}}',
        f'{{"type":"reset","sub":"s","reason":"overflow","cursor":"{EPOCH}.4"}}',
        '{"type":"unsubscribed","id":"s"}',
        '{"type":"pong"}',
        '{"type":"error","code":"bad_message","message":"m","id":"s"}',
        '{"type":"error","code":"bad_message","message":"m"}',
    ] == [
        WIRE.ready("ü", 1),
        WIRE.subscribed("s", 2),
        WIRE.reset("s", "cursor_expired", 3),
        WIRE.overflow_reset("s", 4),
        WIRE.unsubscribed("s"),
        WIRE.pong(),
        WIRE.error("bad_message", "m", "s"),
        WIRE.error("bad_message", "m"),
    ]


def test_long_poll_bodies() -> None:
    """A long-poll answer holds sub-less event frames and the next cursor; a reset its reason."""
    body = json.loads(WIRE.poll([event("x", pos=7)], 9))
    assert (["event"], [f"{EPOCH}.7"], f"{EPOCH}.9") == (
        [e["type"] for e in body["events"]],
        [e["cursor"] for e in body["events"]],
        body["cursor"],
    )
    assert "sub" not in body["events"][0]
    assert {"reset": {"reason": "epoch_changed"}, "cursor": f"{EPOCH}.5"} == json.loads(
        WIRE.poll_reset("epoch_changed", 5)
    )
    assert '{"error":"bad","code":"bad_message"}' == V1.poll_error("bad", code="bad_message")
