"""Slowloris against a real relay: half-open handshakes are bounded per address and in total,
cut at the request deadline, kept within the file budget, and logged without flooding."""

from __future__ import annotations

import contextlib
import resource
import socket
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest

from relay.app import ACCEPT_BURST, FD_RESERVE, METRICS_MAX_SOCKETS
from tests.support.clients import Client
from tests.support.processes import RelayProcess, relay_process
from tests.support.waiting import wait_until

pytestmark = pytest.mark.pg

# A websocket handshake's start, never finished (no blank line): the relay waits for the rest.
PARTIAL_REQUEST = b"GET /v1/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
DEADLINE = 4.0  # RELAY_REQUEST_TIMEOUT in these tests


class Stallers:
    """Raw sockets that send a partial request and stall; a thread notes when each is closed
    by the relay (EOF or reset), as seconds after its connect."""

    def __init__(self, port: int, sources: list[str], per_source: int) -> None:
        self.sockets: list[socket.socket] = []
        self.connected_at: list[float] = []
        for source in sources:
            for _ in range(per_source):
                sock = socket.socket()
                sock.bind((source, 0))
                sock.connect(("127.0.0.1", port))
                self.connected_at.append(time.monotonic())
                with contextlib.suppress(OSError):  # refused at accept already
                    sock.sendall(PARTIAL_REQUEST)
                sock.setblocking(False)
                self.sockets.append(sock)
        self.closed_after: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.is_set() and len(self.closed_after) < len(self.sockets):
            for index, sock in enumerate(self.sockets):
                if index in self.closed_after:
                    continue
                try:
                    data = sock.recv(1)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    self.closed_after[index] = time.monotonic() - self.connected_at[index]
            time.sleep(0.02)

    @property
    def closed(self) -> int:
        return len(self.closed_after)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for sock in self.sockets:
            sock.close()


@contextlib.contextmanager
def stallers(port: int, sources: list[str], per_source: int) -> Iterator[Stallers]:
    attack = Stallers(port, sources, per_source)
    try:
        yield attack
    finally:
        attack.close()


def add_thumbnail(dsn: str, user: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO thumbnails (user_id, project_id, title) VALUES (%s, 'p1', 't')", (user,)
        )


def subscribed_client(relay: RelayProcess, user: str) -> Client:
    client = Client(relay.url, user)
    client.ready()
    client.subscribe("s", "thumbnails")
    return client


def events_since(relay: RelayProcess, start: int, event: str) -> list[dict[str, object]]:
    return [line for line in relay.lines[start:] if line.get("event") == event]


def test_half_open_handshakes_beyond_the_per_address_bound_are_closed_and_the_rest_cut_at_the_deadline(
    relay_db: str,
) -> None:
    """200 stalled handshakes from one address: 20 (the bound) are held until the 4 s request
    deadline, 180 closed at accept; meanwhile a client on another address receives its event,
    a new client connects and /readyz answers; 10 warning lines, then one count of the rest."""
    env = {"RELAY_REQUEST_TIMEOUT": f"{DEADLINE}s", "RELAY_MAX_HANDSHAKES_PER_IP": "20"}
    with relay_process(relay_db, env) as relay:
        client = subscribed_client(relay, "alice")
        start = len(relay.lines)
        with stallers(relay.port, ["127.0.0.2"], 200) as attack:
            wait_until(lambda: attack.closed >= 180, 10, "180 handshakes refused")
            # Meanwhile, from 127.0.0.1 (an address of its own):
            assert (200, "ready\n") == relay.http("/readyz")
            assert (200, "ready\n") == relay.http("/readyz", relay.metrics_port)
            add_thumbnail(relay_db, "alice")
            assert "thumbnails" == client.events(1)[0]["table"]
            Client(relay.url, "bob").ready()
            wait_until(lambda: attack.closed == 200, 30, "stalled handshakes closed")
            held = sorted(attack.closed_after.values())[-20:]
        refused = relay.metric("relay_handshakes_refused_total", 'reason="ip_handshakes"')
        timed_out = relay.metric("relay_handshakes_refused_total", 'reason="request_timeout"')
        assert (180.0, 20.0) == (refused, timed_out)
        assert all(after >= DEADLINE for after in held)  # the held ones: not before the deadline
        assert 0.0 == relay.metric("relay_handshakes_in_progress")
        assert 10 == len(events_since(relay, start, "socket_refused"))
        summary = relay.wait_log("log_suppressed", 15, key="relay:socket_refused")
        assert 190 == summary["count"]
        assert len(relay.lines) - start < 40  # the relay's whole stderr over the attack


