"""Protocol v1 as Server-Sent Events: each frame the websocket's JSON as one data line, events
with their cursor as id, control frames named, heartbeats as comments."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from relay.core.events import Event
from relay.core.sse import SSE
from relay.core.wire import V1

EPOCH = "e" * 32
WIRE, STREAM = V1(EPOCH), SSE(EPOCH)


def event(title: str, pos: int = 7) -> Event:
    return Event(pos=pos, schema="public", table="t", op="UPDATE", pk={"id": 1},
                 row={"id": 1, "title": title}, old_key={"id": 1}, changed=("title",),
                 audience=frozenset({"u"}), committed_at=datetime(2026, 1, 1, tzinfo=UTC))  # fmt: skip


def test_an_event_is_its_websocket_frame_with_its_cursor_as_id() -> None:
    """``id: cursor``, then the websocket frame as the one data line; unnamed (``message``)."""
    item = event("x")
    assert f"id: {EPOCH}.7\ndata: {WIRE.event('s', item)}\n\n" == STREAM.event("s", item)


def test_values_with_line_breaks_stay_on_one_data_line() -> None:
    """Newlines, carriage returns and other separators in values are escaped JSON: one line."""
    item = event("a\nb\rc\r\nd\u2028e\u0085f")
    block = STREAM.event("s", item)
    lines = block.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    assert [f"id: {EPOCH}.7", "data: " + WIRE.event("s", item), "", ""] == lines
    assert "a\nb\rc\r\nd\u2028e\u0085f" == json.loads(lines[1][6:])["row"]["title"]


def test_the_cached_block_is_the_event_block_and_apart_from_the_websocket_frame() -> None:
    """event_frame is the block's bytes, cached beside (never instead of) the websocket frame."""
    item = event("é")
    websocket_frame = WIRE.event_frame("s", item)
    assert STREAM.event("s", item).encode() == STREAM.event_frame("s", item)
    assert websocket_frame == WIRE.event_frame("s", item)
    assert STREAM.event_frame("s", item) is STREAM.event_frame("s", item)


def test_event_size_is_the_block_length_for_plain_ids() -> None:
    """The queue's byte bound sees the block's length."""
    item = event("x", pos=123456)
    assert len(STREAM.event("sub-1", item)) == STREAM.event_size("sub-1", item)


def test_control_frames_are_named_events_without_id() -> None:
    """ready, subscribed, reset and error: named after their type, never moving the stream's id."""
    assert f"event: ready\ndata: {WIRE.ready('alice', 4)}\n\n" == STREAM.ready("alice", 4)
    assert f"event: subscribed\ndata: {WIRE.subscribed('s', 9)}\n\n" == STREAM.subscribed("s", 9)
    assert f"event: reset\ndata: {WIRE.reset('s', 'overflow', 9)}\n\n" == STREAM.overflow_reset(
        "s", 9
    )
    assert f"event: error\ndata: {WIRE.error('token_expired', 'm')}\n\n" == STREAM.error(
        "token_expired", "m"
    )


def test_the_position_and_heartbeats_set_the_id_without_data() -> None:
    """The position is a block with only an id; a heartbeat a comment, with the position or not."""
    assert f"id: {EPOCH}.42\n\n" == STREAM.position(42)
    assert ":\n\n" == STREAM.heartbeat(None)
    assert f":\nid: {EPOCH}.42\n\n" == STREAM.heartbeat(42)
    assert "retry: 2500\n\n" == STREAM.retry(2500)
