"""The Supabase Realtime dialect on the wire: Phoenix frames and ``postgres_changes`` pushes.

Frames are Phoenix channel messages, ``[join_ref, ref, topic, event, payload]`` as a JSON array
for serializer version 2.0.0 (realtime-js's default) or a JSON object of the same five members
for 1.0.0 (``decode``, ``encode``). ``PhoenixWire`` is the dialect's encoder, a sibling of
relay/core/wire.py's ``V1`` with the same ``Encoder`` methods, so the router, the outbound queue
and the catch-up serve this dialect unchanged: an event reaches a binding as
``[null,null,topic,"postgres_changes",{"ids":[id],"data":{...}}]``, ``data`` in Supabase's shape
(schema, table, commit_timestamp, type, columns, record, old_record, errors) and encoded once per
event however many sockets receive it (``change_data``); a binding that opted in to resume also
gets the event's ``cursor``. docs/supabase.md is the public description.

Each binding of a channel is one ``Subscription`` of the connection, its id ``sub_id(topic, id)``;
the wire maps it to its topic and Supabase id (``bind``). An overflow of the outbound queue
(relay/core/outqueue.py) sends the channel ``phx_error`` (the client rejoins, resuming where it
stood when it opted in) and tells the session (``on_overflow``), which stops the channel.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC
from typing import Any, Final

from relay.core.events import Event, dumps
from relay.core.wire import FRAME_CACHE_SIZE, cursor_text, text_frame

__all__ = [
    "MAX_REF_BYTES",
    "MAX_TOPIC_BYTES",
    "VSNS",
    "VSN_1",
    "VSN_2",
    "Binding",
    "ColumnTypes",
    "FrameError",
    "Message",
    "PhoenixWire",
    "binding_of",
    "change_data",
    "decode",
    "encode",
    "sub_id",
    "topic_of",
]

VSN_1: Final = "1.0.0"
VSN_2: Final = "2.0.0"
VSNS: Final = (VSN_1, VSN_2)
MAX_REF_BYTES: Final = 64
MAX_TOPIC_BYTES: Final = 255
MAX_EVENT_BYTES: Final = 64
TOO_LARGE: Final = "Error 413: Payload Too Large"
# (schema, table) -> its carried columns and their PostgreSQL type names (pg_type.typname), in
# the table's column order: the ``columns`` of a change, which realtime-js converts values by.
ColumnTypes = Mapping[tuple[str, str], tuple[tuple[str, str], ...]]


class FrameError(ValueError):
    """A frame this dialect cannot act on. ``ref``/``topic``/``join_ref`` are set when the
    frame had them, so the error can be answered; otherwise it can only be counted."""

    def __init__(
        self,
        reason: str,
        ref: str | None = None,
        topic: str | None = None,
        join_ref: str | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.ref = ref
        self.topic = topic
        self.join_ref = join_ref


@dataclass(frozen=True, slots=True)
class Message:
    """One client frame: ``payload`` is always a JSON object."""

    join_ref: str | None
    ref: str | None
    topic: str
    event: str
    payload: dict[str, Any]


def _ref(value: object, what: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # Phoenix clients send strings; a number is read as its digits
    if not isinstance(value, str) or not 0 < len(value.encode("utf-8", "surrogatepass")) <= (
        MAX_REF_BYTES
    ):
        raise FrameError(f"{what} must be a string of 1 to {MAX_REF_BYTES} bytes or null")
    return value


def decode(text: str, vsn: str) -> Message:
    """A client text frame of serializer ``vsn``; raises FrameError naming what is wrong."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        raise FrameError("not valid JSON") from None
    if vsn == VSN_2:
        if not isinstance(value, list) or len(value) != 5:
            raise FrameError("a frame is an array [join_ref, ref, topic, event, payload]")
        raw_join_ref, raw_ref, topic, event, payload = value
    else:
        if not isinstance(value, dict):
            raise FrameError("a frame is an object {topic, event, payload, ref, join_ref}")
        raw_join_ref, raw_ref = value.get("join_ref"), value.get("ref")
        topic, event, payload = value.get("topic"), value.get("event"), value.get("payload")
    join_ref, ref = _ref(raw_join_ref, "join_ref"), _ref(raw_ref, "ref")
    if not isinstance(topic, str) or not 0 < len(topic.encode("utf-8", "surrogatepass")) <= (
        MAX_TOPIC_BYTES
    ):
        raise FrameError(f"topic must be a string of 1 to {MAX_TOPIC_BYTES} bytes", ref)
    try:
        topic.encode("utf-8")
    except UnicodeEncodeError:
        raise FrameError("topic must be valid UTF-8", ref) from None
    if not isinstance(event, str) or not 0 < len(event) <= MAX_EVENT_BYTES:
        raise FrameError(f"event must be a string of 1 to {MAX_EVENT_BYTES} characters", ref, topic)
    if not isinstance(payload, dict):
        raise FrameError("payload must be an object", ref, topic, join_ref)
    return Message(join_ref, ref, topic, event, payload)


def encode(
    vsn: str, join_ref: str | None, ref: str | None, topic: str, event: str, payload: object
) -> str:
    """A server frame of serializer ``vsn``."""
    if vsn == VSN_2:
        return dumps([join_ref, ref, topic, event, payload])
    return dumps({"join_ref": join_ref, "ref": ref, "topic": topic, "event": event,
                  "payload": payload})  # fmt: skip


def sub_id(topic: str, binding_id: int) -> str:
    """The router's id of a channel's binding: unique per connection (one channel per topic)."""
    return f"{topic}\x00{binding_id}"


