"""Log hygiene: JSON lines, no tokens or passwords, a connection's lines tied by its id."""

from __future__ import annotations

import psycopg
import pytest
from websockets.exceptions import ConnectionClosed

from tests.support.clients import Client
from tests.support.processes import relay_process
from tests.support.tokens import token

pytestmark = pytest.mark.pg


def test_logs_are_json_lines_without_tokens_or_passwords(relay_db: str) -> None:
    """Every log line is JSON; no token or DSN password appears, and a connection's lines share its id."""
    dsn = psycopg.conninfo.make_conninfo(relay_db, password="hunter2")  # trust auth ignores it
    with relay_process(dsn) as relay:
        secret_token = token("alice")
        client = Client(relay.url)
        client.send({"type": "auth", "token": secret_token})
        client.ready()
        client.close()
        relay.wait_log("authenticated")
        bad = Client(relay.url)
        bad.send({"type": "auth", "token": secret_token + "x"})
        with pytest.raises(ConnectionClosed):
            bad.recv(5)
        relay.wait_log("closing", reason="bad_signature")
    assert [] == [line for line in relay.lines if line.get("event") == "raw"]
    text = repr(relay.lines)
    assert "hunter2" not in text and secret_token not in text and "alice" not in text
    authenticated = relay.wait_log("authenticated")
    assert authenticated["conn"] and len(authenticated["user"]) == 16  # hashed user id
