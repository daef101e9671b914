"""Helpers for integration tests: a real relay process, real websocket clients, real tokens."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import jwt
from websockets.sync.client import ClientConnection, connect

SECRET = "test-secret-with-enough-entropy-0123456789"


def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    """Polls predicate until it is true; fails naming what did not happen in time."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        time.sleep(0.05)


def token(sub: str, *, ttl: float = 3600, secret: str = SECRET, **claims: Any) -> str:
    now = time.time()
    return jwt.encode({"sub": sub, "exp": now + ttl, "iat": now, **claims}, secret, "HS256")


class RelayProcess:
    """`relay serve` in a child process on a free port, its JSON log lines collected."""

    def __init__(self, dsn: str, env: Mapping[str, str] | None = None) -> None:
        self.dsn = dsn
        self.env = {
            **os.environ,
            "RELAY_DSN": dsn,
            "RELAY_PORT": "0",
            "RELAY_JWT_SECRET": SECRET,
            "RELAY_LOG_FORMAT": "json",
            "RELAY_LOG_LEVEL": "debug",
            "RELAY_HEARTBEAT_INTERVAL": "1s",
            "RELAY_LISTEN_WINDOW": "1s",
            "RELAY_QUERY_TIMEOUT": "2s",
            **(env or {}),
        }
        self.port = 0
        self.process: subprocess.Popen[str] | None = None
        self.lines: list[dict[str, Any]] = []
        self._new_lines: queue.Queue[dict[str, Any]] = queue.Queue()

    def start(self, timeout: float = 20.0) -> RelayProcess:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "relay.cli", "serve"],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=self._pump, args=(self.process,), daemon=True).start()
        line = self.wait_log("listening", timeout)
        self.port = int(line["port"])
        return self

    def _pump(self, process: subprocess.Popen[str]) -> None:
        assert process.stderr is not None
        for raw in process.stderr:
            try:
                entry = json.loads(raw)
            except ValueError:
                entry = {"event": "raw", "text": raw.rstrip()}
            self.lines.append(entry)
            self._new_lines.put(entry)

    def wait_log(self, event: str, timeout: float = 10.0, **match: Any) -> dict[str, Any]:
        """Waits for a log line with that event (and keys); earlier lines count too."""
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            for entry in self.lines[seen:]:
                seen += 1
                if entry.get("event") == event and all(entry.get(k) == v for k, v in match.items()):
                    return entry
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"relay exited {self.process.returncode}: {self.lines[-20:]}")
            time.sleep(0.02)
        raise AssertionError(f"no {event!r} log line within {timeout}s: {self.lines[-20:]}")

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/ws"

    def http(self, path: str) -> tuple[int, str]:
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def metric(self, name: str, labels: str = "") -> float:
        """One sample of /metrics, e.g. metric('relay_drops_total', 'reason="overflow"')."""
        _, body = self.http("/metrics")
        key = f"{name}{{{labels}}}" if labels else name
        for line in body.splitlines():
            if line.startswith(key + " "):
                return float(line.split()[-1])
        return 0.0

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


@contextmanager
def relay_process(dsn: str, env: Mapping[str, str] | None = None) -> Iterator[RelayProcess]:
    relay = RelayProcess(dsn, env).start()
    try:
        yield relay
    finally:
        if relay.process is not None and relay.process.poll() is None:
            relay.kill()


class Client:
    """A websocket client speaking protocol v1, with helpers to wait for frames."""

    def __init__(self, url: str, user: str | None = None, *, header: bool = True) -> None:
        headers = {"Authorization": f"Bearer {token(user)}"} if user and header else None
        self.ws: ClientConnection = connect(
            url, additional_headers=headers, open_timeout=10, legacy=True
        )
        self.user = user
        self.frames: list[dict[str, Any]] = []

    def send(self, message: Mapping[str, Any] | str | bytes) -> None:
        self.ws.send(message if isinstance(message, (str, bytes)) else json.dumps(message))

    def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        frame: dict[str, Any] = json.loads(self.ws.recv(timeout))
        self.frames.append(frame)
        return frame

    def expect(self, type_: str, timeout: float = 5.0) -> dict[str, Any]:
        """The next frame, which must be of this type."""
        frame = self.recv(timeout)
        assert type_ == frame["type"], frame
        return frame

    def ready(self) -> dict[str, Any]:
        return self.expect("ready")

    def subscribe(self, sub_id: str, table: str, **options: Any) -> dict[str, Any]:
        """Subscribes and returns the `subscribed` frame (events replayed before it are kept)."""
        self.send({"type": "subscribe", "id": sub_id, "table": table, **options})
        while True:
            frame = self.recv()
            if frame["type"] == "subscribed" and frame["id"] == sub_id:
                return frame
            assert frame["type"] in {"event", "reset"}, frame

    def events(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Exactly `count` more event frames (other frames are kept in self.frames)."""
        deadline = time.monotonic() + timeout
        got: list[dict[str, Any]] = []
        while len(got) < count:
            frame = self.recv(max(0.01, deadline - time.monotonic()))
            if frame["type"] == "event":
                got.append(frame)
        return got

    def quiet(self, seconds: float = 0.5) -> list[dict[str, Any]]:
        """Whatever arrives within `seconds` (expected: nothing)."""
        got = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                got.append(self.recv(left))
            except TimeoutError:
                break
        return got

    def close(self) -> None:
        self.ws.close()
