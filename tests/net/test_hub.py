"""The hub's reaction to what the log reader reports: no sockets, no database."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from relay.core.events import Event
from relay.core.log import LogState
from relay.net.hub import CLOSE_EPOCH_CHANGED, Hub
from relay.ops.config import Settings
from relay.ops.metrics import Metrics
from tests.support.factories import RecordingTarget, make_event, make_sub

EPOCH, OTHER = "a" * 32, "b" * 32


class RecordingConnection:
    """Stands in for a websocket connection: records the close the hub asks for."""

    def __init__(self) -> None:
        self.closed: list[tuple[int, str]] = []

    def close_soon(self, code: int, reason: str) -> None:
        self.closed.append((code, reason))


def heartbeat(pos: int) -> Event:
    return Event(pos=pos, schema="relay", table="heartbeat", op="HEARTBEAT", pk={"source": "r"},
                 row=None, old_key=None, changed=(), audience=frozenset(),
                 committed_at=datetime(2026, 1, 1, tzinfo=UTC))  # fmt: skip


def running_hub(head: int = 100) -> tuple[Hub, RecordingConnection]:
    hub = Hub(Settings(dsn="postgresql:///x", jwt_secret="s" * 32), Metrics())
    hub.on_log_state(LogState(epoch=EPOCH, head=head, pruned_through=10, notify=True))
    connection = RecordingConnection()
    hub.connections["c1"] = connection  # type: ignore[assignment]
    return hub, connection


def test_reconnect_to_the_same_log_keeps_connections() -> None:
    """A listener that reconnects to the same epoch, head at or past ours, changes nothing."""
    hub, connection = running_hub()
    router = hub.router
    hub.on_log_state(None)
    hub.on_log_state(LogState(epoch=EPOCH, head=120, pruned_through=50, notify=True))
    assert ([], router) == (connection.closed, hub.router)


@pytest.mark.parametrize(
    ("state", "why"),
    [
        (LogState(epoch=OTHER, head=5, pruned_through=0, notify=True), "reinstalled"),
        (LogState(epoch=EPOCH, head=60, pruned_through=0, notify=True), "restored: head went back"),
        (LogState(epoch=EPOCH, head=900, pruned_through=400, notify=True), "pruned past our head"),
    ],
)
def test_log_discontinuity_closes_connections_and_rebases(state: LogState, why: Any) -> None:
    """Reinstall, restore or pruning past this relay: clients are closed with 1012 to resume."""
    hub, connection = running_hub()
    hub.on_log_state(state)
    assert ([(CLOSE_EPOCH_CHANGED, "epoch_changed")], state.head, state.epoch) == (
        connection.closed,
        hub.router.head,
        hub.epoch,
    ), why


def test_heartbeats_advance_the_head_and_count_no_row_event() -> None:
    """A heartbeat moves the routed head (so cursors move on) but is not a row event."""
    hub, _ = running_hub()
    hub.deliver([heartbeat(101)])
    assert 101 == hub.router.head
    assert b"relay_events_total{" not in hub.metrics.render()


def test_deliveries_written_at_once_are_counted_from_what_the_router_returns() -> None:
    """Frames the connections wrote at once count as deliveries with their lag; queued ones not."""
    hub, _ = running_hub()
    writer, queuer = RecordingTarget("alice", "w", writes=True), RecordingTarget("alice", "q")
    for target in (writer, queuer):
        hub.router.add(target)
        hub.router.subscribe(target, make_sub("s", after=100))
    hub.deliver([make_event(101), make_event(102)])
    metrics = hub.metrics.render()
    assert ([("s", 101), ("s", 102)], [("s", 101), ("s", 102)]) == (
        writer.received,
        queuer.received,
    )
    assert b"relay_deliveries_total 2.0" in metrics
    assert b"relay_delivery_lag_seconds_count 2.0" in metrics
