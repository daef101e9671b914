"""A relay restart under an unmodified realtime-js app: the client's own reconnect rejoins, and
with pgrelay's opt-in resume (clients/js/src/supabase.js) the changes committed while no relay
ran are replayed exactly once."""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

import pytest

from tests.supabase.test_realtime_js import RELAY_ENV, SUITE, node_env, npm_ci
from tests.support.databases import write
from tests.support.node import node_tool
from tests.support.processes import free_port, relay_process

pytestmark = pytest.mark.pg


def insert(dsn: str, user: str, title: str) -> None:
    write(
        dsn,
        "INSERT INTO thumbnails (user_id, project_id, title) VALUES (%s, 'p1', %s)",
        params=(user, title),
    )


class App:
    """tests/supabase/scripts/restart.mjs, driven over its stdin and stdout."""

    def __init__(self, env: dict[str, str], user: str, mode: str) -> None:
        self.process = subprocess.Popen(
            [node_tool("node"), "scripts/restart.mjs", user, mode],
            cwd=SUITE, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip

    def read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line, "the app ended"
        value: dict[str, Any] = json.loads(line)
        return value

    def send(self, **command: Any) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        return self.read()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("resume", ["before", "while-down-1", "while-down-2", "after"]),
        ("plain", ["before", "after"]),  # Supabase's own semantics: a drop loses changes
    ],
)
def test_a_relay_restart_under_the_client(relay_db: str, mode: str, expected: list[str]) -> None:
    """The relay is killed and restarted on the same port: realtime-js reconnects and rejoins by
    itself; a resumable channel gets the changes committed meanwhile, once, in order."""
    npm_ci()
    env = {**RELAY_ENV, "RELAY_PORT": str(free_port())}
    with relay_process(relay_db, env) as first:
        app = App(dict(node_env(first, relay_db)), "restart-user", mode)
        try:
            assert {"subscribed": True} == app.read()
            insert(relay_db, "restart-user", "before")
            assert ["before"] == app.send(wait=1)["got"]
            first.kill()
            insert(relay_db, "restart-user", "while-down-1")
            insert(relay_db, "restart-user", "while-down-2")
            insert(relay_db, "someone-else", "not-mine")
            with relay_process(relay_db, env) as second:
                second.wait_log("listening")
                # Rejoined (statuses gain a second SUBSCRIBED) before the next write.
                for _ in range(100):
                    report = app.send(report=True)
                    if report["statuses"].count("SUBSCRIBED") >= 2:
                        break
                    time.sleep(0.2)
                insert(relay_db, "restart-user", "after")
                report = app.send(wait=len(expected))
                assert expected == report["got"]
        finally:
            app.close()
