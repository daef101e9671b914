"""The JavaScript packages (clients/js, clients/react) against a real relay: runs their Node
test suites."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.node import node_tool, npm_ci
from tests.support.paths import REPO
from tests.support.processes import relay_process
from tests.support.tokens import SECRET

pytestmark = pytest.mark.pg

JS_DIR = REPO / "clients" / "js"
REACT_DIR = REPO / "clients" / "react"


def _suite_passes(relay_db: str, folder: Path) -> None:
    """`npm test` in `folder` passes with RELAY_URL pointing at a live relay."""
    npm = node_tool("npm")
    node_tool("node")
    npm_ci(JS_DIR)  # clients/react's tests use clients/js's test helpers, and `ws` with them
    npm_ci(folder)
    with relay_process(relay_db) as relay:
        env = {
            **os.environ,
            "RELAY_URL": f"http://127.0.0.1:{relay.port}",
            "RELAY_JWT_SECRET": SECRET,
            "RELAY_DSN": relay_db,
            "RELAY_PYTHON": sys.executable,
        }
        result = subprocess.run(
            [npm, "test", "--silent"],
            cwd=folder,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"npm test failed in {folder.name}:\n{output}"
    assert "# fail 0" in output, output
    assert "RELAY_URL is not set" not in output, output  # the relay tests really ran


@pytest.mark.timeout(420)
def test_js_client_suite_passes_against_a_real_relay(relay_db: str) -> None:
    """`npm test` in clients/js (node --test) passes against a live relay."""
    _suite_passes(relay_db, JS_DIR)


@pytest.mark.timeout(420)
def test_react_bindings_suite_passes_against_a_real_relay(relay_db: str) -> None:
    """`npm test` in clients/react (component tests in happy-dom) passes against a live relay."""
    _suite_passes(relay_db, REACT_DIR)
