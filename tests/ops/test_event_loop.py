"""RELAY_EVENT_LOOP: asyncio by default, uvloop when asked for and installed, one line otherwise."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import psycopg
import pytest

from relay.errors import ConfigError
from relay.ops.config import Settings
from tests.support.clients import Client
from tests.support.processes import relay_process

BASE = {"RELAY_DSN": "postgresql://localhost/app", "RELAY_INSECURE_DEV": "1"}


def test_the_default_loop_is_asyncio() -> None:
    """Unset, the relay runs on asyncio's own loop."""
    assert "asyncio" == Settings.load(BASE).event_loop


def test_an_unknown_loop_is_refused_with_its_variable() -> None:
    """Only asyncio and uvloop are loops the relay knows."""
    with pytest.raises(ConfigError, match="RELAY_EVENT_LOOP"):
        Settings.load({**BASE, "RELAY_EVENT_LOOP": "trio"})


@pytest.mark.skipif(importlib.util.find_spec("uvloop") is None, reason="uvloop not installed")
def test_uvloop_is_taken_when_installed() -> None:
    """With the extra installed, RELAY_EVENT_LOOP=uvloop is accepted."""
    assert "uvloop" == Settings.load({**BASE, "RELAY_EVENT_LOOP": "uvloop"}).event_loop


def test_uvloop_not_installed_fails_at_start_with_one_line() -> None:
    """`relay config check` (the settings `relay serve` loads first) with RELAY_EVENT_LOOP=uvloop
    where uvloop cannot be imported: exit 2 and one line naming the setting and the extra."""
    blocker = (  # a None entry in sys.modules makes `import uvloop` raise ImportError
        "import sys; sys.modules['uvloop'] = None;"
        " from relay.cli import main; sys.exit(main(['config', 'check']))"
    )
    result = subprocess.run(
        [sys.executable, "-c", blocker],
        env={**BASE, "RELAY_EVENT_LOOP": "uvloop", "PATH": ""},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert (2, "") == (result.returncode, result.stdout)
    assert [
        "relay: RELAY_EVENT_LOOP=uvloop, but uvloop is not installed: pip install "
        "'pgrelay[uvloop]' (or set RELAY_EVENT_LOOP=asyncio)"
    ] == result.stderr.splitlines()


@pytest.mark.pg
@pytest.mark.skipif(importlib.util.find_spec("uvloop") is None, reason="uvloop not installed")
def test_relay_serves_events_on_uvloop(relay_db: str) -> None:
    """`relay serve` with RELAY_EVENT_LOOP=uvloop: a client gets its events in order."""
    with relay_process(relay_db, {"RELAY_EVENT_LOOP": "uvloop"}) as relay:
        client = Client(relay.url, "alice")
        client.ready()
        client.subscribe("s", "generations")
        with psycopg.connect(relay_db, autocommit=True) as conn:
            for i in range(5):
                conn.execute(
                    "INSERT INTO generations (user_id, project_id) VALUES ('alice', %s)", (str(i),)
                )
        assert ["0", "1", "2", "3", "4"] == [
            e["row"]["project_id"] for e in client.events(5, timeout=10)
        ]
