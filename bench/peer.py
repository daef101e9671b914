"""The peer: encode/broadcaster's Postgres backend with Starlette websockets, under uvicorn.

Built as broadcaster's README shows its websocket example (a receiver task and a sender loop
``async with broadcast.subscribe(channel) as subscriber: async for event in subscriber:
await websocket.send_text(event.message)``), with the per-user filter that stack is used with:
one channel per user, ``user_<id>``, which the writers' trigger NOTIFYs with the row as JSON
(``PEER_SCHEMA`` in bench/procs.py). The only additions are what the benchmark needs to give
both stacks the same clients: the user comes from a JWT in a first ``auth`` message (the
relay's browser flow, same secret), and the app says ``{"type":"subscribed"}`` once its LISTEN
is in place.

    PEER_DSN=postgresql://... uvicorn bench.peer:app --host 127.0.0.1 --port 0
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncIterator
from typing import Any, cast

import anyio
import jwt
from broadcaster import Broadcast, Event
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from tests.support.tokens import SECRET

__all__ = ["app"]

broadcast = Broadcast(os.environ.get("PEER_DSN", "postgresql://postgres@127.0.0.1/peer"))


async def events_ws(websocket: WebSocket) -> None:
    await websocket.accept()
    first = json.loads(await websocket.receive_text())
    try:
        user = jwt.decode(first.get("token"), SECRET, algorithms=["HS256"])["sub"]
    except jwt.PyJWTError:
        await websocket.close(4001)
        return

    async with anyio.create_task_group() as task_group:

        async def run_receiver() -> None:
            async for _ in websocket.iter_text():
                pass
            task_group.cancel_scope.cancel()

        task_group.start_soon(run_receiver)
        async with broadcast.subscribe(channel=f"user_{user}") as subscriber:
            await websocket.send_text('{"type":"subscribed"}')
            # broadcaster annotates Subscriber.__aiter__ as maybe None, yielding Event | None;
            # it yields the events only (a None in its queue ends the iteration).
            events = cast(AsyncIterator[Event], subscriber)
            async for event in events:
                await websocket.send_text(event.message)


@contextlib.asynccontextmanager
async def lifespan(_app: Any) -> AsyncIterator[None]:
    await broadcast.connect()
    try:
        yield
    finally:
        await broadcast.disconnect()


app = Starlette(routes=[WebSocketRoute("/ws", events_ws)], lifespan=lifespan)
