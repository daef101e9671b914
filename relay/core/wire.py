"""Protocol v1 on the wire: every frame the relay sends and every cursor string, encoded here once.

docs/protocol.md is the public description. The websocket frames (``event``, ``ready``,
``subscribed``, ``reset``, ``unsubscribed``, ``pong``, ``error``) and the long-poll's JSON bodies
are built by ``V1``, one per epoch: a connection holds one and hands it to its queue and its
session, so a cursor always names the epoch the connection lives in. A cursor's text is
``cursor_text`` (relay/core/cursor.py parses it back).

An event is encoded once however many connections receive it: its epoch-independent JSON
(``Event.encoded``, which the log reader checks when it reads the row) is followed by the cursor
once per epoch (``V1.tail``), and the whole frame, RFC 6455-framed, once per subscription id
(``V1.event_frame``, cached for the first ``FRAME_CACHE_SIZE`` ids: fanning an event out to many
connections, which often share an id, frames it once). The caches are fields of the event.

The outbound queue and a connection ask only for what ``Encoder`` lists: a sibling dialect (a
Supabase-style ``postgres_changes`` encoder, say) is another class beside ``V1`` with the same
methods, and the router, the queue and the catch-up stay as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, Protocol

from relay.core.events import Event, dumps

__all__ = ["FRAME_CACHE_SIZE", "V1", "Encoder", "cursor_text", "text_frame"]

FRAME_CACHE_SIZE: Final = 16  # framed events kept per event (per distinct subscription id)
PONG: Final = '{"type":"pong"}'
# '{"type":"event","sub":' + the id's two quotes + ',': exact for ids that need no escaping.
_EVENT_OVERHEAD: Final = len('{"type":"event","sub":"",')


def cursor_text(epoch: str, pos: int) -> str:
    """A cursor as clients see it: the epoch's 32 hex digits, a dot, the position."""
    return f"{epoch}.{pos}"


def text_frame(payload: bytes) -> bytes:
    """An unmasked, unfragmented websocket text frame (RFC 6455 section 5.2): FIN + text opcode,
    no mask (server to client), the payload length, then the payload."""
    length = len(payload)
    if length < 126:
        return bytes((0x81, length)) + payload
    if length < 1 << 16:
        return bytes((0x81, 126)) + length.to_bytes(2, "big") + payload
    return bytes((0x81, 127)) + length.to_bytes(8, "big") + payload


class Encoder(Protocol):
    """What the outbound queue (relay/core/outqueue.py) and a connection need of a dialect."""

    def event(self, sub_id: str, event: Event) -> str:
        """The frame delivering ``event`` to subscription ``sub_id``."""
        ...

    def event_frame(self, sub_id: str, event: Event) -> bytes:
        """``event(sub_id, event)`` as the bytes the socket is written (a websocket text frame,
        an SSE block), the same for every connection of the dialect and epoch."""
        ...

    def event_size(self, sub_id: str, event: Event) -> int:
        """The length of ``event(sub_id, event)``, for the queue's byte bound."""
        ...

    def overflow_reset(self, sub_id: str, pos: int) -> str:
        """The frame telling subscription ``sub_id`` its queued events up to ``pos`` were lost."""
        ...


class V1:
    """Protocol v1's frames and bodies for one epoch of the log."""

    __slots__ = ("epoch",)

    def __init__(self, epoch: str) -> None:
        self.epoch = epoch

    def cursor(self, pos: int) -> str:
        return cursor_text(self.epoch, pos)

    # -- events ---------------------------------------------------------------------------------

    def tail(self, event: Event) -> str:
        """The event frame after its ``"sub"`` member: the cursor, then the event's JSON; encoded
        once per event and epoch."""
        tail = event.tails.get(self.epoch)
        if tail is None:
            tail = '"cursor":' + dumps(cursor_text(self.epoch, event.pos)) + "," + event.encoded()
            event.tails[self.epoch] = tail
        return tail

    def event(self, sub_id: str, event: Event) -> str:
        return '{"type":"event","sub":' + dumps(sub_id) + "," + self.tail(event)

    def event_frame(self, sub_id: str, event: Event) -> bytes:
        key = (sub_id, self.frame_key())
        frames = event.frames
        data = frames.get(key)
        if data is None:
            data = self.framed(self.event(sub_id, event))
            if len(frames) < FRAME_CACHE_SIZE:
                frames[key] = data
        return data

    def frame_key(self) -> str:
        """What tells this dialect's cached frames of an event apart: the epoch."""
        return self.epoch

    @staticmethod
    def framed(frame: str) -> bytes:
        """A frame as the socket carries it: an RFC 6455 text frame."""
        return text_frame(frame.encode())

    def event_size(self, sub_id: str, event: Event) -> int:
        return len(self.tail(event)) + len(sub_id) + _EVENT_OVERHEAD

    # -- control frames -------------------------------------------------------------------------

    def ready(self, user: str, pos: int) -> str:
        return dumps({"type": "ready", "user": user, "cursor": self.cursor(pos)})

    def subscribed(self, sub_id: str, pos: int) -> str:
        return dumps({"type": "subscribed", "id": sub_id, "cursor": self.cursor(pos)})

    def reset(self, sub_id: str, reason: str, pos: int) -> str:
        """The subscription's stream cannot continue from where it stood: the client refetches,
        then carries on after the cursor."""
        return dumps({"type": "reset", "sub": sub_id, "reason": reason, "cursor": self.cursor(pos)})

    def overflow_reset(self, sub_id: str, pos: int) -> str:
        return self.reset(sub_id, "overflow", pos)

    @staticmethod
    def unsubscribed(sub_id: str) -> str:
        return dumps({"type": "unsubscribed", "id": sub_id})

    @staticmethod
    def pong() -> str:
        return PONG

    @staticmethod
    def error(
        code: str, message: str, sub_id: str | None = None, request: str | None = None
    ) -> str:
        """A refused client message: ``request`` is its ``type`` (``subscribe``,
        ``unsubscribe``...) when it had a known one, so a failed unsubscribe is told apart from a
        failed subscribe of the same id."""
        frame: dict[str, object] = {"type": "error", "code": code, "message": message}
        if sub_id is not None:
            frame["id"] = sub_id
        if request is not None:
            frame["request"] = request
        return dumps(frame)

    @staticmethod
    def auth_ok(user: str, exp: float) -> str:
        """A refresh ``auth`` was accepted: the connection now expires at ``exp``."""
        return dumps({"type": "auth_ok", "user": user, "exp": int(exp)})

    # -- long-poll bodies -----------------------------------------------------------------------

    def poll(self, events: Sequence[Event], pos: int) -> str:
        """A long-poll answer: the events, then the cursor the next request goes on from."""
        frames = ",".join('{"type":"event",' + self.tail(event) for event in events)
        return '{"events":[' + frames + '],"cursor":' + dumps(self.cursor(pos)) + "}"

    def poll_reset(self, reason: str, pos: int) -> str:
        """A long-poll answer for a cursor the log cannot resume from: refetch, go on from pos."""
        return dumps({"reset": {"reason": reason}, "cursor": self.cursor(pos)})

    @staticmethod
    def poll_error(error: str, **members: str) -> str:
        """A long-poll refusal's body: the error, and ``code`` or ``reason`` where there is one."""
        return dumps({"error": error, **members})
