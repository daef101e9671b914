"""The processes of the relay benchmark and how the harness drives them: the servers under test
(the relay, the peer, the bare websockets server), the client swarm and the load generator.

Everything listens on 127.0.0.1 and every child is stopped by the harness (or stops by itself
when its stdin closes). CPU time and memory are read from the kernel's per-process counters
(tests/support/processes.py), never estimated.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.support.paths import REPO
from tests.support.processes import RelayProcess, free_port, raise_nofile
from tests.support.tokens import token

__all__ = [
    "BareServer",
    "PeerServer",
    "RelayServer",
    "SwarmGroup",
    "log",
    "run_load",
]

PY = sys.executable


def log(message: str) -> None:
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


def run_load(
    dsn: str,
    *,
    rate: float,
    seconds: float,
    users: int,
    seq_start: int,
    per_commit: int = 1,
    writers: int = 0,
    user_prefix: str = "",
    user_offset: int = 0,
    mode: str = "insert",
) -> dict[str, Any]:
    """Runs bench.loadgen to completion and returns its JSON answer."""
    argv = [PY, "-m", "bench.loadgen", "--dsn", dsn, "--rate", str(rate),
            "--seconds", str(seconds), "--users", str(users), "--seq-start", str(seq_start),
            "--per-commit", str(per_commit), "--writers", str(writers),
            "--user-prefix", user_prefix, "--user-offset", str(user_offset),
            "--mode", mode]  # fmt: skip
    result = subprocess.run(
        argv, cwd=REPO, capture_output=True, text=True, timeout=seconds + 120, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"loadgen failed: {result.stderr[-2000:]}")
    answer: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return answer


class _LineProcess:
    """A child driven by JSON lines on stdin, answering JSON lines on stdout."""

    def __init__(self, argv: Sequence[str], env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            list(argv), cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=None, text=True, env=env, preexec_fn=raise_nofile,
        )  # fmt: skip
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)

    @property
    def pid(self) -> int:
        return self.process.pid

    def send(self, cmd: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(cmd) + "\n")
        self.process.stdin.flush()

    def receive(self, timeout: float) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no answer from {self.process.args!r} in {timeout}s") from None
        answer: dict[str, Any] = json.loads(line)
        return answer

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                assert self.process.stdin is not None
                self.process.stdin.close()
            except OSError:
                pass
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class SwarmGroup:
    """One or more swarm processes (bench/swarm.py) acting as one swarm."""

    def __init__(self, processes: int = 1) -> None:
        self.procs = [_LineProcess([PY, "-m", "bench.swarm"]) for _ in range(processes)]

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def _all(self, cmds: Sequence[dict[str, Any] | None], timeout: float) -> list[dict[str, Any]]:
        used = [(p, c) for p, c in zip(self.procs, cmds, strict=True) if c is not None]
        for proc, cmd in used:
            proc.send(cmd)
        return [proc.receive(timeout) for proc, _ in used]

    def connect(
        self,
        kind: str,
        url: str,
        users: Sequence[str],
        *,
        concurrency: int,
        deflate: bool = True,
        retries: int = 0,
        timeout: float = 600,
    ) -> dict[str, Any]:
        """Connects these users' clients, spread over the processes; the burst's figures."""
        n = len(self.procs)
        chunks = [list(users[i::n]) for i in range(n)]
        cmds: list[dict[str, Any] | None] = [
            {"cmd": "connect", "kind": kind, "url": url, "users": chunk, "deflate": deflate,
             "concurrency": max(1, concurrency // n), "retries": retries} if chunk else None
            for chunk in chunks
        ]  # fmt: skip
        answers = self._all(cmds, timeout)
        errors: dict[str, int] = {}
        for answer in answers:
            for key, count in answer["errors"].items():
                errors[key] = errors.get(key, 0) + count
        return {
            "seconds": max(a["seconds"] for a in answers),
            "attempts": sum(a["attempts"] for a in answers),
            "failed": sum(a["failed"] for a in answers),
            "errors": errors,
            "missing": sum(a["missing"] for a in answers),
            "connected": sum(a["connected"] for a in answers),
        }

    def reset(self, sample: int = 1) -> None:
        self._all([{"cmd": "reset", "sample": sample}] * len(self.procs), 30)

    def stats(
        self, expect: int, timeout: float, latencies: bool = True, arrivals: bool = False
    ) -> dict[str, Any]:
        """Waits (up to timeout) until `expect` events arrived over all processes; merged."""
        deadline = time.monotonic() + timeout
        while True:
            left = max(0.0, deadline - time.monotonic())
            answers = self._all(
                [{"cmd": "stats", "expect": 0, "timeout": 0, "latencies": False}] * len(self.procs),
                30,
            )
            if sum(a["events"] for a in answers) >= expect or left <= 0:
                break
            time.sleep(min(0.1, left))
        answers = self._all(
            [{"cmd": "stats", "latencies": latencies, "seqs": latencies, "arrivals": arrivals}]
            * len(self.procs),
            60,
        )
        seqs: dict[int, int] = {}
        lat: list[float] = []
        commit_lat: list[float] = []
        arrived: list[tuple[int, float]] = []
        for answer in answers:
            arrived.extend(answer.pop("arrivals", []))
            lat.extend(answer.pop("latencies", []))
            commit_lat.extend(answer.pop("commit_latencies", []))
            for seq in answer.pop("seqs", []):
                seqs[seq] = seqs.get(seq, 0) + 1
        merged: dict[str, Any] = {
            key: sum(a[key] for a in answers)
            for key in ("events", "parsed", "bytes", "closed", "connected", "duplicates")
        }
        merged["first"] = min((a["first"] for a in answers if a["first"]), default=0.0)
        merged["last"] = max((a["last"] for a in answers), default=0.0)
        merged["latencies"] = lat
        merged["commit_latencies"] = commit_lat
        merged["arrivals"] = arrived
        merged["seqs"] = seqs
        merged["other"] = {k: v for a in answers for k, v in a["other"].items()}
        return merged

    def quiesce(self, idle: float = 1.0, timeout: float = 30.0) -> None:
        """Waits until no event has arrived for `idle` seconds (a saturated run's stragglers
        must not count in the next run), at most `timeout`."""
        deadline = time.monotonic() + timeout
        last = -1
        while time.monotonic() < deadline:
            answers = self._all([{"cmd": "stats", "latencies": False}] * len(self.procs), 30)
            count = sum(a["events"] for a in answers)
            if count == last:
                return
            last = count
            time.sleep(idle)

    def close(self, count: int = -1) -> None:
        """Closes the `count` newest connections of each process (all: -1)."""
        self._all([{"cmd": "close", "count": count}] * len(self.procs), 120)

    def stop(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(OSError):
                proc.send({"cmd": "exit"})
        for proc in self.procs:
            proc.stop()


class RelayServer:
    """`relay serve` as tests.support.processes.RelayProcess runs it, with the per-address
    limits raised (every client comes from 127.0.0.1) and log level info (one line per
    connection)."""

    kind = "relay"

    def __init__(self, dsn: str, extra_env: dict[str, str] | None = None) -> None:
        raise_nofile()  # inherited by the child
        self.proc = RelayProcess(
            dsn,
            env={
                "RELAY_LOG_LEVEL": "info",
                "RELAY_MAX_CONNECTIONS": "30000",
                "RELAY_MAX_CONNECTIONS_PER_IP": "30000",
                "RELAY_CONNECT_RATE_PER_IP": "1000000",
                "RELAY_MAX_HANDSHAKES": "30000",
                "RELAY_MAX_HANDSHAKES_PER_IP": "30000",
                "RELAY_HEARTBEAT_INTERVAL": "5s",
                "RELAY_LISTEN_WINDOW": "5s",
                "RELAY_QUERY_TIMEOUT": "5s",
                **(extra_env or {}),
            },
        )

    def start(self) -> RelayServer:
        self.proc.start(timeout=60)
        self.proc.lines.clear()  # only the relay's own log is kept, not one line per client
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return self.proc.url

    @property
    def supabase_url(self) -> str:
        """The Supabase dialect's endpoint, with an anon key as its apikey (docs/supabase.md)."""
        anon = token("", ttl=4 * 3600, role="anon")
        return f"ws://127.0.0.1:{self.proc.port}/realtime/v1/websocket?apikey={anon}&vsn=2.0.0"

    def events_read(self) -> int:
        """Row events the relay has read from the log so far (its relay_events counters)."""
        _, body = self.proc.scrape()
        return int(
            sum(
                float(line.rsplit(" ", 1)[1])
                for line in body.splitlines()
                if line.startswith("relay_events_total{")
            )
        )

    def stop(self) -> None:
        if self.proc.running:
            self.proc.stop()


