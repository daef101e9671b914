"""Bounds against hostile clients: filter memory per connection, the inbound frame budget, and
repeated headers, pinned in the pure core and against a real relay process and real Postgres."""

from __future__ import annotations

import base64
import gc
import json
import os
import socket
import struct
import time
import tracemalloc
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from relay.core.filters import RowFilter
from relay.core.inbound import InboundBudget, InboundLimits
from relay.core.session import Limits
from relay.ops.heap import HeapTrim
from tests.core.test_session import authed, frames, send
from tests.support.clients import Client
from tests.support.factories import make_event
from tests.support.processes import RelayProcess, relay_process
from tests.support.tokens import token

# --- the filter cost model --------------------------------------------------------------------

VALUE_SHAPES: dict[str, Any] = {
    "float": lambda i: i + 0.1,
    "big float": lambda i: 1e20 * (1 + i / 1000),
    "small int": lambda i: i,
    "int": lambda i: 10**12 + i,
    "huge int": lambda i: 10**600 + i,
    "ascii": lambda i: f"v{i:06d}",
    "latin-1": lambda i: f"é{i}",
    "bmp": lambda i: f"中{i}",
    "astral": lambda i: "\U0001f600" * 3 + str(i),
    "null": lambda i: None,
    "bool": lambda i: i % 2 == 0,
}


def measured(texts: list[str]) -> tuple[int, int]:
    """(bytes tracemalloc sees held by the filters parsed from these JSON texts, their cost).

    The JSON is decoded under tracing too: a filter keeps the decoded strings and numbers."""
    gc.collect()
    tracemalloc.start()
    try:
        parsed = [RowFilter.parse(json.loads(text)) for text in texts]
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return held, sum(f.cost for f in parsed)


@pytest.mark.parametrize("shape", sorted(VALUE_SHAPES))
def test_filter_cost_is_at_least_the_memory_held_and_tracks_it(shape: str) -> None:
    """For every value type and in-list size, cost >= the bytes tracemalloc sees, and <= 3x them."""
    value = VALUE_SHAPES[shape]
    for size in (1, 2, 5, 9, 17, 33, 65, 100):
        filter_ = {f"col_{c}": {"in": [value(i) for i in range(size)]} for c in range(16)}
        held, cost = measured([json.dumps(filter_, ensure_ascii=False)] * 10)
        assert held <= cost <= 3 * held, (shape, size, held, cost)


def test_float_keys_compare_as_jsonb_numbers() -> None:
    """Float keys kept as floats still compare by decimal value with ints and Decimals."""
    cases = [
        (0.1, Decimal("0.1"), True),
        (0.1, Decimal("0.1000000000000000055511151231257827021181583404541015625"), False),
        (1e30, 10**30, True),
        (1e30, Decimal("1E+30"), True),
        (float(2**53), 2**53 + 1, False),
        (2**53 + 1, Decimal(2**53 + 1), True),
        (2.5, Decimal("2.50"), True),
        (3, Decimal("3.0"), True),
        (0.5, 0.5, True),
    ]
    assert [expected for _, _, expected in cases] == [
        RowFilter.parse({"a": {"in": [f, "x"]}}).matches(make_event(1, row={"a": r}))
        for f, r, _ in cases
    ]


def test_attack_shape_costs_a_third_of_what_it_did() -> None:
    """7 columns x 100 float values (the reported attack) hold under 75 bytes a value now (189 before)."""
    texts = [
        json.dumps({f"c{c}": {"in": [i / 7 + k for i in range(100)]} for c in range(7)})
        for k in range(20)
    ]
    held, cost = measured(texts)
    assert held < 20 * 700 * 75, held
    assert held <= cost


# --- the per-connection filter budget in the protocol core --------------------------------------


def wide_filter(values: int) -> dict[str, Any]:
    return {"title": {"in": [f"t{i:04d}" for i in range(values)]}}


def test_subscribe_past_the_filter_budget_is_refused_with_its_own_code() -> None:
    """A subscribe whose filter would take the connection past its budget gets error
    filter_budget_exceeded with its id and is counted; unsubscribing gives the budget back."""
    cost = RowFilter.parse(wide_filter(50)).cost
    limits: list[str] = []
    session = authed()
    session.limits = Limits(max_filter_bytes=2 * cost)
    session.on_limit = limits.append
    for sub_id in ("a", "b", "c"):
        send(session, {"type": "subscribe", "id": sub_id, "table": "thumbnails",
                       "filter": wide_filter(50)})  # fmt: skip
    sent = frames(session)
    assert ["subscribed", "subscribed", "error"] == [f["type"] for f in sent]
    assert {
        "type": "error",
        "code": "filter_budget_exceeded",
        "id": "c",
        "message": f"this filter needs about {cost} bytes and this connection's filters hold "
        f"{2 * cost} of {2 * cost} (RELAY_MAX_FILTER_BYTES): use fewer or smaller filters",
        "request": "subscribe",
    } == sent[-1]
    assert ["filter_bytes"] == limits
    send(session, {"type": "subscribe", "id": "d", "table": "thumbnails"})  # no filter: free
    send(session, {"type": "unsubscribe", "id": "a"})
    send(session, {"type": "subscribe", "id": "c", "table": "thumbnails",
                   "filter": wide_filter(50)})  # fmt: skip
    assert ["subscribed", "unsubscribed", "subscribed"] == [f["type"] for f in frames(session)]


