"""The floor for fan-out: a bare websockets server that broadcasts with ``websockets.broadcast``.

It accepts the swarm's clients with the relay's handshake (``auth`` answered by ``ready``,
``subscribe`` by ``subscribed``; the token is not even verified) and keeps nothing else per
connection. On a ``broadcast`` command it sends ``rate`` events per second for ``seconds``,
each one relay-shaped ``event`` frame of the same size as the relay's, stamped with the time it
is sent, to every connection, with ``websockets.broadcast()``: the raw cost of writing frames to
sockets in Python, with no database, routing or queues. Like the relay by default, it does not
negotiate permessage-deflate.

    python -m bench.bare_ws            # prints {"port": N}, then reads JSON commands on stdin
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from websockets.asyncio.server import ServerConnection, broadcast, serve

from tests.support.processes import raise_nofile

__all__ = ["main"]

connections: set[ServerConnection] = set()


async def handler(ws: ServerConnection) -> None:
    try:
        async for message in ws:
            kind = json.loads(message).get("type")
            if kind == "auth":
                await ws.send('{"type":"ready"}')
            elif kind == "subscribe":
                connections.add(ws)
                await ws.send('{"type":"subscribed","id":"g"}')
    finally:
        connections.discard(ws)


def frame(seq: int) -> str:
    """An event frame shaped and sized like the relay's for a ``generations`` INSERT."""
    row = {
        "id": seq,
        "user_id": "fan",
        "project_id": "bench",
        "shot_id": str(seq),
        "status": "queued",
        "url": f"{time.time():.6f}",
        "created_at": "2025-01-01T00:00:00.000000+00:00",
    }
    body = {
        "type": "event",
        "sub": "g",
        "cursor": f"{'0' * 32}.{seq}",
        "schema": "public",
        "table": "generations",
        "op": "INSERT",
        "pk": {"id": seq},
        "row": row,
        "changed": [],
        "ts": "2025-01-01T00:00:00.000000+00:00",
    }
    return json.dumps(body, separators=(",", ":"))


async def broadcast_for(rate: float, seconds: float, seq: int) -> dict[str, Any]:
    start = time.monotonic()
    sent = deliveries = 0
    while True:
        due = start + sent / rate
        now = time.monotonic()
        if due >= start + seconds:
            break
        if due > now:
            await asyncio.sleep(due - now)
        targets = list(connections)
        broadcast(targets, frame(seq + sent))
        sent += 1
        deliveries += len(targets)
    return {"events": sent, "deliveries": deliveries, "seconds": time.monotonic() - start}


async def amain() -> None:
    raise_nofile()
    async with serve(handler, "127.0.0.1", 0, compression=None, max_queue=16) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        print(json.dumps({"port": port}), flush=True)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while line := await reader.readline():
            cmd = json.loads(line)
            if cmd["cmd"] == "broadcast":
                answer = await broadcast_for(
                    float(cmd["rate"]), float(cmd["seconds"]), int(cmd.get("seq", 0))
                )
            else:
                answer = {"connections": len(connections)}
            print(json.dumps(answer), flush=True)


def main() -> int:
    asyncio.run(amain())
    return 0


if __name__ == "__main__":
    sys.exit(main())
