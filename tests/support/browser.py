"""Headless Chromium for end-to-end tests, driven over the DevTools protocol: no driver, no
browser build of its own (Debian's chromium), killed with its process group afterwards."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

__all__ = ["DevTools", "chromium"]


class DevTools:
    """A minimal Chrome DevTools Protocol client: one browser socket, flat target sessions."""

    def __init__(self, url: str) -> None:
        self.ws: ClientConnection = ws_connect(
            url, max_size=None, open_timeout=10, proxy=None, legacy=True
        )
        self.next_id = 0
        self.targets: dict[str, str] = {}  # session id -> target id

    def call(
        self, method: str, params: dict[str, Any] | None = None, session: str | None = None
    ) -> dict[str, Any]:
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        self.ws.send(json.dumps(message))
        deadline = time.monotonic() + 15
        while True:
            reply = json.loads(self.ws.recv(max(0.01, deadline - time.monotonic())))
            if reply.get("id") == self.next_id:
                assert "error" not in reply, (method, reply)
                result: dict[str, Any] = reply["result"]
                return result

    def open(self, url: str) -> str:
        """A new page at this URL, 1280x860; returns its session id."""
        target = self.call("Target.createTarget", {"url": "about:blank", "newWindow": True})
        session = self.call(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
        )["sessionId"]
        self.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1280, "height": 860, "deviceScaleFactor": 1, "mobile": False},
            session,
        )
        self.call("Page.navigate", {"url": url}, session)
        self.targets[str(session)] = str(target["targetId"])
        return str(session)

    def close(self, session: str) -> None:
        """Closes the page as its user would: the browser ends it, its locks and sockets too."""
        self.call("Target.closeTarget", {"targetId": self.targets.pop(session)})

    def js(self, session: str, expression: str, *, wait: bool = False) -> Any:
        reply = self.call(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": wait},
            session,
        )
        assert "exceptionDetails" not in reply, reply["exceptionDetails"]
        return reply["result"].get("value")

    def until(self, session: str, expression: str, timeout: float = 15.0) -> Any:
        """Polls a JS expression until it is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if value := self.js(session, expression):
                return value
            time.sleep(0.05)
        raise AssertionError(f"not true within {timeout}s: {expression}")

    def click(self, session: str, x: float, y: float) -> None:
        for kind in ("mousePressed", "mouseReleased"):
            self.call(
                "Input.dispatchMouseEvent",
                {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1},
                session,
            )


@contextlib.contextmanager
def chromium() -> Iterator[DevTools]:
    """Headless Chromium with DevTools on a free port; always killed afterwards."""
    binary = shutil.which("chromium")
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is not installed: .ci/run installs Debian's chromium")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="pgrelay-chromium-") as profile:
        process = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--disable-background-timer-throttling",
             "--disable-renderer-backgrounding", "--disable-backgrounding-occluded-windows",
             f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        devtools: DevTools | None = None
        try:
            active = Path(profile) / "DevToolsActivePort"
            deadline = time.monotonic() + 20
            while len(lines := _read_lines(active)) < 2:
                assert process.poll() is None, f"chromium exited with {process.returncode}"
                assert time.monotonic() < deadline, "chromium did not open its DevTools port"
                time.sleep(0.05)
            devtools = DevTools(f"ws://127.0.0.1:{lines[0]}{lines[1]}")
            yield devtools
        finally:
            if devtools is not None:
                with contextlib.suppress(Exception):
                    devtools.ws.close()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text().split()
    except OSError:
        return []
