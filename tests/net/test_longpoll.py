"""Long-polling (/v1/poll) against a real relay: catch-up, live waits, filters, resets, CORS."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

import psycopg
import pytest

from tests.support.clients import poll
from tests.support.processes import RelayProcess, relay_process
from tests.support.tokens import token

pytestmark = pytest.mark.pg


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
