"""Metrics and health move as they should: reader reconnects and stalls, heartbeats, readiness,
refused tokens, deliveries, and a separate metrics port."""

from __future__ import annotations

import os
import signal
import time
import urllib.request

import psycopg
import pytest
from websockets.exceptions import ConnectionClosed

from relay.demo.pgserver import PgServer
from relay.errors import ConfigError
from relay.ops.config import Settings
from relay.ops.datafiles import install_script
from tests.support.clients import Client
from tests.support.processes import free_port, relay_process
from tests.support.tokens import SECRET, token
from tests.support.waiting import wait_until

pytestmark = pytest.mark.pg


def listener_pid(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'pgrelay-listener'"
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_listener_reconnect_is_counted_and_logged(relay_db: str) -> None:
    """Killing the listener's backend increments relay_listener_reconnects_total and logs listener_lost."""
    with relay_process(relay_db) as relay:
        assert 0.0 == relay.metric("relay_listener_reconnects_total")
        with psycopg.connect(relay_db, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(%s)", (listener_pid(relay_db),))
        relay.wait_log("listener_lost")
        wait_until(lambda: relay.metric("relay_listener_up") == 1.0, 15, "listener back up")
        assert 1.0 == relay.metric("relay_listener_reconnects_total")


def test_heartbeat_keeps_last_event_age_low_without_writes(relay_db: str) -> None:
    """With no application writes, heartbeats through the log keep the last-event age near the interval."""
    with relay_process(relay_db) as relay:  # heartbeat every 1 s in tests
        time.sleep(2.5)
        ages = []
        for _ in range(10):
            ages.append(relay.metric("relay_last_event_age_seconds"))
            time.sleep(0.3)
        assert all(age < 2.5 for age in ages), ages


def test_stalled_listener_backend_raises_age_and_is_replaced(relay_db: str) -> None:
    """A listener backend that stops answering (SIGSTOP) lets the age grow until the heartbeat query
    times out; the relay then reconnects and the age falls back."""
    with relay_process(relay_db) as relay:
        wait_until(lambda: relay.metric("relay_last_event_age_seconds") < 2, 10, "healthy age")
        pid = listener_pid(relay_db)
        os.kill(pid, signal.SIGSTOP)
        try:
            wait_until(lambda: relay.metric("relay_last_event_age_seconds") > 2.0, 10, "age grows")
            relay.wait_log("listener_lost", timeout=15)
        finally:
            os.kill(pid, signal.SIGCONT)
        wait_until(lambda: relay.metric("relay_last_event_age_seconds") < 2.0, 15, "age recovers")
        assert relay.metric("relay_listener_reconnects_total") >= 1
    # psycopg logs the cancelled query through stdlib logging: rendered as JSON too.
    assert [] == [line for line in relay.lines if line.get("event") == "raw"]


def test_readyz_flips_while_postgres_is_down(private_pg: PgServer) -> None:
    """/readyz answers 503 while the database is unreachable and 200 again after it comes back."""
    dsn = private_pg.dsn()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(install_script())
    with relay_process(dsn) as relay:
        assert 200 == relay.http("/readyz")[0]
        private_pg.stop()
        wait_until(lambda: relay.http("/readyz")[0] == 503, 15, "readyz 503")
        assert (200, "ok\n") == relay.http("/healthz")  # the process itself still serves
        assert 0.0 == relay.metric("relay_listener_up")
        private_pg.start()
        wait_until(lambda: relay.http("/readyz")[0] == 200, 30, "readyz 200 again")


def test_refused_token_is_counted_by_reason(relay_db: str) -> None:
    """A refused token increments relay_auth_failures_total with its reason label only."""
    with relay_process(relay_db) as relay:
        client = Client(relay.url)
        client.send({"type": "auth", "token": token("alice", ttl=-100)})
        with pytest.raises(ConnectionClosed):
            client.recv(5)
        assert 1.0 == relay.metric("relay_auth_failures_total", 'reason="expired"')
        _, body = relay.scrape()
        assert "alice" not in body  # labels never carry a user id


def test_delivery_metrics_move_with_events(relay_db: str) -> None:
    """An event delivered to one client counts one event, one delivery and one lag observation."""
    with relay_process(relay_db) as relay:
        client = Client(relay.url, "alice")
        client.ready()
        client.subscribe("s", "generations")
        with psycopg.connect(relay_db, autocommit=True) as conn:
            conn.execute("INSERT INTO generations (user_id, project_id) VALUES ('alice', 'p')")
        client.events(1)
        wait_until(lambda: relay.metric("relay_deliveries_total") == 1.0, 5, "delivery counted")
        assert 1.0 == relay.metric("relay_events_total", 'op="INSERT",table="generations"')
        assert 1.0 == relay.metric("relay_delivery_lag_seconds_count")
        websocket = 'transport="websocket"'
        assert 1.0 == relay.metric("relay_connections", websocket)
        assert 1.0 == relay.metric("relay_connections_total", websocket)
        assert 0.0 == relay.metric("relay_connections", 'transport="sse"')


def test_separate_metrics_port_serves_metrics_and_hides_them_on_the_main_port(
    relay_db: str,
) -> None:
    """With RELAY_METRICS_PORT, /metrics answers there (with health) and 404 on the public port."""
    metrics_port = free_port()
    with relay_process(relay_db, {"RELAY_METRICS_PORT": str(metrics_port)}) as relay:
        assert metrics_port == relay.metrics_port
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as resp:
            assert b"relay_listener_up 1.0" in resp.read()
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/readyz", timeout=5) as resp:
            assert 200 == resp.status
        assert 404 == relay.http("/metrics")[0]
        assert 200 == relay.http("/healthz")[0]


def test_metrics_port_defaults_to_9480_and_must_differ_from_the_main_port() -> None:
    """By default /metrics has a port of its own, 9480; the same port as RELAY_PORT is refused."""
    assert 9480 == Settings.load({"RELAY_DSN": "x", "RELAY_JWT_SECRET": SECRET}).metrics_port
    with pytest.raises(ConfigError, match="RELAY_METRICS_PORT must differ from RELAY_PORT"):
        Settings.load({"RELAY_DSN": "x", "RELAY_JWT_SECRET": SECRET, "RELAY_PORT": "9480"})


def test_metrics_on_the_main_port_when_metrics_port_is_0(relay_db: str) -> None:
    """RELAY_METRICS_PORT=0 serves /metrics on the main port, as before the separate default."""
    with relay_process(relay_db, {"RELAY_METRICS_PORT": "0"}) as relay:
        assert relay.metrics_port is None
        status, body = relay.http("/metrics")
        assert 200 == status
        assert "relay_listener_up 1.0" in body
