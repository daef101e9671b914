"""The client swarm: many websocket clients in one asyncio process, driven over stdin/stdout.

Each client is a real websocket client (websockets' sans-I/O ``ClientProtocol`` for the handshake
and framing, one asyncio transport per connection) that behaves like the browser client: it
offers permessage-deflate when asked (browsers always do), authenticates with an ``auth``
message carrying a JWT, subscribes to ``generations`` and waits for ``subscribed``. Then it
receives events; for each it reads the writer's ``clock_timestamp()`` stamp (``row.url``) and
sequence number (``row.shot_id``) and records the latency against this machine's clock.

Kinds of server, one client flow each:

* ``relay``: pgrelay's protocol v1 on ``/v1/ws``;
* ``peer``: the broadcaster + Starlette app (bench/peer.py): ``auth`` message, then it sends
  ``{"type":"subscribed"}`` once its LISTEN is in place; events are the row as JSON;
* ``bare``: the bare websockets server (bench/bare_ws.py), which speaks the relay's handshake.

Commands, one JSON object a line on stdin, each answered by one JSON line on stdout:

* ``{"cmd":"connect","kind":"relay","url":...,"users":["1","2"],"concurrency":100,
  "deflate":true,"retries":0}``: opens one connection per entry (a user may repeat), at most
  ``concurrency`` handshakes at a time; answers the time it took and the failed attempts by
  error. With ``retries`` > 0 a failed client is tried again (serially, after the burst), so the
  population is complete while the burst's failures are still counted.
* ``{"cmd":"reset","sample":1}``: clears the counters; with ``sample`` N only every Nth event
  received is parsed for its latency (fan-out runs), the others are only counted.
* ``{"cmd":"stats","expect":N,"timeout":S,"latencies":true}``: waits until N events arrived (or
  S seconds), then answers counts, duplicates, bytes and the latencies.
* ``{"cmd":"close","count":N}``: closes the N most recently opened connections (all: -1).
* ``{"cmd":"exit"}``.

RLIMIT_NOFILE is raised to the hard limit at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections import Counter
from datetime import datetime
from typing import Any

from websockets.client import ClientProtocol
from websockets.extensions.permessage_deflate import enable_client_permessage_deflate
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from tests.support.processes import raise_nofile
from tests.support.tokens import token

__all__ = ["main"]

CONNECT_TIMEOUT = 60.0
TOKEN_TTL = 4 * 3600.0  # the longest run, with room
SUBSCRIBE = '{"type":"subscribe","id":"g","table":"generations"}'
# The Supabase dialect (docs/supabase.md): a realtime-js channel's join, and its pushes' start.
TOPIC = "realtime:bench"
PUSH = b'[null,null,"realtime:bench","postgres_changes"'


class Stats:
    """What the clients received since the last reset."""

    def __init__(self, sample: int = 1) -> None:
        self.sample = sample
        self.events = 0
        self.parsed = 0
        self.bytes = 0
        self.latencies: list[float] = []
        self.commit_latencies: list[float] = []  # from the event's commit timestamp (relay)
        self.arrivals: list[tuple[int, float]] = []  # (sequence number, time received)
        self.seqs: Counter[int] = Counter()
        self.closed = 0
        self.other: Counter[str] = Counter()
        self.first = 0.0
        self.last = 0.0


class Client(asyncio.Protocol):
    """One websocket client; ``ready`` resolves once its subscription is in place."""

    def __init__(self, swarm: Swarm, kind: str, url: str, user: str, deflate: bool) -> None:
        self.swarm = swarm
        self.kind = kind
        self.user = user
        extensions = enable_client_permessage_deflate(None) if deflate else None
        self.protocol = ClientProtocol(parse_uri(url), extensions=extensions, max_size=2**22)
        self.transport: asyncio.Transport | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.live = False
        self.received = 0

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.protocol.send_request(self.protocol.connect())
        self._flush()

    def data_received(self, data: bytes) -> None:
        now = time.time()
        protocol = self.protocol
        protocol.receive_data(data)
        for event in protocol.events_received():
            if isinstance(event, Frame):
                if event.opcode is Opcode.TEXT:
                    # websockets hands parsed frames over as bytes or bytearray (by version)
                    self._on_text(bytes(event.data), now)
            elif isinstance(event, Response):
                if protocol.handshake_exc is not None:
                    self._fail(protocol.handshake_exc)
                else:
                    self._on_open()
        self._flush()
        if protocol.close_expected() and self.transport is not None:
            self.transport.close()

    def eof_received(self) -> bool | None:
        self.protocol.receive_eof()
        self._flush()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self._fail(exc or ConnectionError(f"closed before subscribed: {self.protocol.state}"))
        elif self.live:
            self.swarm.stats.closed += 1
        self.live = False
        self.swarm.clients.discard(self)

    # -- websocket ----------------------------------------------------------------------------

    def _flush(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        for data in self.protocol.data_to_send():
            if data:
                transport.write(data)
            elif transport.can_write_eof():
                transport.write_eof()

    def send_text(self, text: str) -> None:
        self.protocol.send_text(text.encode())
        self._flush()

    def _on_open(self) -> None:
        if self.kind == "supabase":
            config = {"postgres_changes": [{"event": "*", "schema": "public",
                                            "table": "generations"}]}  # fmt: skip
            access = token(self.user, ttl=TOKEN_TTL, role="authenticated")
            join = {"config": config, "access_token": access}
            self.send_text(json.dumps(["1", "1", TOPIC, "phx_join", join]))
            return
        self.send_text(json.dumps({"type": "auth", "token": token(self.user, ttl=TOKEN_TTL)}))
        if self.kind != "peer":
            self.send_text(SUBSCRIBE)

    def _fail(self, exc: BaseException) -> None:
        if not self.ready.done():
            self.ready.set_exception(exc)
        if self.transport is not None:
            self.transport.abort()

    def _on_text(self, data: bytes, now: float) -> None:
        if self.kind == "supabase":
            self._on_phoenix(data, now)
            return
        stats = self.swarm.stats
        if self.live and (self.kind == "peer" or data.startswith(b'{"type":"event"')):
            self.received += 1
            stats.events += 1
            stats.bytes += len(data)
            if not stats.first:
                stats.first = now
            stats.last = now
            if stats.events % stats.sample:
                return
            message = json.loads(data)
            row = message if self.kind == "peer" else message["row"]
            self._sample(row, message.get("ts"), now)
            return
        message = json.loads(data)
        kind = message.get("type")
        if kind == "subscribed" and not self.ready.done():
            self.live = True
            self.ready.set_result(None)
        elif kind in ("ready", "pong"):
            pass
        else:
            stats.other[str(kind)] += 1
            if kind == "error" and not self.ready.done():
                self._fail(RuntimeError(f"error frame: {message.get('code')}"))

    def _sample(self, row: dict[str, Any], ts: str | None, now: float) -> None:
        stats = self.swarm.stats
        stats.parsed += 1
        stats.latencies.append(now - float(row["url"]))
        if ts is not None:
            stats.commit_latencies.append(now - datetime.fromisoformat(ts).timestamp())
        seq = int(row["shot_id"])
        stats.seqs[seq] += 1
        stats.arrivals.append((seq, now))

    def _on_phoenix(self, data: bytes, now: float) -> None:
        """A Supabase-dialect frame: a change push, or the join's reply (ready)."""
        stats = self.swarm.stats
        if self.live and data.startswith(PUSH):
            self.received += 1
            stats.events += 1
            stats.bytes += len(data)
            if not stats.first:
                stats.first = now
            stats.last = now
            if stats.events % stats.sample:
                return
            change = json.loads(data)[4]["data"]
            # commit_timestamp has milliseconds: commit->client is kept to the v1 stacks' ts.
            self._sample(change["record"], None, now)
            return
        frame = json.loads(data)
        if frame[3] == "phx_reply" and frame[1] == "1" and not self.ready.done():
            if frame[4].get("status") == "ok":
                self.live = True
                self.ready.set_result(None)
            else:
                self._fail(RuntimeError(f"join refused: {frame[4]}"))
        elif frame[3] not in ("system", "phx_reply"):
            stats.other[str(frame[3])] += 1

    def close(self) -> None:
        self.live = False
        if self.transport is not None and not self.transport.is_closing():
            with contextlib.suppress(Exception):
                self.protocol.send_close(1000)
                self._flush()
            self.transport.close()


