"""Protocol v1 as Server-Sent Events (``text/event-stream``, WHATWG HTML section 9.2).

A stream carries the websocket's frames (relay/core/wire.py), each JSON frame as the one
``data:`` line of an SSE block. JSON text never holds a raw line break (``dumps`` escapes control
characters), so a frame is always one line, and an EventSource's ``event.data`` is the frame.

* Events are unnamed (EventSource's ``message``) and carry ``id:`` = the event's cursor: a
  browser's own reconnect sends it back as ``Last-Event-ID`` and the stream resumes after it.
* Control frames are named after their type (``event: ready``, ``subscribed``, ``reset``,
  ``error``) and carry no ``id:``. A stream's id always means "every subscription has everything
  up to here", which a frame of one subscription cannot say (a reset's cursor, a subscribed one
  before the others are): were it sent as an id, a reconnect could skip another subscription's
  reset. A reconnect before the next id may repeat what a reset told the client to refetch; it
  never loses an event or a reset.
* Once every subscription is live, the stream's ``position`` follows: a block with only an
  ``id:``, which dispatches nothing but sets EventSource's last event id.
* Heartbeats are comments. A heartbeat of a stream whose subscriptions are all live with nothing
  queued carries the position too, so a quiet stream's resume point keeps up with the log.

An event's block is the same bytes on every stream of an epoch: encoded once per subscription id
and cached on the event beside its websocket frames (``SSE.event_frame``).
"""

from __future__ import annotations

from typing import Final

from relay.core.events import Event
from relay.core.wire import V1, cursor_text

__all__ = ["SSE"]

_ID: Final = "id: "
_DATA: Final = "\ndata: "
_END: Final = "\n\n"
# An event's block around its websocket frame: "id: " + cursor + "\ndata: " + frame + "\n\n".
_BLOCK_OVERHEAD: Final = len(_ID) + len(_DATA) + len(_END)


def _named(name: str, frame: str) -> str:
    return "event: " + name + "\ndata: " + frame + _END


class SSE(V1):
    """Protocol v1's frames as SSE blocks, for one epoch of the log (an ``Encoder``)."""

    __slots__ = ()

    # -- events ---------------------------------------------------------------------------------

    def event(self, sub_id: str, event: Event) -> str:
        return _ID + self.cursor(event.pos) + _DATA + super().event(sub_id, event) + _END

    def event_size(self, sub_id: str, event: Event) -> int:
        return super().event_size(sub_id, event) + len(self.cursor(event.pos)) + _BLOCK_OVERHEAD

    def frame_key(self) -> str:
        return "sse " + self.epoch  # never an epoch (32 hex digits): apart from V1's frames

    @staticmethod
    def framed(frame: str) -> bytes:
        return frame.encode()

    # -- control frames -------------------------------------------------------------------------

    def ready(self, user: str, pos: int) -> str:
        return _named("ready", super().ready(user, pos))

    def subscribed(self, sub_id: str, pos: int) -> str:
        return _named("subscribed", super().subscribed(sub_id, pos))

    def reset(self, sub_id: str, reason: str, pos: int) -> str:
        return _named("reset", super().reset(sub_id, reason, pos))

    @staticmethod
    def unsubscribed(sub_id: str) -> str:
        return _named("unsubscribed", V1.unsubscribed(sub_id))

    @staticmethod
    def pong() -> str:
        return _named("pong", V1.pong())

    @staticmethod
    def error(
        code: str, message: str, sub_id: str | None = None, request: str | None = None
    ) -> str:
        return _named("error", V1.error(code, message, sub_id, request))

    @staticmethod
    def auth_ok(user: str, exp: float) -> str:
        return _named("auth_ok", V1.auth_ok(user, exp))

    # -- the stream's own lines -----------------------------------------------------------------

    def position(self, pos: int) -> str:
        """The stream's position as its last event id: every subscription has everything up to
        ``pos``."""
        return _ID + cursor_text(self.epoch, pos) + _END

    def heartbeat(self, pos: int | None) -> str:
        """A comment; with ``pos``, also the stream's position."""
        return ":\n\n" if pos is None else ":\n" + self.position(pos)

    @staticmethod
    def retry(ms: int) -> str:
        """Tells EventSource how long to wait before it reconnects."""
        return f"retry: {ms}{_END}"
