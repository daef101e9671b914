"""The chaos swarm process (``python -m tests.chaos swarm CONFIG``).

One asyncio websocket client per user, behaving as the real client does: it subscribes to
``generations`` with ``since``, keeps its last cursor, and on any disconnect reconnects with capped,
jittered backoff and resumes; with ``churn`` it also leaves on its own every so often and resumes at
once, as a tab that reloads does. Slow clients subscribe and never read. It writes a status file
every 0.25 s (clients live, ever subscribed, distinct rows received), stops at its deadline or
when its stop file appears, and writes every client's events and sessions to its result file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from relay.core.backoff import Backoff
from tests.chaos.results import write_json
from tests.support.clients import position
from tests.support.processes import raise_nofile
from tests.support.tokens import token

__all__ = ["ClientSpec", "SwarmConfig", "run_swarm"]


@dataclass
class ClientSpec:
    user: str
    urls: list[str]
    kind: str = "normal"  # "slow": subscribes, then never reads
    policy: str = "sticky"  # "roam": after a disconnect, try the next URL of the list
    group: str = ""  # latencies are also reported per group
    # Seconds a normal client stays after `subscribed` (drawn from 0.5x to 1.5x) before it closes
    # and resumes at once from its cursor; 0: it stays until cut.
    churn: float = 0.0


@dataclass
class SwarmConfig:
    clients: list[ClientSpec]
    since: str  # every normal client's first subscription resumes from here
    max_seconds: float = 600.0
    stop_file: str = ""
    status_file: str = ""
    result_file: str = ""
    backoff_initial: float = 0.5  # the browser client's default first delay
    backoff_cap: float = 5.0
    slow_rcvbuf: int = 4096
    slow_ping_every: float = 5.0
    seed: int = 1


class _ClientState:
    def __init__(self, spec: ClientSpec, since: str) -> None:
        self.spec = spec
        self.cursor = since
        self.events: list[list[Any]] = []  # [pos, marker, row user, received, committed]
        self.seen: set[str] = set()
        self.sessions: list[dict[str, Any]] = []
        self.resets: list[list[Any]] = []  # [received, reason, pos]
        self.errors: list[dict[str, Any]] = []
        self.live = False

    def result(self) -> dict[str, Any]:
        return {
            "user": self.spec.user,
            "kind": self.spec.kind,
            "group": self.spec.group,
            "events": self.events,
            "sessions": self.sessions,
            "resets": self.resets,
            "errors": self.errors,
        }


def _session(url: str) -> dict[str, Any]:
    return {"url": url, "start": time.time(), "open": None, "subscribed": None, "end": None,
            "code": None, "reason": None, "error": None}  # fmt: skip


def _handshake_error(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    return f"http {status}" if status is not None else type(exc).__name__


async def _close_after(ws: Any, session: dict[str, Any], seconds: float) -> None:
    """Closes the socket after `seconds`, marking the session as ended by the client."""
    await asyncio.sleep(seconds)
    session["churned"] = True
    await ws.close()


async def _run_normal(
    client: _ClientState, cfg: SwarmConfig, stopping: asyncio.Event, rng: random.Random
) -> None:
    spec = client.spec
    backoff = Backoff(
        initial=cfg.backoff_initial, cap=cfg.backoff_cap, reset_after=cfg.backoff_cap, rng=rng
    )
    headers = {"Authorization": f"Bearer {token(spec.user)}"}
    index = 0
    while not stopping.is_set():
        url = spec.urls[index % len(spec.urls)]
        session = _session(url)
        client.sessions.append(session)
        churn: asyncio.Task[None] | None = None
        try:
            async with connect(
                url, additional_headers=headers, open_timeout=10, compression=None, proxy=None,
                close_timeout=2, max_size=None,
            ) as ws:  # fmt: skip
                session["open"] = time.time()
                await ws.send(
                    json.dumps(
                        {
                            "type": "subscribe",
                            "id": "g",
                            "table": "generations",
                            "since": client.cursor,
                        }
                    )
                )
                try:
                    async for raw in ws:
                        now = time.time()
                        frame = json.loads(raw)
                        kind = frame.get("type")
                        if kind == "event":
                            row = frame["row"]
                            ts = datetime.fromisoformat(frame["ts"]).timestamp()
                            marker = row["project_id"]
                            client.events.append(
                                [position(frame["cursor"]), marker, row["user_id"], now, ts]
                            )
                            client.seen.add(marker)
                            client.cursor = frame["cursor"]
                        elif kind == "subscribed":
                            session["subscribed"] = now
                            client.cursor = frame["cursor"]
                            client.live = True
                            backoff.succeeded(time.monotonic())
                            if spec.churn and churn is None:
                                seconds = spec.churn * rng.uniform(0.5, 1.5)
                                churn = asyncio.create_task(_close_after(ws, session, seconds))
                        elif kind == "reset":
                            client.resets.append([now, frame["reason"], position(frame["cursor"])])
                            client.cursor = frame["cursor"]
                        elif kind == "error":
                            client.errors.append(frame)
                except ConnectionClosed:
                    pass
                session["code"] = ws.close_code
                session["reason"] = ws.close_reason
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            session["error"] = _handshake_error(exc)
        finally:
            session["end"] = time.time()
            client.live = False
            if churn is not None:
                churn.cancel()
        if stopping.is_set():
            break
        if session.get("churned"):
            continue  # it left on its own: resume at once
        if spec.policy == "roam":
            index += 1
        backoff.failed(time.monotonic())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), backoff.next_delay())


async def _run_slow(client: _ClientState, cfg: SwarmConfig, stopping: asyncio.Event) -> None:
    """Connects, subscribes and never reads a frame, as a stuck tab would; its timer still sends
    a ping every few seconds, which is how it notices that the relay cut it off (the write
    fails), and then it comes back a second later."""
    spec = client.spec
    headers = {"Authorization": f"Bearer {token(spec.user)}"}
    loop = asyncio.get_running_loop()
    index = 0
    while not stopping.is_set():
        url = spec.urls[index % len(spec.urls)]
        parts = urlsplit(url)
        session = _session(url)
        client.sessions.append(session)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            # A small receive window: the relay's sends stall after a few frames.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, cfg.slow_rcvbuf)
            sock.setblocking(False)
            await asyncio.wait_for(loop.sock_connect(sock, (parts.hostname, parts.port)), 10)
            async with connect(
                url, sock=sock, additional_headers=headers, open_timeout=10, compression=None,
                proxy=None, max_queue=1, ping_interval=None, close_timeout=2,
            ) as ws:  # fmt: skip
                session["open"] = time.time()
                await ws.send(json.dumps({"type": "subscribe", "id": "g", "table": "generations"}))
                while True:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(ws.wait_closed(), cfg.slow_ping_every)
                        break
                    await ws.send('{"type":"ping"}')
                session["code"] = ws.close_code
                session["reason"] = ws.close_reason
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            session["error"] = _handshake_error(exc)
        finally:
            session["end"] = time.time()
            sock.close()
        if spec.policy == "roam":
            index += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), 1.0)


def _status(clients: Sequence[_ClientState]) -> dict[str, Any]:
    normal = [c for c in clients if c.spec.kind == "normal"]
    return {
        "t": time.time(),
        "live": sum(c.live for c in normal),
        # The oldest of the normal clients' latest subscriptions (0 while one has none): a wait
        # after a fault that cut every client knows they all came back since.
        "oldest_subscribed": min(
            (max((s["subscribed"] or 0.0 for s in c.sessions), default=0.0) for c in normal),
            default=0.0,
        ),
        "ever": sum(any(s["subscribed"] for s in c.sessions) for c in normal),
        "unique": sum(len(c.seen) for c in normal),
        "sessions": sum(len(c.sessions) for c in clients),
    }


def _exists(path: str) -> bool:
    return os.path.exists(path)


async def run_swarm(cfg: SwarmConfig) -> None:
    raise_nofile()
    stopping = asyncio.Event()
    clients = [_ClientState(spec, cfg.since) for spec in cfg.clients]
    rng = random.Random(cfg.seed)
    started = time.time()
    tasks = [
        asyncio.create_task(
            _run_normal(c, cfg, stopping, random.Random(rng.random()))
            if c.spec.kind == "normal"
            else _run_slow(c, cfg, stopping)
        )
        for c in clients
    ]
    deadline = time.monotonic() + cfg.max_seconds
    next_status = 0.0
    while time.monotonic() < deadline and not _exists(cfg.stop_file):
        if time.monotonic() >= next_status:
            write_json(cfg.status_file, _status(clients))
            next_status = time.monotonic() + 0.25
        await asyncio.sleep(0.05)
    stopping.set()
    for task in tasks:
        task.cancel()
    await asyncio.wait(tasks, timeout=15)
    write_json(
        cfg.result_file,
        {"started": started, "ended": time.time(), "clients": [c.result() for c in clients]},
    )
