"""The Supabase dialect's wire: Phoenix frames in both serializers and the change push."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from relay.core.phoenix import VSN_1, VSN_2, FrameError, PhoenixWire, change_data, decode
from tests.support.factories import make_event

TYPES = {("public", "items"): (("id", "int8"), ("title", "text"))}


def test_decode_both_serializers() -> None:
    """2.0.0 frames are five-member arrays, 1.0.0 frames objects; a numeric ref reads as digits."""
    assert decode('["1","2","realtime:a","phx_join",{"x":1}]', VSN_2) == decode(
        '{"join_ref":"1","ref":2,"topic":"realtime:a","event":"phx_join","payload":{"x":1}}', VSN_1
    )


@pytest.mark.parametrize(
    ("text", "reason", "ref", "topic"),
    [
        ("[", "not valid JSON", None, None),
        ('{"a":1}', "a frame is an array [join_ref, ref, topic, event, payload]", None, None),
        (
            '[null,"1","t","e"]',
            "a frame is an array [join_ref, ref, topic, event, payload]",
            None,
            None,
        ),
        ('[null,true,"t","e",{}]', "ref must be a string of 1 to 64 bytes or null", None, None),
        (
            f'[null,"{"r" * 65}","t","e",{{}}]',
            "ref must be a string of 1 to 64 bytes or null",
            None,
            None,
        ),
        ('[null,"1","","e",{}]', "topic must be a string of 1 to 255 bytes", "1", None),
        ('[null,"1","t",5,{}]', "event must be a string of 1 to 64 characters", "1", "t"),
        ('["9","1","t","e",[]]', "payload must be an object", "1", "t"),
    ],
)
def test_decode_errors_say_what_can_be_answered(
    text: str, reason: str, ref: str | None, topic: str | None
) -> None:
    """A FrameError names the problem and carries the ref and topic only when they were valid."""
    with pytest.raises(FrameError) as caught:
        decode(text, VSN_2)
    assert (reason, ref, topic) == (caught.value.reason, caught.value.ref, caught.value.topic)


def test_change_data_in_supabase_shape() -> None:
    """INSERT has record, UPDATE record and old_record (the old key), DELETE old_record only;
    commit_timestamp is UTC with milliseconds; columns carry the catalog's type names."""
    at = datetime(2024, 1, 1, 0, 0, 1, 234567, tzinfo=UTC)
    insert = make_event(1, op="INSERT", row={"id": 1, "title": "a"})
    object.__setattr__(insert, "committed_at", at)
    assert {
        "schema": "public", "table": "items", "commit_timestamp": "2024-01-01T00:00:01.234Z",
        "type": "INSERT", "columns": [{"name": "id", "type": "int8"}, {"name": "title", "type": "text"}],
        "record": {"id": 1, "title": "a"}, "errors": None,
    } == json.loads(change_data(insert, TYPES))  # fmt: skip
    update = json.loads(change_data(make_event(2, op="UPDATE", row={"title": "b"}), TYPES))
    assert ({"id": 2, "title": "b"}, {"id": 2}) == (update["record"], update["old_record"])
    delete = json.loads(change_data(make_event(3, op="DELETE", row={"id": 3, "title": "c"}), {}))
    assert "record" not in delete and {"id": 3} == delete["old_record"]
    assert [{"name": "id", "type": "unknown"}, {"name": "title", "type": "unknown"}] == (
        delete["columns"])  # fmt: skip
    truncated = json.loads(change_data(make_event(4, truncated=True), TYPES))
    assert ({"id": 4}, ["Error 413: Payload Too Large"]) == (
        truncated["record"],
        truncated["errors"],
    )


@pytest.mark.parametrize("vsn", [VSN_1, VSN_2])
def test_push_frames_and_cursors(vsn: str) -> None:
    """A push names the binding's id; a resumable binding's push carries the cursor; event_size
    bounds the frame's length."""
    wire = PhoenixWire(vsn, "e" * 32, lambda: TYPES)
    wire.bind("a", "realtime:room", 7, resume=False)
    wire.bind("b", "realtime:room", 8, resume=True)
    event = make_event(5, row={"id": 5, "title": "x"})
    plain, resumed = json.loads(wire.event("a", event)), json.loads(wire.event("b", event))
    if vsn == VSN_2:
        assert [None, None, "realtime:room", "postgres_changes"] == plain[:4]
        plain, resumed = plain[4], resumed[4]
    else:
        assert ("realtime:room", "postgres_changes", None) == (
            plain["topic"], plain["event"], plain["ref"])  # fmt: skip
        plain, resumed = plain["payload"], resumed["payload"]
    assert ([7], [8]) == (plain["ids"], resumed["ids"])
    assert ("cursor" not in plain, "e" * 32 + ".5") == (True, resumed["cursor"])
    assert plain["data"] == resumed["data"] == json.loads(change_data(event, TYPES))
    assert len(wire.event("b", event)) <= wire.event_size("b", event)


def test_a_framed_push_is_shared_by_sockets_of_the_same_binding() -> None:
    """Two sockets whose bindings have the same id get the same framed bytes, built once; a
    resumable binding's frame (with its cursor) is another."""
    one, two = (PhoenixWire(VSN_2, "e" * 32, lambda: TYPES) for _ in range(2))
    one.bind("room\x007", "realtime:room", 7, resume=False)
    two.bind("room\x007", "realtime:room", 7, resume=False)
    event = make_event(5, row={"id": 5, "title": "x"})
    assert one.event_frame("room\x007", event) is two.event_frame("room\x007", event)
    two.bind("room\x007", "realtime:room", 7, resume=True)
    assert b'"cursor"' in two.event_frame("room\x007", event)
    assert b'"cursor"' not in one.event_frame("room\x007", event)


def test_an_overflow_of_an_unbound_id_errors_the_whole_topic_even_one_holding_a_nul() -> None:
    """overflow_reset reads the topic of a binding already gone with topic_of, as every other
    reader of a router id does: a topic holding the separator stays whole."""
    stopped: list[str] = []
    wire = PhoenixWire(VSN_2, "e" * 32, lambda: TYPES, on_overflow=stopped.append)
    frame = wire.overflow_reset("realtime:a\x00b\x007", 9)
    assert (["realtime:a\x00b"], [None, None, "realtime:a\x00b", "phx_error", {}]) == (
        stopped,
        json.loads(frame),
    )
