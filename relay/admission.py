"""Who may open a connection: Origin allow-list, per-address rate and concurrency limits.

Pure: the shell passes the handshake's facts (peer address, headers) and the time. Memory is
bounded: at most ``max_tracked`` addresses are remembered; past that the least recently seen
address with no open connection is forgotten (its bucket would be full again by now anyway).
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

__all__ = ["Admission", "Decision", "client_address"]

MAX_TRACKED: Final = 100_000


@dataclass(frozen=True, slots=True)
class Decision:
    """``status`` 0 means admitted; otherwise the HTTP status to refuse with and why."""

    status: int
    reason: str = ""

    @property
    def admitted(self) -> bool:
        return self.status == 0


ADMITTED: Final = Decision(0)


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def client_address(peer: str, forwarded_for: str | None, trusted: Iterable[Network]) -> str:
    """The client's address: X-Forwarded-For is believed only when the peer is a trusted proxy,
    and then walked from the right, skipping trusted proxies, to the first address not ours."""
    trusted = tuple(trusted)

    def is_trusted(text: str) -> bool:
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            return False
        return any(address in network for network in trusted)

    if not forwarded_for or not is_trusted(peer):
        return peer
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not is_trusted(hop):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return peer  # a forged or garbled header: fall back to the proxy itself
    return peer


class _Bucket:
    __slots__ = ("open", "tokens", "updated")

    def __init__(self, tokens: float, now: float) -> None:
        self.tokens = tokens
        self.updated = now
        self.open = 0


class Admission:
    """Origin allow-list, new connections per second per address (token bucket, burst twice
    the rate), and open connections per address."""

    def __init__(
        self,
        *,
        allowed_origins: Iterable[str] = (),
        rate_per_ip: float = 20.0,
        max_open_per_ip: int = 200,
        max_tracked: int = MAX_TRACKED,
    ) -> None:
        self.allowed_origins = frozenset(o.rstrip("/").lower() for o in allowed_origins)
        self.rate = rate_per_ip
        self.burst = max(1.0, 2 * rate_per_ip)
        self.max_open = max_open_per_ip
        self.max_tracked = max_tracked
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def check_origin(self, origin: str | None) -> Decision:
        """Browsers always send Origin; other clients may not, and are not subject to it."""
        if not self.allowed_origins or origin is None:
            return ADMITTED
        if origin.rstrip("/").lower() in self.allowed_origins:
            return ADMITTED
        return Decision(403, "origin")

    def admit(self, address: str, now: float) -> Decision:
        """Takes a token and an open slot for ``address``, or says why not."""
        bucket = self._bucket(address, now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        if bucket.open >= self.max_open:
            return Decision(429, "ip_connections")
        if bucket.tokens < 1.0:
            return Decision(429, "ip_rate")
        bucket.tokens -= 1.0
        bucket.open += 1
        return ADMITTED

    def release(self, address: str) -> None:
        """An admitted connection from ``address`` ended."""
        bucket = self._buckets.get(address)
        if bucket is not None and bucket.open > 0:
            bucket.open -= 1

    def open_count(self, address: str) -> int:
        bucket = self._buckets.get(address)
        return 0 if bucket is None else bucket.open

    def _bucket(self, address: str, now: float) -> _Bucket:
        bucket = self._buckets.get(address)
        if bucket is not None:
            self._buckets.move_to_end(address)
            return bucket
        if len(self._buckets) >= self.max_tracked:
            self._evict()
        bucket = self._buckets[address] = _Bucket(self.burst, now)
        return bucket

    def _evict(self) -> None:
        for address, bucket in self._buckets.items():  # least recently seen first
            if bucket.open == 0:
                del self._buckets[address]
                return
        # Every tracked address has open connections: the per-process connection limit
        # bounds this case, so the map cannot exceed max_connections entries beyond max_tracked.
