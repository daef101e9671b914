"""Events' wire forms: encoded once, framed exactly as websockets frames them."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime

import pytest
from websockets.frames import Frame, Opcode

from relay.core.events import Event

EPOCH = "e" * 32


def event(title: str, pos: int = 7) -> Event:
    return Event(pos=pos, schema="public", table="t", op="UPDATE", pk={"id": 1},
                 row={"id": 1, "title": title}, old_key={"id": 1}, changed=("title",),
                 audience=frozenset({"u"}), committed_at=datetime(2026, 1, 1, tzinfo=UTC))  # fmt: skip


@pytest.mark.parametrize("size", [0, 50, 125, 126, 65_535, 65_536, 200_000])
def test_wire_frame_is_what_websockets_would_send(size: int) -> None:
    """The cached frame is byte-for-byte websockets' own unmasked text frame, at every length class."""
    item = event("é" * (size // 2))
    payload = item.frame("sub-1", EPOCH).encode()
    assert Frame(Opcode.TEXT, payload).serialize(mask=False, extensions=[]) == item.wire_frame(
        "sub-1", EPOCH
    )


def test_frame_is_the_documented_json() -> None:
    """An event frame is one JSON object with the subscription id and the event's fields."""
    assert {
        "type": "event", "sub": "s", "cursor": f"{EPOCH}.7", "schema": "public", "table": "t",
        "op": "UPDATE", "pk": {"id": 1}, "old": {"id": 1}, "row": {"id": 1, "title": "x"},
        "changed": ["title"], "ts": "2026-01-01T00:00:00+00:00",
    } == json.loads(event("x").frame("s", EPOCH))  # fmt: skip


def test_replace_does_not_carry_the_cached_encoding() -> None:
    """dataclasses.replace() makes an event that encodes its own position, not the original's."""
    original = event("x", pos=1)
    original.wire_frame("s", EPOCH)
    moved = dataclasses.replace(original, pos=2)
    assert f"{EPOCH}.2" == json.loads(moved.frame("s", EPOCH))["cursor"]
