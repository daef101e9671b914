"""Row-change events as the relay sees them: one row of ``relay.log``.

An ``Event`` is immutable and carries everything routing needs (table, op, audience, row) and
everything a client is sent. Its wire form is encoded once, however many connections receive it:
``Event.wire_tail`` is the JSON object minus its opening ``{"type":"event","sub":...,`` part,
which is the only part that differs between subscriptions.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, TypeAlias

__all__ = ["OPS", "Event", "JSONValue", "Op", "dumps"]

# HEARTBEAT events are the relay's own: they travel the log with no audience and reach nobody.
Op: TypeAlias = Literal["INSERT", "UPDATE", "DELETE", "HEARTBEAT"]
OPS: frozenset[str] = frozenset({"INSERT", "UPDATE", "DELETE"})  # what clients subscribe to
JSONValue: TypeAlias = Any  # what json.loads returns; rows are arbitrary JSON objects

FRAME_CACHE_SIZE = 16  # encoded frames kept per event (per distinct subscription id)
_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _text_frame_header(length: int) -> bytes:
    """FIN + text opcode, no mask (server to client), then the payload length."""
    if length < 126:
        return bytes((0x81, length))
    if length < 1 << 16:
        return bytes((0x81, 126)) + length.to_bytes(2, "big")
    return bytes((0x81, 127)) + length.to_bytes(8, "big")


def dumps(value: object) -> str:
    """Compact JSON, as every frame the relay sends is encoded."""
    return _encoder.encode(value)


@dataclass(frozen=True, slots=True, eq=False)
class Event:
    """One captured row change, at position ``pos`` of the log.

    ``row`` holds the whitelisted column values: the new ones for INSERT and UPDATE, the old ones
    for DELETE; it is None when the row was over the database's size cap (``truncated``).
    ``old_key`` is the primary key before the change (UPDATE and DELETE). ``changed`` lists the
    whitelisted columns an UPDATE changed, sorted. ``audience`` is every user id allowed to see it.
    """

    pos: int
    schema: str
    table: str
    op: Op
    pk: Mapping[str, JSONValue]
    row: Mapping[str, JSONValue] | None
    old_key: Mapping[str, JSONValue] | None
    changed: tuple[str, ...]
    audience: frozenset[str]
    committed_at: datetime
    truncated: bool = False
    # The encoded wire tail per epoch; not a constructor argument, so dataclasses.replace()
    # never carries another event's encoding over.
    _tail: dict[str, str] = field(default_factory=dict, init=False, repr=False, compare=False)
    _frames: dict[tuple[str, str], bytes] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @property
    def row_key(self) -> tuple[str, str, str]:
        """Identifies the row across events: schema, table and the primary key as JSON."""
        return (self.schema, self.table, dumps(self.pk))

    def wire_tail(self, epoch: str) -> str:
        """The encoded frame after its ``"sub"`` member, cached per epoch."""
        tail = self._tail.get(epoch)
        if tail is None:
            tail = self._encode_tail(epoch, self.pos, self.row, self.changed)
            self._tail[epoch] = tail
        return tail

    def _encode_tail(
        self,
        epoch: str,
        pos: int,
        row: Mapping[str, JSONValue] | None,
        changed: tuple[str, ...],
    ) -> str:
        body: dict[str, object] = {
            "cursor": f"{epoch}.{pos}",
            "schema": self.schema,
            "table": self.table,
            "op": self.op,
            "pk": self.pk,
            "row": row,
            "changed": list(changed),
            "ts": self.committed_at.isoformat(),
        }
        if self.old_key is not None:
            body["old"] = self.old_key
        if self.truncated:
            body["truncated"] = True
        return dumps(body)[1:]  # drop the "{": the frame's head supplies it

    def frame(self, sub_id: str, epoch: str) -> str:
        """The complete ``event`` frame for one subscription."""
        return '{"type":"event","sub":' + dumps(sub_id) + "," + self.wire_tail(epoch)

    def wire_frame(self, sub_id: str, epoch: str) -> bytes:
        """The frame as an unmasked, unfragmented websocket text frame (RFC 6455 section 5.2),
        cached for the first few subscription ids: fanning one event out to many connections
        (which often share an id) encodes and frames it once, not once per connection."""
        key = (sub_id, epoch)
        data = self._frames.get(key)
        if data is None:
            payload = self.frame(sub_id, epoch).encode()
            data = _text_frame_header(len(payload)) + payload
            if len(self._frames) < FRAME_CACHE_SIZE:
                self._frames[key] = data
        return data

    def merged_with(self, newer: Event) -> Event:
        """This UPDATE followed by a newer UPDATE of the same row, as one event.

        The result sits at the newer position with the newer values, and its ``changed`` is the
        union of both, so a client that skips the older one loses nothing.
        """
        return Event(
            pos=newer.pos,
            schema=newer.schema,
            table=newer.table,
            op=newer.op,
            pk=newer.pk,
            row=newer.row,
            old_key=self.old_key,
            changed=tuple(sorted(set(self.changed) | set(newer.changed))),
            audience=newer.audience,
            committed_at=newer.committed_at,
            truncated=newer.truncated,
        )
