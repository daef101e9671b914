"""Long-polling, the websocket kill switch, and handshake admission, against a real relay."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from tests.helpers import Client, RelayProcess, relay_process, token

pytestmark = pytest.mark.pg


@pytest.fixture
def relay(relay_db: str) -> Iterator[RelayProcess]:
    with relay_process(relay_db) as process:
        yield process


def poll(relay: RelayProcess, user: str | None, **params: Any) -> tuple[int, dict[str, Any]]:
    query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
    request = urllib.request.Request(f"http://127.0.0.1:{relay.port}/v1/poll?{query}")
    if user is not None:
        request.add_header("Authorization", f"Bearer {token(user)}")
    try:
        with urllib.request.urlopen(request, timeout=40) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def insert(dsn: str, user: str, project: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO generations (user_id, project_id) VALUES (%s, %s)", (user, project)
        )


def test_poll_without_since_returns_the_current_cursor_at_once(relay: RelayProcess) -> None:
    """A first poll establishes a position: no events, a cursor to continue from."""
    status, body = poll(relay, "alice", table="generations")
    assert (200, []) == (status, body["events"])
    assert isinstance(body["cursor"], str)


def test_poll_catches_up_then_waits_for_live_events(relay: RelayProcess, relay_db: str) -> None:
    """Missed events come at once; then a poll waits and returns the next live event, own rows only."""
    _, body = poll(relay, "alice", table="generations")
    insert(relay_db, "alice", "missed")
    insert(relay_db, "bob", "not-alice")
    time.sleep(0.5)
    _, caught_up = poll(relay, "alice", table="generations", since=body["cursor"])
    assert ["missed"] == [e["row"]["project_id"] for e in caught_up["events"]]
    assert "sub" not in caught_up["events"][0]

    later = threading.Timer(1.0, insert, (relay_db, "alice", "live"))
    later.start()
    started = time.monotonic()
    _, live = poll(relay, "alice", table="generations", since=caught_up["cursor"], wait=10)
    assert ["live"] == [e["row"]["project_id"] for e in live["events"]]
    assert time.monotonic() - started < 5.0
    _, empty = poll(relay, "alice", table="generations", since=live["cursor"], wait=0.5)
    assert [] == empty["events"]


def test_poll_applies_filters_and_ops(relay: RelayProcess, relay_db: str) -> None:
    """A poll's filter and ops select events exactly as a websocket subscription's do."""
    _, body = poll(relay, "alice", table="generations")
    insert(relay_db, "alice", "p1")
    insert(relay_db, "alice", "p2")
    time.sleep(0.5)
    _, got = poll(relay, "alice", table="generations", since=body["cursor"],
                  filter=json.dumps({"project_id": "p2"}), ops="INSERT")  # fmt: skip
    assert ["p2"] == [e["row"]["project_id"] for e in got["events"]]


@pytest.mark.parametrize(
    ("user", "params", "expected"),
    [
        (None, {"table": "generations"}, (401, "reason", "malformed")),
        ("alice", {"table": "nope"}, (400, "code", "unknown_table")),
        ("alice", {"table": "generations", "filter": "{bad"}, (400, "code", "bad_message")),
        ("alice", {"table": "generations", "since": "junk"}, (400, "code", "bad_cursor")),
    ],
)
def test_poll_refuses_bad_requests(
    relay: RelayProcess, user: str | None, params: dict[str, str], expected: tuple[int, str, str]
) -> None:
    """Bad tokens get 401 with the reason; bad requests 400 with the protocol's error code."""
    status, body = poll(relay, user, **params)
    assert expected == (status, expected[1], body[expected[1]])


def test_poll_with_a_foreign_cursor_gets_a_reset(relay: RelayProcess) -> None:
    """A cursor of another epoch is answered with an explicit reset and a cursor to go on from."""
    status, body = poll(relay, "alice", table="generations", since="f" * 32 + ".3")
    assert (200, {"reason": "epoch_changed"}) == (status, body["reset"])


