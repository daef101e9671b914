"""The JavaScript client (clients/js) against a real relay: runs its Node test suite."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tests.support.paths import REPO
from tests.support.processes import relay_process
from tests.support.tokens import SECRET

pytestmark = pytest.mark.pg

JS_DIR = REPO / "clients" / "js"


def _tool(name: str) -> str:
    """The path of a Node tool; missing fails under CI and skips elsewhere."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not on PATH: the JavaScript client cannot be tested"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def _npm_ci() -> None:
    """Installs the client's dev dependencies from its lock file, once."""
    if (JS_DIR / "node_modules").is_dir():
        return
    result = subprocess.run(
        [_tool("npm"), "ci", "--no-audit", "--no-fund"],
        cwd=JS_DIR,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, f"npm ci failed:\n{result.stdout}\n{result.stderr}"


@pytest.mark.timeout(420)
def test_js_client_suite_passes_against_a_real_relay(relay_db: str) -> None:
    """`node --test clients/js/test/` passes with RELAY_URL pointing at a live relay."""
    node = _tool("node")
    _npm_ci()
    with relay_process(relay_db) as relay:
        env = {
            **os.environ,
            "RELAY_URL": f"http://127.0.0.1:{relay.port}",
            "RELAY_JWT_SECRET": SECRET,
            "RELAY_DSN": relay_db,
            "RELAY_PYTHON": sys.executable,
        }
        result = subprocess.run(
            [node, "--test", "test/"],
            cwd=JS_DIR,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"node --test failed:\n{output}"
    assert "# fail 0" in output, output
    assert "RELAY_URL is not set" not in output, output  # the relay tests really ran
