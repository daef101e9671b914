"""A Server-Sent Events test client on a raw socket: the request as sent, the response head as
received, then the stream parsed as EventSource parses it (WHATWG HTML 9.2.6), its last event id
kept as EventSource keeps it."""

from __future__ import annotations

import json
import socket
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tests.support.processes import RelayProcess
from tests.support.tokens import token

__all__ = ["Block", "SseStream", "open_stream", "subs_param"]


@dataclass
class Block:
    """One dispatched SSE block: its event name, data, id field (if it had one) and comments."""

    event: str = "message"
    data: str | None = None
    id: str | None = None
    comments: list[str] = field(default_factory=list)
    retry: int | None = None

    def frame(self) -> dict[str, Any]:
        """The v1 JSON frame the block carries."""
        assert self.data is not None, self
        value: dict[str, Any] = json.loads(self.data)
        return value


def subs_param(*subs: Mapping[str, Any]) -> str:
    """The ``subs`` query parameter for these subscription objects."""
    return json.dumps(list(subs))


class SseStream:
    """``GET path`` on the relay's port; ``status``, ``headers`` and, for a refusal, ``body``."""

    def __init__(
        self,
        port: int,
        target: str,
        headers: Mapping[str, str] | None = None,
        *,
        rcvbuf: int | None = None,
        method: str = "GET",
    ) -> None:
        self.sock = socket.socket()
        if rcvbuf is not None:  # before connect: the window the client advertises
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(10)
        self.sock.connect(("127.0.0.1", port))
        lines = [f"{method} {target} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.buffer = b""
        self.last_id = ""
        self.closed = False
        self.blocks: list[Block] = []
        self.status, self.headers = self._head()
        self.body = b""
        if self.status != 200 or not self.headers.get("content-type", "").startswith(
            "text/event-stream"
        ):
            self.body = self._rest()

    def _recv(self, timeout: float) -> bool:
        """Reads what arrives within timeout; False when the relay closed the stream."""
        self.sock.settimeout(max(0.01, timeout))
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return True
        except ConnectionError:
            data = b""
        if not data:
            self.closed = True
            return False
        self.buffer += data
        return True

    def _head(self) -> tuple[int, dict[str, str]]:
        deadline = time.monotonic() + 10
        while b"\r\n\r\n" not in self.buffer:
            assert time.monotonic() < deadline, "no response head within 10 s"
            assert self._recv(deadline - time.monotonic()), "closed before a response head"
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        status_line, *header_lines = head.decode().split("\r\n")
        headers = {}
        for line in header_lines:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
        return int(status_line.split()[1]), headers

    def _rest(self) -> bytes:
        length = int(self.headers.get("content-length", "-1"))
        deadline = time.monotonic() + 10
        while len(self.buffer) < length and time.monotonic() < deadline and self._recv(1.0):
            pass
        return self.buffer

    def json(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.body)
        return value

    def next(self, timeout: float = 10.0) -> Block:
        """The next dispatched block (a comment-only block too), as EventSource parses it."""
        deadline = time.monotonic() + timeout
        while True:
            normalised = self.buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            if b"\n\n" in normalised:
                raw, rest = normalised.split(b"\n\n", 1)
                self.buffer = rest
                block = self._parse(raw.decode())
                self.blocks.append(block)
                return block
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no SSE block within {timeout}s"
            assert self._recv(remaining), "the stream ended"

    def _parse(self, raw: str) -> Block:
        block = Block()
        data: list[str] = []
        for line in raw.split("\n"):
            if line.startswith(":"):
                block.comments.append(line[1:])
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "event":
                block.event = value
            elif name == "data":
                data.append(value)
            elif name == "id" and "\0" not in value:
                block.id = value
                self.last_id = value
            elif name == "retry" and value.isdigit():
                block.retry = int(value)
        block.data = "\n".join(data) if data else None
        return block

    def frames(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The next ``count`` frames (blocks with data), heartbeats and retry lines skipped."""
        deadline = time.monotonic() + timeout
        frames: list[dict[str, Any]] = []
        while len(frames) < count:
            block = self.next(deadline - time.monotonic())
            if block.data is not None:
                frames.append(block.frame())
        return frames

    def events(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The next ``count`` event frames; any other frame on the way fails."""
        frames = self.frames(count, timeout)
        assert all(f["type"] == "event" for f in frames), frames
        return frames

    def expect(self, type_: str, timeout: float = 10.0) -> dict[str, Any]:
        (frame,) = self.frames(1, timeout)
        assert type_ == frame["type"], frame
        return frame

    def quiet(self, seconds: float = 0.5) -> list[dict[str, Any]]:
        """The frames that arrive within ``seconds`` (none is the usual hope)."""
        deadline = time.monotonic() + seconds
        frames: list[dict[str, Any]] = []
        while (remaining := deadline - time.monotonic()) > 0:
            if not self._recv(remaining):
                break
            while b"\n\n" in self.buffer.replace(b"\r\n", b"\n"):
                block = self.next(0.01)
                if block.data is not None:
                    frames.append(block.frame())
        return frames

    def until_closed(self, timeout: float = 10.0) -> list[Block]:
        """Reads to the end of the stream; the blocks that came before it."""
        first = len(self.blocks)
        deadline = time.monotonic() + timeout
        while not self.closed:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"the stream did not end within {timeout}s"
            if self._recv(remaining):
                while b"\n\n" in self.buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n"):
                    self.next(0.01)
        return self.blocks[first:]

    def close(self) -> None:
        self.sock.close()


def open_stream(
    relay: RelayProcess,
    user: str | None,
    *,
    headers: Mapping[str, str] | None = None,
    rcvbuf: int | None = None,
    **params: Any,
) -> SseStream:
    """``GET /v1/sse`` with these query parameters (None ones left out), as ``user`` if given."""
    query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
    sent = dict(headers or {})
    if user is not None:
        sent["Authorization"] = f"Bearer {token(user)}"
    return SseStream(relay.port, f"/v1/sse?{query}", sent, rcvbuf=rcvbuf)