def binding_of(sid: str) -> int:
    """The binding id in a ``sub_id``."""
    return int(sid.rsplit("\x00", 1)[1])


def topic_of(sid: str) -> str:
    """The topic in a ``sub_id``."""
    return sid.rsplit("\x00", 1)[0]


def _timestamp(event: Event) -> str:
    """Supabase's commit_timestamp: UTC, milliseconds, ``YYYY-MM-DDTHH:MM:SS.mmmZ``."""
    at = event.committed_at.astimezone(UTC)
    return (
        f"{at.year:04d}-{at.month:02d}-{at.day:02d}T{at.hour:02d}:{at.minute:02d}:"
        f"{at.second:02d}.{at.microsecond // 1000:03d}Z"
    )


def _columns(event: Event, types: ColumnTypes) -> list[dict[str, str]]:
    known = types.get((event.schema, event.table))
    if known:
        return [{"name": name, "type": type_name} for name, type_name in known]
    names = dict.fromkeys([*event.pk, *(event.row or ())])  # until the catalog names types
    return [{"name": name, "type": "unknown"} for name in names]


def change_data(event: Event, types: ColumnTypes) -> str:
    """The ``data`` of a change push as Supabase builds it, encoded once per event (cached on
    it). ``record`` holds the new values (the carried columns and the key); ``old_record`` the
    key before the change (UPDATE) or of the deleted row (DELETE), as Supabase sends for tables
    with row-level security; a truncated event has the 413 error and only its key."""
    data = event.tails.get("phoenix")
    if data is not None:
        return data
    row = event.row
    if row is None:
        record: Mapping[str, object] = event.pk
    elif all(column in row for column in event.pk):
        record = row
    else:
        record = {**event.pk, **row}
    members: dict[str, object] = {
        "schema": event.schema,
        "table": event.table,
        "commit_timestamp": _timestamp(event),
        "type": event.op,
        "columns": _columns(event, types),
    }
    if event.op != "DELETE":
        members["record"] = record
    if event.op != "INSERT":
        members["old_record"] = event.old_key if event.old_key is not None else event.pk
    members["errors"] = [TOO_LARGE] if event.truncated else None
    data = dumps(members)
    event.tails["phoenix"] = data
    return data


@dataclass(frozen=True, slots=True)
class Binding:
    """A channel binding as the wire frames it: its topic, its Supabase id, whether its pushes
    carry cursors (resume opted in), and the frame's head up to ``"ids"``, encoded once."""

    topic: str
    id: int
    resume: bool
    head: str
    frame_key: tuple[str, str]  # the key of its framed push in an event's frame cache


class PhoenixWire:
    """The dialect's frames for one connection: serializer ``vsn``, log ``epoch``."""

    __slots__ = ("bindings", "epoch", "on_overflow", "types", "vsn")

    def __init__(
        self,
        vsn: str,
        epoch: str,
        types: Callable[[], ColumnTypes],
        on_overflow: Callable[[str], None] = lambda topic: None,
    ) -> None:
        self.vsn = vsn
        self.epoch = epoch
        self.types = types  # the hub's current catalog
        self.on_overflow = on_overflow
        self.bindings: dict[str, Binding] = {}

    def bind(self, sub: str, topic: str, binding_id: int, *, resume: bool) -> None:
        head = (
            f'[null,null,{dumps(topic)},"postgres_changes",{{"ids":[{binding_id}],'
            if self.vsn == VSN_2
            else f'{{"join_ref":null,"ref":null,"topic":{dumps(topic)},'
            f'"event":"postgres_changes","payload":{{"ids":[{binding_id}],'
        )
        key = (sub, f"phoenix/{self.vsn}/{'r' if resume else ''}/{self.epoch}")
        self.bindings[sub] = Binding(topic, binding_id, resume, head, key)

    def cursor(self, pos: int) -> str:
        return cursor_text(self.epoch, pos)

    def unbind(self, sub: str) -> None:
        self.bindings.pop(sub, None)

    def frame(self, join_ref: str | None, ref: str | None, topic: str, event: str,
              payload: object) -> str:  # fmt: skip
        return encode(self.vsn, join_ref, ref, topic, event, payload)

    # -- the Encoder methods ---------------------------------------------------------------------

    def event(self, sub_id: str, event: Event) -> str:
        binding = self.bindings[sub_id]
        cursor = (
            '"cursor":' + dumps(cursor_text(self.epoch, event.pos)) + "," if binding.resume else ""
        )
        tail = "}]" if self.vsn == VSN_2 else "}}"
        return binding.head + cursor + '"data":' + change_data(event, self.types()) + tail

    def event_frame(self, sub_id: str, event: Event) -> bytes:
        """Framed once per event for every socket whose binding has this id, serializer and
        resume (a topic's sockets share it: the same join gives the same id), as V1 does."""
        key = self.bindings[sub_id].frame_key  # built once, at bind
        frames = event.frames
        data = frames.get(key)
        if data is None:
            data = text_frame(self.event(sub_id, event).encode())
            if len(frames) < FRAME_CACHE_SIZE:
                frames[key] = data
        return data

    def event_size(self, sub_id: str, event: Event) -> int:
        binding = self.bindings.get(sub_id)
        head = len(binding.head) + 60 if binding is not None else 120  # + cursor and tail
        return head + len(change_data(event, self.types()))

    def overflow_reset(self, sub_id: str, pos: int) -> str:
        """The channel lost events to an overflow: ``phx_error`` (the client rejoins) and the
        session stops the channel until then."""
        binding = self.bindings.get(sub_id)
        topic = binding.topic if binding is not None else topic_of(sub_id)
        self.on_overflow(topic)
        return self.frame(None, None, topic, "phx_error", {})
