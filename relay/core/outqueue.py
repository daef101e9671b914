"""A connection's bounded outbound buffer: the slow-consumer policy.

Routing never waits on a socket: a connection that cannot write an event at once calls
``OutQueue.offer``, which never blocks and never raises, and later calls ``pop_ready`` and writes
what it gets, in order. Frames are built by the encoder the queue is given (relay/core/wire.py),
so the queue knows no wire format and holds no epoch.

The policy, in plain words:

* The queue holds at most ``max_messages`` frames and at most ``max_bytes`` of encoded frames
  (estimated as characters of JSON), counting every frame: events and control frames, ready or
  held in a coalescing window.
* Control frames (subscribed, error, pong, reset, ready) are never dropped, merged or delayed;
  they keep their order relative to the events queued around them.
* When a push would pass either bound, the queue first conflates its whole backlog: a queued
  UPDATE is merged into a newer UPDATE of the same row for the same subscription (newest values,
  union of the changed columns, at the newer position, so cursor order holds). Two UPDATEs are
  never merged across an INSERT or DELETE of that row, nor when either changed the primary key.
* If the queue is still over a bound, every queued event is dropped (control frames stay) and
  each subscription that lost events gets one ``reset`` frame, reason ``overflow``, whose cursor
  is the newest event it lost: the client refetches, then carries on with the events after that
  cursor, which keep flowing. A reset still waiting to be sent is moved forward rather than
  repeated.
* If the control frames alone pass a bound (a client that sends pings and never reads),
  ``overflowed`` becomes True and the shell must abort the connection; from then on the queue
  accepts nothing.
* A subscription with ``coalesce_ms`` > 0: an UPDATE that arrives while no window is open opens
  one, closing ``coalesce_ms`` later, and is held. Until the window closes every event of that
  subscription is held behind it (so its cursor order holds) and UPDATEs of one row are merged
  as above. When it closes, the held frames become ready, in order. A window never delays other
  subscriptions' frames or control frames.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Final, TypeAlias

from relay.core.events import Event, dumps
from relay.core.wire import Encoder

if TYPE_CHECKING:
    from relay.core.subscription import Subscription

__all__ = ["DEFAULT_MAX_BYTES", "DEFAULT_MAX_MESSAGES", "OutQueue"]

DEFAULT_MAX_MESSAGES: Final = 1000
DEFAULT_MAX_BYTES: Final = 1_048_576

# A row as one subscription sees it: the subscription id, then Event.row_key.
_RowId: TypeAlias = tuple[str, str, str, str]


@dataclass(slots=True, eq=False)
class _Window:
    """An open coalescing window of one subscription and the items held behind it."""

    deadline: float
    order: int  # breaks deadline ties: windows close in the order they opened
    held: dict[int, _Item] = field(default_factory=dict)


@dataclass(slots=True, eq=False)
class _Item:
    """A queued event for one subscription; its frame is encoded only when popped."""

    seq: int
    sub_id: str
    event: Event
    size: int
    rows: tuple[_RowId, ...]  # the row it names; a key-changing UPDATE names the old row too
    window: _Window | None = None  # None: in the ready queue


@dataclass(slots=True, eq=False)
class _Control:
    seq: int
    frame: str
    size: int
    reset_sub: str | None = None  # set on an overflow reset, so a later one can move it forward


def _conflatable(event: Event) -> bool:
    # A key-changing UPDATE moves the row's identity: merging across it could fuse two rows.
    return event.op == "UPDATE" and event.old_key == event.pk


class OutQueue:
    """The outbound buffer of one connection; see the module docstring for the policy.

    ``conflated`` counts events merged away, ``dropped`` events dropped by overflow and
    ``resets`` overflow resets issued (one per subscription per overflow): metrics counters.
    """

    def __init__(
        self,
        wire: Encoder,
        *,
        max_messages: int = DEFAULT_MAX_MESSAGES,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        if max_messages < 1 or max_bytes < 1:
            raise ValueError("max_messages and max_bytes must be at least 1")
        self.wire = wire
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.conflated = 0
        self.dropped = 0
        self.resets = 0
        self.overflowed = False
        self._ready: OrderedDict[int, _Item | _Control] = OrderedDict()
        self._windows: dict[str, _Window] = {}
        self._latest: dict[_RowId, _Item] = {}  # newest queued item naming each row
        self._pending_resets: dict[str, _Control] = {}
        self._seq = 0
        self._count = 0
        self._bytes = 0
        # True when the backlog may hold a pair of UPDATEs that conflation could merge: lets a
        # push at the bound skip the whole-backlog pass when it cannot free anything.
        self._unmerged = False

    def __len__(self) -> int:
        return self._count

    @property
    def pending_bytes(self) -> int:
        """The estimated size of every queued frame, ready or held."""
        return self._bytes

    def next_deadline(self) -> float | None:
        """When the earliest coalescing window closes (monotonic seconds), or None."""
        return min((w.deadline for w in self._windows.values()), default=None)

    def offer(self, sub: Subscription, event: Event, now: float) -> None:
        """Queues ``event`` for ``sub``; never blocks, never raises on overflow."""
        if self.overflowed:
            return
        self._close_windows(now)
        rows = self._row_ids(sub.id, event)
        window = self._windows.get(sub.id)
        if window is None and sub.coalesce_ms > 0 and event.op == "UPDATE":
            self._seq += 1
            window = _Window(deadline=now + sub.coalesce_ms / 1000, order=self._seq)
            self._windows[sub.id] = window
        # The newest queued item naming this row: nothing of this row sits after it, so the
        # only question is whether both are plain UPDATEs.
        prev = self._latest.get(rows[0])
        if prev is not None and _conflatable(prev.event) and _conflatable(event):
            if window is not None and prev.window is window:
                self._remove(prev)
                event = prev.event.merged_with(event)
                self.conflated += 1
            else:
                self._unmerged = True  # outside a window, merge only under pressure
        self._append(
            _Item(0, sub.id, event, self._size(sub.id, event), rows),
            window,
        )
        self._enforce_bounds()

    def push_control(self, frame: str) -> None:
        """Queues a control frame after everything queued so far; never dropped or merged."""
        if self.overflowed:
            return
        self._push_control(frame)
        self._enforce_bounds()

    def pop_ready(self, now: float, max_frames: int | None = None) -> list[str]:
        """Removes and returns the frames ready to send, oldest first (at most ``max_frames``)."""
        return [frame for frame, _ in self.pop_ready_timed(now, max_frames)]

    def pop_ready_timed(
        self, now: float, max_frames: int | None = None
    ) -> list[tuple[str, datetime | None]]:
        """As ``pop_ready``, each frame with its event's commit time (None for control frames),
        so the shell can measure commit-to-socket lag when the write completes."""
        self._close_windows(now)
        limit = len(self._ready) if max_frames is None else max(0, max_frames)
        frames: list[tuple[str, datetime | None]] = []
        while self._ready and len(frames) < limit:
            _, entry = self._ready.popitem(last=False)
            self._count -= 1
            self._bytes -= entry.size
            if isinstance(entry, _Control):
                if entry.reset_sub is not None:
                    del self._pending_resets[entry.reset_sub]
                frames.append((entry.frame, None))
            else:
                self._unindex(entry)
                event = entry.event
                frames.append((self.wire.event(entry.sub_id, event), event.committed_at))
        return frames

    def discard(self, sub_id: str) -> int:
        """Forgets every queued event and pending overflow reset of a subscription.

        For an unsubscribe: nothing more is sent for ``sub_id``. Returns how many events went.
        """
        items = [i for i in self._items() if i.sub_id == sub_id]
        for item in items:
            self._remove(item)
        self._windows.pop(sub_id, None)
        reset = self._pending_resets.pop(sub_id, None)
        if reset is not None:
            del self._ready[reset.seq]
            self._count -= 1
            self._bytes -= reset.size
        return len(items)

    # -- internals ---------------------------------------------------------------------------

    def _size(self, sub_id: str, event: Event) -> int:
        return self.wire.event_size(sub_id, event)

    @staticmethod
    def _row_ids(sub_id: str, event: Event) -> tuple[_RowId, ...]:
        own = (sub_id, *event.row_key)
        if event.op == "UPDATE" and event.old_key is not None and event.old_key != event.pk:
            # Also names the row it moved away from, so it stands between older and newer
            # UPDATEs of that key (a new row may later take the old key).
            return own, (sub_id, event.schema, event.table, dumps(event.old_key))
        return (own,)

    def _items(self) -> Iterator[_Item]:
        """Every queued item; for one subscription, in its event order (ready before held)."""
        for entry in self._ready.values():
            if isinstance(entry, _Item):
                yield entry
        for window in self._windows.values():
            yield from window.held.values()

    def _over(self) -> bool:
        return self._count > self.max_messages or self._bytes > self.max_bytes

    def _append(self, item: _Item, window: _Window | None) -> None:
        self._seq += 1
        item.seq = self._seq
        item.window = window
        if window is None:
            self._ready[item.seq] = item
        else:
            window.held[item.seq] = item
        self._count += 1
        self._bytes += item.size
        for row in item.rows:
            self._latest[row] = item

    def _unindex(self, item: _Item) -> None:
        for row in item.rows:
            if self._latest.get(row) is item:
                del self._latest[row]

    def _remove(self, item: _Item) -> None:
        if item.window is None:
            del self._ready[item.seq]
        else:
            del item.window.held[item.seq]
        self._count -= 1
        self._bytes -= item.size
        self._unindex(item)

    def _push_control(self, frame: str, reset_sub: str | None = None) -> _Control:
        self._seq += 1
        control = _Control(self._seq, frame, len(frame), reset_sub)
        self._ready[control.seq] = control
        self._count += 1
        self._bytes += control.size
        return control

    def release_window(self, sub_id: str) -> None:
        """Closes the subscription's coalescing window now: its held frames become ready.

        Before a control frame that must follow them (``subscribed`` after a replay)."""
        window = self._windows.pop(sub_id, None)
        if window is not None:
            for item in window.held.values():
                item.window = None
                self._ready[item.seq] = item

    def _close_windows(self, now: float) -> None:
        due = [
            (w.deadline, w.order, sub_id)
            for sub_id, w in self._windows.items()
            if now >= w.deadline
        ]
        for _, _, sub_id in sorted(due):
            for item in self._windows.pop(sub_id).held.values():
                item.window = None
                self._ready[item.seq] = item

    def _enforce_bounds(self) -> None:
        if not self._over():
            return
        if self._unmerged:
            self._conflate_backlog()
            if not self._over():
                return
        self._drop_events()
        if self._over():
            self.overflowed = True

    def _conflate_backlog(self) -> None:
        """Merges every chain of plain UPDATEs of one row into its newest member, in place."""
        newest: dict[_RowId, _Item] = {}
        for item in list(self._items()):
            prev = newest.get(item.rows[0])
            if prev is not None and _conflatable(prev.event) and _conflatable(item.event):
                self._remove(prev)
                # The merged event keeps the newer item's place, whether ready or held.
                item.event = prev.event.merged_with(item.event)
                self._bytes -= item.size
                item.size = self._size(item.sub_id, item.event)
                self._bytes += item.size
                self.conflated += 1
            for row in item.rows:
                newest[row] = item
        self._latest = newest
        self._unmerged = False

    def _drop_events(self) -> None:
        lost: dict[str, int] = {}  # subscription id -> newest position dropped
        for item in self._items():
            lost[item.sub_id] = max(item.event.pos, lost.get(item.sub_id, item.event.pos))
            self.dropped += 1
        self._ready = OrderedDict(
            (seq, entry) for seq, entry in self._ready.items() if isinstance(entry, _Control)
        )
        self._windows.clear()
        self._latest.clear()
        self._unmerged = False
        self._count = len(self._ready)
        self._bytes = sum(entry.size for entry in self._ready.values())
        for sub_id, pos in lost.items():
            self._queue_reset(sub_id, pos)

    def _queue_reset(self, sub_id: str, pos: int) -> None:
        frame = self.wire.overflow_reset(sub_id, pos)
        self.resets += 1
        pending = self._pending_resets.get(sub_id)
        if pending is None:
            self._pending_resets[sub_id] = self._push_control(frame, reset_sub=sub_id)
            return
        # Every event of this subscription queued after the pending reset has just been dropped,
        # so moving its cursor forward says the same as a second reset, in one frame.
        self._bytes += len(frame) - pending.size
        pending.frame = frame
        pending.size = len(frame)
