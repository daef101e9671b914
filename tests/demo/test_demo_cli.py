"""`relay demo` as a user runs it: a child process, its printed links, Ctrl-C, kill -9."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import jwt
import pytest

from relay.demo.pgserver import PgServer
from tests.support.paths import REPO
from tests.support.processes import free_port

pytestmark = pytest.mark.pg


class Demo:
    """`relay demo` in a child process, in its own working directory; output collected."""

    def __init__(self, cwd: Path, *args: str) -> None:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("RELAY_") or k == "RELAY_PG_BINDIR"}  # fmt: skip
        env["RELAY_SQL_DIR"] = str(REPO / "sql")
        env["RELAY_CLIENT_DIR"] = str(REPO / "clients" / "js" / "src")
        self.port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "relay.cli", "demo", "--port", str(self.port), "--no-simulator",
             *args],
            cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        self.lines: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))
            self._queue.put(line)

    def links(self, timeout: float) -> dict[str, str]:
        """The printed links by label (page, alice, bob), once the 'stop:' line is out."""
        deadline = time.monotonic() + timeout
        while not any(line.strip().startswith("stop:") for line in self.lines):
            assert self.process.poll() is None, (
                f"demo exited {self.process.returncode}: {self.lines}"
            )
            assert time.monotonic() < deadline, f"no links within {timeout}s: {self.lines}"
            time.sleep(0.05)
        labelled = (line.strip().split(None, 1) for line in self.lines if line.startswith("  "))
        return {label.rstrip(":"): value for label, value in labelled}

    def get(self, path: str, timeout: float = 20.0, bearer: str = "") -> tuple[int, bytes]:
        """GET on the demo's port, retried until the relay listens."""
        deadline = time.monotonic() + timeout
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}")
        if bearer:
            request.add_header("Authorization", f"Bearer {bearer}")
        while True:
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    return response.status, response.read()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read()
            except OSError:
                assert self.process.poll() is None, f"demo exited: {self.lines}"
                assert time.monotonic() < deadline, f"port {self.port} not served: {self.lines}"
                time.sleep(0.1)

    def interrupt(self, timeout: float = 10.0) -> int:
        """Ctrl-C; the exit code, which must come within `timeout` seconds."""
        self.process.send_signal(signal.SIGINT)
        return self.process.wait(timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)


@contextmanager
def demo(cwd: Path, *args: str) -> Iterator[Demo]:
    run = Demo(cwd, *args)
    try:
        yield run
    finally:
        run.kill()


def postmaster_pid(folder: Path) -> int:
    return int((folder / ".relay-demo" / "pg" / "data" / "postmaster.pid").read_text().split()[0])


def alive(pid: int) -> bool:
    """Running: neither gone nor a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_demo_with_dsn_prints_links_serves_the_page_and_stops_on_ctrl_c(
    relay_db: str, tmp_path: Path
) -> None:
    """With --dsn: first a signed-in link per user, then the page URL; a working page and state, exit 0 on SIGINT."""
    with demo(tmp_path, "--dsn", relay_db) as run:
        links = run.links(timeout=30)
        page = f"http://127.0.0.1:{run.port}/"
        assert ["alice", "bob", "page", "stop"] == list(links)
        assert page == links["page"]
        secret = (tmp_path / ".relay-demo" / "jwt-secret").read_text().strip()
        for user in ("alice", "bob"):
            assert links[user].startswith(page + "?token=")
            claims = jwt.decode(links[user].split("?token=", 1)[1], secret, ["HS256"])
            assert user == claims["sub"]
        status, body = run.get("/")
        assert (200, True) == (status, b'src="/static/demo.js"' in body)
        assert 200 == run.get("/client.js")[0]
        token = links["alice"].split("?token=", 1)[1]
        status, body = run.get("/demo/state", bearer=token)
        state = json.loads(body)
        assert (200, "alice", 4) == (status, state["user"], len(state["thumbnails"]))
        started = time.monotonic()
        assert 0 == run.interrupt(timeout=10)
        assert time.monotonic() - started < 10
    assert not (tmp_path / ".relay-demo" / "pg").exists()


def test_embedded_demo_starts_and_recovers_from_an_orphaned_server(tmp_path: Path) -> None:
    """Without --dsn: PostgreSQL under .relay-demo/; after kill -9 the next run stops the orphan and starts."""
    folder = tmp_path / ".relay-demo"
    try:
        with demo(tmp_path) as first:
            first.links(timeout=60)
            assert 200 == first.get("/")[0]
            assert (folder / "pg" / "data" / "PG_VERSION").is_file()
            orphan = postmaster_pid(tmp_path)
            first.process.send_signal(signal.SIGKILL)
            first.process.wait(10)
        assert alive(orphan), "the killed demo's PostgreSQL should have outlived it"

        with demo(tmp_path) as second:
            second.links(timeout=60)
            assert not alive(orphan)
            assert 200 == second.get("/")[0]
            assert 200 == second.get("/client.js")[0]
            assert postmaster_pid(tmp_path) != orphan
            assert 0 == second.interrupt(timeout=10)
            assert "PostgreSQL stopped" == second.lines[-1]
    finally:
        PgServer(folder / "pg").stop_orphan()