def test_handshakes_from_a_trusted_proxy_count_only_against_the_total(relay_db: str) -> None:
    """Stalled handshakes from a trusted proxy's address are not cut at the per-address bound
    (its clients differ), only at RELAY_MAX_HANDSHAKES: 50 of 60 held, 10 refused."""
    env = {
        "RELAY_REQUEST_TIMEOUT": f"{DEADLINE}s",
        "RELAY_MAX_HANDSHAKES_PER_IP": "5",
        "RELAY_MAX_HANDSHAKES": "50",
        "RELAY_TRUSTED_PROXIES": "127.0.0.3/32",
    }
    with relay_process(relay_db, env) as relay, stallers(relay.port, ["127.0.0.3"], 60) as attack:
        wait_until(lambda: attack.closed >= 10, 10, "10 handshakes refused")
        wait_until(lambda: attack.closed == 60, 30, "stalled handshakes closed")
        assert 10.0 == relay.metric("relay_handshakes_refused_total", 'reason="handshakes"')
        assert 50.0 == relay.metric("relay_handshakes_refused_total", 'reason="request_timeout"')
        assert 0.0 == relay.metric("relay_handshakes_refused_total", 'reason="ip_handshakes"')


NOFILE = 512
# The reserve: app.FD_RESERVE, the main port's accept burst, the metrics port's sockets and
# accept burst, the replay pool (8).
BUDGET = NOFILE - (FD_RESERVE + ACCEPT_BURST + 2 * METRICS_MAX_SOCKETS + 8)


def _low_nofile() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


def test_at_the_file_limit_existing_clients_and_readyz_keep_working(relay_db: str) -> None:
    """With 512 file descriptors, 500 stalled sockets from 20 addresses: the relay warns at
    start, holds its budget (276) less one client and closes the rest at accept, never meeting
    EMFILE; the open client still receives events, /readyz on the metrics port answers, and the
    log stays short."""
    env = {"RELAY_REQUEST_TIMEOUT": "60s"}  # the held sockets stay held while this test looks
    with relay_process(relay_db, env, preexec_fn=_low_nofile) as relay:
        warning = relay.wait_log("file_limit_low")
        assert (NOFILE, BUDGET) == (warning["nofile"], warning["sockets"])
        client = subscribed_client(relay, "alice")
        start = len(relay.lines)
        sources = [f"127.0.0.{n}" for n in range(2, 22)]
        with stallers(relay.port, sources, 25) as attack:
            wait_until(lambda: attack.closed >= 500 - (BUDGET - 1), 10, "sockets refused")
            assert (200, "ready\n") == relay.http("/readyz", relay.metrics_port)
            add_thumbnail(relay_db, "alice")
            assert "thumbnails" == client.events(1)[0]["table"]
            refused = relay.metric("relay_handshakes_refused_total", 'reason="sockets"')
            assert 500.0 - (BUDGET - 1) == refused
            assert float(BUDGET - 1) == relay.metric("relay_handshakes_in_progress")
        lines = relay.lines[start:]
        assert not [line for line in lines if "out of system resource" in str(line)]
        assert 10 == len(events_since(relay, start, "socket_refused"))
        assert len(lines) < 40
