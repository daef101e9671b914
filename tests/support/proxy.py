"""A TCP proxy on 127.0.0.1 in front of a relay, for the drops a test causes: ``close()`` ends
every proxied connection as a server closing it would (FIN both ways), ``cut()`` resets them as a
lost network does (RST), and while ``down`` new connections are closed at once."""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
import time
from collections.abc import Iterator

__all__ = ["TcpProxy", "tcp_proxy"]


class TcpProxy:
    """Forwards each accepted connection to ``127.0.0.1:target``, one thread per connection
    (the drops happen in it: a socket closed while another thread reads it sends nothing)."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.down = False
        self.accepted = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self._drops: dict[int, str] = {}  # pair id -> "close" or "cut", asked for
        self._pairs: set[int] = set()
        self._lock = threading.Lock()
        self._running = True
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while self._running:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.down:
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self.accepted += 1
                pair = self.accepted
                self._pairs.add(pair)
            threading.Thread(target=self._pump, args=(pair, client, upstream), daemon=True).start()

    def _pump(self, pair: int, client: socket.socket, upstream: socket.socket) -> None:
        peers = {client: upstream, upstream: client}
        open_ends = {client, upstream}
        try:
            while open_ends:
                with self._lock:
                    drop = self._drops.pop(pair, None)
                if drop is not None:
                    for sock in (client, upstream):
                        if drop == "cut":  # an RST, not a FIN
                            sock.setsockopt(
                                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                            )
                        else:
                            with contextlib.suppress(OSError):
                                sock.shutdown(socket.SHUT_RDWR)
                    return
                readable, _, _ = select.select(list(open_ends), [], [], 0.05)
                for sock in readable:
                    data = sock.recv(65536)
                    if data:
                        peers[sock].sendall(data)
                    else:
                        open_ends.discard(sock)
                        with contextlib.suppress(OSError):
                            peers[sock].shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            client.close()
            upstream.close()
            with self._lock:
                self._pairs.discard(pair)
                self._drops.pop(pair, None)

    def _drop(self, how: str) -> None:
        with self._lock:
            pairs = set(self._pairs)
            self._drops.update(dict.fromkeys(pairs, how))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with self._lock:
                if not pairs & self._pairs:
                    return
            time.sleep(0.01)

    def close(self) -> None:
        """Ends every connection with a FIN each way, as a server closing it would."""
        self._drop("close")

    def cut(self) -> None:
        """Resets every connection (RST each way), as a lost network does."""
        self._drop("cut")

    def stop(self) -> None:
        self._running = False
        self.listener.close()
        self.cut()


@contextlib.contextmanager
def tcp_proxy(target: int) -> Iterator[TcpProxy]:
    proxy = TcpProxy(target)
    try:
        yield proxy
    finally:
        proxy.stop()
