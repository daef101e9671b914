"""Processes under test: `relay serve` in a child process, ports, open-file limits, and the
kernel's per-process counters (CPU time, resident memory) read from /proc."""

from __future__ import annotations

import json
import os
import queue
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.support.tokens import SECRET

__all__ = [
    "RelayProcess",
    "cpu_seconds",
    "free_port",
    "peak_rss_mib",
    "raise_nofile",
    "relay_process",
    "rss_bytes",
]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def raise_nofile() -> int:
    """Lifts the soft open-files limit to the hard one (children inherit it); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process (its threads included) has used so far; 0 if it
    is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    """The process's resident set size now, in bytes (resident pages of /proc/PID/statm)."""
    resident = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return resident * os.sysconf("SC_PAGE_SIZE")


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident set size (VmHWM) so far, in MiB; 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class RelayProcess:
    """`relay serve` in a child process on free ports (its metrics port too), its JSON log lines
    collected."""

    def __init__(
        self,
        dsn: str,
        env: Mapping[str, str] | None = None,
        preexec_fn: Callable[[], None] | None = None,
    ) -> None:
        self.dsn = dsn
        self.preexec_fn = preexec_fn
        self.env = {
            **os.environ,
            "RELAY_DSN": dsn,
            "RELAY_PORT": "0",
            "RELAY_METRICS_PORT": str(free_port()),
            "RELAY_JWT_SECRET": SECRET,
            "RELAY_LOG_FORMAT": "json",
            "RELAY_LOG_LEVEL": "debug",
            "RELAY_HEARTBEAT_INTERVAL": "1s",
            "RELAY_LISTEN_WINDOW": "1s",
            "RELAY_QUERY_TIMEOUT": "2s",
            **(env or {}),
        }
        self.port = 0
        self.metrics_port: int | None = None  # None: /metrics is on the main port
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
            preexec_fn=self.preexec_fn,
        )
        threading.Thread(target=self._pump, args=(self.process,), daemon=True).start()
        line = self.wait_log("listening", timeout)
        self.port = int(line["port"])
        self.metrics_port = line.get("metrics_port")
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

    @property
    def pid(self) -> int:
        assert self.process is not None, "not started"
        return self.process.pid

    @property
    def running(self) -> bool:
        """Started and not exited yet."""
        return self.process is not None and self.process.poll() is None

    def http(self, path: str, port: int | None = None) -> tuple[int, str]:
        """GET `path` on the relay's port (or on `port`): (status, body), error statuses
        included."""
        url = f"http://127.0.0.1:{port or self.port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def scrape(self) -> tuple[int, str]:
        """GET /metrics where the relay serves it: its metrics port, else the main port."""
        return self.http("/metrics", self.metrics_port)

    def metric(self, name: str, labels: str = "") -> float:
        """One sample of /metrics, e.g. metric('relay_drops_total', 'reason="overflow"')."""
        _, body = self.scrape()
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
def relay_process(
    dsn: str,
    env: Mapping[str, str] | None = None,
    preexec_fn: Callable[[], None] | None = None,
) -> Iterator[RelayProcess]:
    """A started RelayProcess, killed on the way out if it still runs."""
    relay = RelayProcess(dsn, env, preexec_fn).start()
    try:
        yield relay
    finally:
        if relay.running:
            relay.kill()