# --- the inbound budget in the pure core --------------------------------------------------------


def test_inbound_budget_allows_the_burst_then_the_rate() -> None:
    """Twice the frame rate passes at once; then one frame per 1/rate seconds."""
    budget = InboundBudget(InboundLimits(frame_rate=10, byte_rate=10**6), now=0.0)
    assert 20 == sum(budget.take(1, 0.0) for _ in range(25))
    assert (False, True, False) == (
        budget.take(1, 0.05),
        budget.take(1, 0.1),
        budget.take(1, 0.1),
    )


def test_inbound_budget_counts_bytes_and_always_fits_one_largest_frame() -> None:
    """Bytes refill at byte_rate up to max(2x rate, one largest frame); a refused frame spends nothing."""
    limits = InboundLimits(frame_rate=1000, byte_rate=100, max_frame_bytes=1000)
    budget = InboundBudget(limits, now=0.0)
    assert (True, False) == (budget.take(1000, 0.0), budget.take(1, 0.0))
    assert (False, True) == (budget.take(200, 1.0), budget.take(100, 1.0))
    assert 1000.0 == limits.byte_burst


def test_inbound_budget_ignores_a_clock_going_back() -> None:
    """Time going backwards refills nothing (and takes nothing back)."""
    budget = InboundBudget(InboundLimits(frame_rate=1, byte_rate=10), now=10.0)
    assert (True, True, False, False) == (
        budget.take(1, 10.0),
        budget.take(1, 10.0),
        budget.take(1, 5.0),
        budget.take(1, 5.5),
    )


def test_heap_trim_waits_for_enough_released_and_the_interval() -> None:
    """A trim is due once enough filter bytes were released, then not again within the interval."""
    trim = HeapTrim(after_bytes=100, interval=10.0)
    trim.released(99)
    assert not trim.due(0.0)
    trim.released(1)
    assert (True, 0) == (trim.due(0.0), trim.pending)
    trim.released(500)
    assert (False, True) == (trim.due(9.9), trim.due(10.0))


# --- against a real relay -------------------------------------------------------------------


