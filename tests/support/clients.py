"""Test clients: a protocol-v1 websocket client, the long-poll request, cursor positions."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.support.processes import RelayProcess
from tests.support.tokens import token

__all__ = ["Client", "close_of", "poll", "position"]


def position(cursor: str) -> int:
    """The log position of a cursor string ("<epoch>.<position>")."""
    return int(cursor.rsplit(".", 1)[1])


def close_of(closed: ConnectionClosed) -> tuple[int, str]:
    """The close frame the relay sent, as (code, reason); fails when none was received."""
    assert closed.rcvd is not None, f"no close frame received: {closed}"
    return closed.rcvd.code, closed.rcvd.reason


def poll(relay: RelayProcess, user: str | None, **params: Any) -> tuple[int, dict[str, Any]]:
    """GET /v1/poll with these query parameters (None ones left out), as `user` if given:
    (status, decoded JSON body), error statuses included."""
    query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
    request = urllib.request.Request(f"http://127.0.0.1:{relay.port}/v1/poll?{query}")
    if user is not None:
        request.add_header("Authorization", f"Bearer {token(user)}")
    try:
        with urllib.request.urlopen(request, timeout=40) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


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