def test_websocket_kill_switch_keeps_polling_working(relay_db: str) -> None:
    """RELAY_WEBSOCKETS=off refuses the websocket handshake with 503; long-polling still serves."""
    with relay_process(relay_db, {"RELAY_WEBSOCKETS": "off"}) as relay:
        with pytest.raises(InvalidStatus) as refused:
            ws_connect(relay.url, open_timeout=5, legacy=True)
        assert 503 == refused.value.response.status_code
        assert 200 == poll(relay, "alice", table="generations")[0]
        assert 1.0 == relay.metric("relay_handshakes_refused_total", 'reason="websockets_off"')


def test_origin_outside_the_allow_list_is_refused_and_counted(relay_db: str) -> None:
    """A handshake from an unlisted Origin gets 403 and is counted; a listed Origin connects."""
    env = {"RELAY_ALLOWED_ORIGINS": "https://app.example"}
    with relay_process(relay_db, env) as relay:
        with pytest.raises(InvalidStatus) as refused:
            ws_connect(relay.url, origin="https://evil.example", open_timeout=5, legacy=True)  # type: ignore[arg-type]
        assert 403 == refused.value.response.status_code
        ok = ws_connect(relay.url, origin="https://app.example", open_timeout=5, legacy=True)  # type: ignore[arg-type]
        ok.close()
        assert 1.0 == relay.metric("relay_handshakes_refused_total", 'reason="origin"')


def test_one_address_past_its_limit_is_refused_while_others_connect(relay_db: str) -> None:
    """Open connections per address are capped with 429; a connection from another address still works."""
    env = {"RELAY_MAX_CONNECTIONS_PER_IP": "3", "RELAY_TRUSTED_PROXIES": "127.0.0.1"}
    with relay_process(relay_db, env) as relay:
        mine = [
            ws_connect(
                relay.url,
                additional_headers={"X-Forwarded-For": "203.0.113.1"},
                open_timeout=5,
                legacy=True,
            )
            for _ in range(3)
        ]
        with pytest.raises(InvalidStatus) as refused:
            ws_connect(
                relay.url,
                additional_headers={"X-Forwarded-For": "203.0.113.1"},
                open_timeout=5,
                legacy=True,
            )
        assert 429 == refused.value.response.status_code
        other = Client(relay.url, "bob", header=True)
        other.ready()
        assert 1.0 == relay.metric("relay_handshakes_refused_total", 'reason="ip_connections"')
        for ws in mine:
            ws.close()
        time.sleep(0.3)
        ws_connect(
            relay.url,
            additional_headers={"X-Forwarded-For": "203.0.113.1"},
            open_timeout=5,
            legacy=True,
        ).close()


def test_poll_answers_a_cors_preflight_and_carries_cors_headers(relay_db: str) -> None:
    """A browser on an allowed origin can long-poll cross-origin: preflight 204, CORS on the answer."""
    with relay_process(relay_db, {"RELAY_ALLOWED_ORIGINS": "https://app.example"}) as relay:
        url = f"http://127.0.0.1:{relay.port}/v1/poll?table=generations"
        preflight = urllib.request.Request(url, method="OPTIONS")
        preflight.add_header("Origin", "https://app.example")
        preflight.add_header("Access-Control-Request-Headers", "authorization")
        with urllib.request.urlopen(preflight, timeout=5) as response:
            assert (204, "https://app.example", "Authorization") == (
                response.status,
                response.headers["Access-Control-Allow-Origin"],
                response.headers["Access-Control-Allow-Headers"],
            )
        get = urllib.request.Request(url, headers={"Origin": "https://app.example",
                                                   "Authorization": f"Bearer {token('alice')}"})  # fmt: skip
        with urllib.request.urlopen(get, timeout=5) as response:
            assert ("https://app.example", "no-store") == (
                response.headers["Access-Control-Allow-Origin"],
                response.headers["Cache-Control"],
            )


def test_poll_refuses_other_methods_with_405(relay: RelayProcess) -> None:
    """Only GET (and the CORS preflight) are served on /v1/poll."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{relay.port}/v1/poll?table=generations", method="DELETE"
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=5)
    assert 405 == refused.value.code