@pytest.fixture
def wide_db(relay_db: str) -> str:
    """relay_db plus public.wide: 16 text columns c0..c15, owned by `owner`, tracked."""
    columns = ", ".join(f"c{i} text" for i in range(16))
    with psycopg.connect(relay_db, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE public.wide (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
            f" owner text NOT NULL, {columns})"
        )
        conn.execute("SELECT relay.track('public.wide', owner_column => 'owner')")
    return relay_db


def vm_rss(pid: int) -> int:
    """The process's resident memory in bytes, from /proc/<pid>/status."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def costly_filter(k: int) -> dict[str, Any]:
    """The shape that holds the most memory per byte of cost: 16 columns of astral strings."""
    return {f"c{c}": {"in": [f"\U0001f600\U0001f600\U0001f600{k}.{c}.{i}" for i in range(8)]}
            for c in range(16)}  # fmt: skip


def fill_budget(client: Client, budget: int) -> int:
    """Subscribes costly filters until refused; returns how many were accepted."""
    accepted = 0
    while True:
        client.send(json.dumps({"type": "subscribe", "id": f"s{accepted}", "table": "wide",
                                "filter": costly_filter(accepted)}, ensure_ascii=False))  # fmt: skip
        frame = client.recv()
        if frame["type"] == "error":
            assert ("filter_budget_exceeded", f"s{accepted}") == (frame["code"], frame["id"])
            return accepted
        assert ("subscribed", f"s{accepted}") == (frame["type"], frame["id"])
        accepted += 1
        assert accepted * RowFilter.parse(costly_filter(0)).cost <= budget


class ForwardedClient(Client):
    """A Client whose handshake says, through the trusted proxy 127.0.0.1, it comes from address."""

    def __init__(self, url: str, user: str, address: str) -> None:
        self.ws = ws_connect(
            url,
            additional_headers={
                "Authorization": f"Bearer {token(user)}",
                "X-Forwarded-For": address,
            },
            open_timeout=10,
            legacy=True,
        )
        self.user = user
        self.frames = []


PER_IP = 20
ADDRESSES = ("203.0.113.1", "203.0.113.2")


@pytest.mark.pg
def test_connections_at_the_filter_budget_keep_rss_within_the_documented_bound(
    wide_db: str,
) -> None:
    """Every connection the per-address limit allows, from two addresses, each filling its filter
    budget with the costliest shape: RSS grows by at most connections x (budget + 64 KiB)."""
    budget = 256 * 1024
    env = {
        "RELAY_MAX_CONNECTIONS_PER_IP": str(PER_IP),
        "RELAY_TRUSTED_PROXIES": "127.0.0.1",
        "RELAY_LOG_LEVEL": "info",
    }
    per_filter = RowFilter.parse(costly_filter(0)).cost
    with relay_process(wide_db, env) as relay:
        assert relay.process is not None
        pid = relay.process.pid
        warm = Client(relay.url, "warm")
        warm.ready()
        fill_budget(warm, budget)
        warm.close()
        time.sleep(1.0)
        base = vm_rss(pid)
        clients = []
        for address in ADDRESSES:
            for i in range(PER_IP):
                client = ForwardedClient(relay.url, f"u{i}", address)
                client.ready()
                assert budget // per_filter == fill_budget(client, budget)
                clients.append(client)
            with pytest.raises(InvalidStatus) as refused:
                ForwardedClient(relay.url, "one-too-many", address)
            assert 429 == refused.value.response.status_code
        loaded = vm_rss(pid)
        growth = loaded - base
        bound = len(clients) * (budget + 64 * 1024)
        print(f"base {base / 2**20:.1f} MiB, loaded {loaded / 2**20:.1f} MiB, growth per "
              f"connection {growth / len(clients) / 1024:.0f} KiB, bound {bound / 2**20:.1f} MiB")  # fmt: skip
        assert growth <= bound
        assert len(clients) == relay.metric("relay_client_limits_total", 'limit="filter_bytes"') - 1
        for client in clients:
            client.close()


def masked(opcode: int, payload: bytes) -> bytes:
    """One client-to-server frame (FIN, masked), as RFC 6455 section 5.2 lays it out."""
    mask = b"\x11\x22\x33\x44"
    size = len(payload)
    if size < 126:
        head = bytes([0x80 | opcode, 0x80 | size])
    else:
        head = bytes([0x80 | opcode, 0x80 | 126]) + struct.pack("!H", size)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def raw_websocket(relay: RelayProcess, user: str) -> socket.socket:
    """A bare TCP websocket past its handshake, for frames no client library would send."""
    sock = socket.create_connection(("127.0.0.1", relay.port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            "GET /v1/ws HTTP/1.1\r\nHost: relay\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Authorization: Bearer {token(user)}\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """(opcode, payload) of each complete server frame (unmasked) in data."""
    frames, at = [], 0
    while at + 2 <= len(data):
        opcode, size = data[at] & 0x0F, data[at + 1] & 0x7F
        at += 2
        if size == 126:
            (size,) = struct.unpack("!H", data[at : at + 2])
            at += 2
        elif size == 127:
            (size,) = struct.unpack("!Q", data[at : at + 8])
            at += 8
        if at + size > len(data):
            break
        frames.append((opcode, data[at : at + size]))
        at += size
    return frames


def flood_until_closed(
    sock: socket.socket, frame: bytes, seconds: float
) -> list[tuple[int, bytes]]:
    """Sends frame as fast as the socket takes it, reading what comes back, until the relay
    closes the TCP connection or `seconds` pass; returns the frames the relay sent."""
    sock.settimeout(0.0)
    received = b""
    deadline = time.monotonic() + seconds
    batch = frame * 50
    while time.monotonic() < deadline:
        try:
            sock.send(batch)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:  # reset or broken pipe: the relay is gone
            break
        try:
            chunk = sock.recv(1 << 16)
        except (BlockingIOError, InterruptedError):
            continue
        except OSError:
            break
        if not chunk:
            break
        received += chunk
    return server_frames(received)


CLOSE_RATE_LIMITED = struct.pack("!H", 1008) + b"rate_limited"


@pytest.mark.pg
def test_a_frame_flood_is_closed_with_1008_while_another_client_keeps_receiving(
    relay_db: str,
) -> None:
    """Flooding 125-byte pings (answered inside websockets) or 63 KB JSON pings past the inbound
    budget gets close 1008 rate_limited and a counted metric; another client's events flow."""
    with relay_process(relay_db, {"RELAY_LOG_LEVEL": "info"}) as relay:
        victim = Client(relay.url, "victim")
        victim.ready()
        victim.subscribe("v", "thumbnails")
        pings = raw_websocket(relay, "pinger")
        texts = raw_websocket(relay, "texter")
        big_ping = json.dumps({"type": "ping", "pad": "x" * 63_000}).encode()
        ping_frames = flood_until_closed(pings, masked(0x9, b"p" * 125), 10.0)
        text_frames = flood_until_closed(texts, masked(0x1, big_ping), 10.0)
        with psycopg.connect(relay_db, autocommit=True) as conn:
            conn.execute("INSERT INTO thumbnails (user_id, project_id) VALUES ('victim', 'p')")
        assert "INSERT" == victim.events(1)[0]["op"]
        # The burst is 200 frames and 512 KiB (8 big pings). websockets answers the pings of a
        # whole socket read (at most 256 KiB: 2001 pings of 131 bytes) before the budget sees
        # them, so the close comes at the end of the read that went past it; then nothing.
        pongs = [f for f in ping_frames if f[0] == 0xA]
        assert (0x8, CLOSE_RATE_LIMITED) == ping_frames[-1]
        assert [0x1] + [0xA] * len(pongs) + [0x8] == [op for op, _ in ping_frames]
        assert 200 <= len(pongs) <= 200 + 2001
        answers = [json.loads(p)["type"] for op, p in text_frames if op == 0x1]
        assert ["ready"] + ["pong"] * (len(answers) - 1) == answers
        assert len(answers) - 1 <= 16
        assert (0x8, CLOSE_RATE_LIMITED) == text_frames[-1]
        assert 2.0 == relay.metric("relay_client_limits_total", 'limit="inbound_rate"')
        relay.wait_log("closing", code=1008, reason="rate_limited")
        pings.close()
        texts.close()


def raw_request(relay: RelayProcess, path: str, headers: list[tuple[str, str]]) -> tuple[int, str]:
    """A GET with exactly these header lines (repeats included); (status, body)."""
    lines = [f"GET {path} HTTP/1.1", "Host: relay", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers]
    with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


WS_HEADERS = [
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ("Sec-WebSocket-Version", "13"),
]


@pytest.mark.pg
def test_repeated_origin_or_authorization_headers_answer_400_without_a_traceback(
    relay_db: str,
) -> None:
    """Two Origin or two Authorization headers on /v1/ws or /v1/poll: 400 naming the header,
    counted as refused (bad_header), and no error or traceback in the relay's log."""
    bearer = f"Bearer {token('alice')}"
    with relay_process(relay_db, {"RELAY_LOG_LEVEL": "info"}) as relay:
        answers = {}
        for path, extra in (("/v1/ws", WS_HEADERS), ("/v1/poll?table=thumbnails&wait=0", [])):
            for name, value in (("Origin", "https://app.example"), ("Authorization", bearer)):
                headers = [*extra, (name, value), (name, value)]
                answers[path[:8], name] = raw_request(relay, path, headers)
        assert {
            (path, name): (400, f"more than one {name} header\n")
            for path in ("/v1/ws", "/v1/poll")
            for name in ("Origin", "Authorization")
        } == answers
        assert 4.0 == relay.metric("relay_handshakes_refused_total", 'reason="bad_header"')
        assert (200, "ok\n") == relay.http("/healthz")
        noisy = [
            line
            for line in relay.lines
            if line.get("level") in ("error", "critical")
            or "Traceback" in json.dumps(line)
            or line.get("event") == "raw"
        ]
        assert [] == noisy


@pytest.mark.pg
def test_repeated_x_forwarded_for_headers_read_as_one_list(relay_db: str) -> None:
    """Repeated X-Forwarded-For lines are one list (RFC 9110 5.3): the address is taken from the
    right of the last line, as a proxy that appends a line of its own means it."""
    env = {"RELAY_MAX_CONNECTIONS_PER_IP": "1", "RELAY_TRUSTED_PROXIES": "127.0.0.1"}
    with relay_process(relay_db, env) as relay:
        path = "/v1/ws"
        held = socket.create_connection(("127.0.0.1", relay.port), timeout=10)
        lines = ["GET /v1/ws HTTP/1.1", "Host: relay"] + [f"{n}: {v}" for n, v in WS_HEADERS]
        lines += ["X-Forwarded-For: 198.51.100.9", "X-Forwarded-For: 203.0.113.7"]
        held.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        assert held.recv(12) == b"HTTP/1.1 101"
        assert (429, "too many connections\n") == raw_request(
            relay, path, [*WS_HEADERS, ("X-Forwarded-For", "203.0.113.7")]
        )
        with ws_connect(
            relay.url, additional_headers={"X-Forwarded-For": "198.51.100.9"}, open_timeout=5
        ):
            pass
        held.close()