class PeerServer:
    """bench/peer.py under uvicorn, as broadcaster's README runs its example."""

    kind = "peer"

    def __init__(self, dsn: str, logfile: Path) -> None:
        self.port = free_port()
        self.dsn = dsn
        self.logfile = logfile
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> PeerServer:
        env = {**os.environ, "PEER_DSN": self.dsn}
        with self.logfile.open("ab") as log_out:
            self.process = subprocess.Popen(
                [PY, "-m", "uvicorn", "bench.peer:app", "--host", "127.0.0.1",
                 "--port", str(self.port), "--log-level", "warning", "--no-access-log"],
                cwd=REPO, env=env, preexec_fn=raise_nofile, stdin=subprocess.DEVNULL,
                stdout=log_out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        _wait_port(self.port, self.process)
        return self

    def errors(self) -> dict[str, int]:
        """The exceptions the app logged so far, by their last line (the error itself)."""
        counts: dict[str, int] = {}
        try:
            lines = self.logfile.read_text(errors="replace").splitlines()
        except OSError:
            return counts
        for line in lines:
            text = line.strip().lstrip("| ")
            if "Error: " in text and not text.startswith(("File ", "raise ", "During ")):
                key = text[:120]
                counts[key] = counts.get(key, 0) + 1
        return counts

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def stop(self) -> None:
        _stop(self.process)


class BareServer:
    """bench/bare_ws.py: websockets' broadcast() with nothing else."""

    kind = "bare"

    def __init__(self) -> None:
        self.line: _LineProcess | None = None
        self.port = 0

    def start(self) -> BareServer:
        self.line = _LineProcess([PY, "-m", "bench.bare_ws"])
        self.port = int(self.line.receive(30)["port"])
        return self

    @property
    def pid(self) -> int:
        assert self.line is not None
        return self.line.pid

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/ws"

    def broadcast(self, rate: float, seconds: float, seq: int) -> dict[str, Any]:
        assert self.line is not None
        self.line.send({"cmd": "broadcast", "rate": rate, "seconds": seconds, "seq": seq})
        return self.line.receive(seconds + 120)

    def stop(self) -> None:
        if self.line is not None:
            self.line.stop()


def _wait_port(port: int, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port} after {timeout}s")


def _stop(process: subprocess.Popen[bytes] | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
