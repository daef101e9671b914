"""The sequencer role across replicas: one holder at a time, taken over when the holder dies."""

from __future__ import annotations

import signal
import time

import psycopg
import pytest

from tests.support.clients import Client
from tests.support.processes import RelayProcess
from tests.support.waiting import wait_until

pytestmark = pytest.mark.pg


def test_sequencer_role_moves_to_the_other_replica_when_its_holder_dies(relay_db: str) -> None:
    """Two replicas: SIGKILL the sequencer's holder; the other takes the role and events keep flowing."""
    first = RelayProcess(relay_db).start()
    wait_until(lambda: first.metric("relay_sequencer_leader") == 1.0, 10, "first replica leads")
    second = RelayProcess(relay_db).start()
    try:
        time.sleep(1.5)  # the second replica tries the lock about once a second
        assert (1.0, 0.0) == (
            first.metric("relay_sequencer_leader"),
            second.metric("relay_sequencer_leader"),
        )
        client = Client(second.url, "alice")
        client.ready()
        client.subscribe("s", "generations")
        first.stop(signal.SIGKILL)
        with psycopg.connect(relay_db, autocommit=True) as conn:
            for i in range(20):
                conn.execute(
                    "INSERT INTO generations (user_id, project_id) VALUES ('alice', %s)", (str(i),)
                )
        got = [e["row"]["project_id"] for e in client.events(20, timeout=30)]
        assert [str(i) for i in range(20)] == got
        assert 1.0 == second.metric("relay_sequencer_leader")
    finally:
        second.kill()


def test_the_leaders_reader_takes_its_sequencers_batches_in_process(relay_db: str) -> None:
    """One replica, the leader: its clients get every event, and its reader counts batches
    handed by its sequencer (relay_reader_batches_total, source handoff), not only read ones."""
    relay = RelayProcess(relay_db).start()
    try:
        wait_until(lambda: relay.metric("relay_sequencer_leader") == 1.0, 10, "the replica leads")
        client = Client(relay.url, "alice")
        client.ready()
        client.subscribe("s", "generations")
        got: list[str] = []
        with psycopg.connect(relay_db, autocommit=True) as conn:
            for i in range(10):
                conn.execute(
                    "INSERT INTO generations (user_id, project_id) VALUES ('alice', %s)", (str(i),)
                )
                got += [e["row"]["project_id"] for e in client.events(1, timeout=10)]
        assert [str(i) for i in range(10)] == got
        assert relay.metric("relay_reader_batches_total", 'source="handoff"') >= 1.0
    finally:
        relay.kill()