class Swarm:
    def __init__(self) -> None:
        self.clients: set[Client] = set()
        self.order: list[Client] = []
        self.stats = Stats()

    async def _open(self, kind: str, url: str, user: str, deflate: bool) -> Client:
        loop = asyncio.get_running_loop()
        uri = parse_uri(url)
        client = Client(self, kind, url, user, deflate)
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                await loop.create_connection(lambda: client, uri.host, uri.port)
                await client.ready
        except BaseException:
            client.close()
            raise
        self.clients.add(client)
        self.order.append(client)
        return client

    async def connect(self, cmd: dict[str, Any]) -> dict[str, Any]:
        kind, url, deflate = cmd["kind"], cmd["url"], bool(cmd.get("deflate", True))
        users: list[str] = cmd["users"]
        limit = asyncio.Semaphore(max(1, int(cmd.get("concurrency", 100))))
        errors: Counter[str] = Counter()
        failed_users: list[str] = []

        async def one(user: str) -> None:
            async with limit:
                try:
                    await self._open(kind, url, user, deflate)
                except Exception as exc:
                    errors[_describe(exc)] += 1
                    failed_users.append(user)

        started = time.perf_counter()
        await asyncio.gather(*(one(user) for user in users))
        seconds = time.perf_counter() - started
        retried_ok = 0
        for _ in range(int(cmd.get("retries", 0))):
            retry, failed_users = failed_users, []
            for user in retry:
                try:
                    await self._open(kind, url, user, deflate)
                    retried_ok += 1
                except Exception:
                    failed_users.append(user)
                    await asyncio.sleep(0.05)
        return {
            "seconds": seconds,
            "attempts": len(users),
            "failed": sum(errors.values()),
            "errors": dict(errors),
            "retried_ok": retried_ok,
            "missing": len(failed_users),
            "connected": len(self.clients),
        }

    async def stats_cmd(self, cmd: dict[str, Any]) -> dict[str, Any]:
        expect = int(cmd.get("expect", 0))
        deadline = time.monotonic() + float(cmd.get("timeout", 0))
        while self.stats.events < expect and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)  # polled: events arrive in every client's callback
        stats = self.stats
        duplicates = sum(count - 1 for count in stats.seqs.values() if count > 1)
        out: dict[str, Any] = {
            "events": stats.events,
            "parsed": stats.parsed,
            "distinct": len(stats.seqs),
            "duplicates": duplicates,
            "bytes": stats.bytes,
            "closed": stats.closed,
            "other": dict(stats.other),
            "first": stats.first,
            "last": stats.last,
            "connected": len(self.clients),
        }
        if cmd.get("latencies"):
            out["latencies"] = stats.latencies
            out["commit_latencies"] = stats.commit_latencies
        if cmd.get("seqs"):
            out["seqs"] = sorted(stats.seqs)
        if cmd.get("arrivals"):
            out["arrivals"] = stats.arrivals
        return out

    def close(self, count: int) -> dict[str, Any]:
        victims = self.order if count < 0 else self.order[-count:] if count else []
        for client in victims:
            client.close()
        self.order = self.order[: len(self.order) - len(victims)]
        return {"closed": len(victims), "connected": len(self.order)}

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=2**26)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while line := await reader.readline():
            cmd = json.loads(line)
            name = cmd["cmd"]
            if name == "connect":
                answer = await self.connect(cmd)
            elif name == "reset":
                self.stats = Stats(int(cmd.get("sample", 1)))
                for client in self.clients:
                    client.received = 0
                answer = {"ok": True}
            elif name == "stats":
                answer = await self.stats_cmd(cmd)
            elif name == "close":
                answer = self.close(int(cmd.get("count", -1)))
                await asyncio.sleep(0.2)
            elif name == "exit":
                self.close(-1)
                await asyncio.sleep(0.2)
                _reply({"ok": True})
                return
            else:
                answer = {"error": f"unknown command {name!r}"}
            _reply(answer)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timeout"
    text = str(exc).splitlines()[0][:80] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _reply(answer: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(answer) + "\n")
    sys.stdout.flush()


def main() -> int:
    raise_nofile()
    asyncio.run(Swarm().serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
