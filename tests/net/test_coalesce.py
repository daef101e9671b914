"""Coalescing windows end to end: quick UPDATEs of one row within coalesce_ms arrive as one event."""

from __future__ import annotations

import psycopg
import pytest

from tests.support.clients import Client
from tests.support.processes import relay_process

pytestmark = pytest.mark.pg


def test_coalesce_window_delivers_one_update_with_the_latest_values(relay_db: str) -> None:
    """Five quick UPDATEs of one row within coalesce_ms arrive as one event with the last value."""
    with relay_process(relay_db) as relay:
        client = Client(relay.url, "alice")
        client.ready()
        with psycopg.connect(relay_db, autocommit=True) as conn:
            conn.execute("INSERT INTO thumbnails (user_id, project_id) VALUES ('alice', 'p')")
            client.subscribe("s", "thumbnails", ops=["UPDATE"], coalesce_ms=1000)
            for _ in range(5):
                conn.execute("SELECT increment_thumbnail_share_click_count(1)")
        events = client.events(1, timeout=5)
        assert [(5, ["share_click_count"])] == [
            (e["row"]["share_click_count"], e["changed"]) for e in events
        ]
        assert [] == client.quiet(1.5)
