"""Who may open a connection: Origin allow-list, per-address rate and concurrency limits, and
the sockets whose HTTP request is still arriving (``Intake``).

Pure: the shell passes the handshake's facts (peer address, headers) and the time. Memory is
bounded: at most ``max_tracked`` addresses are remembered; past that the least recently seen
address with no open connection is forgotten (its bucket would be full again by now anyway).

Per-address limits count an IPv6 client by its network prefix (``ipv6_prefix``, a /64 by
default: one subscriber's LAN usually gets a /64 or more, so its addresses are one budget), an
IPv4 client (and an IPv4-mapped IPv6 address) by its address (``address_key``).
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

__all__ = [
    "IPV6_PREFIX",
    "Admission",
    "Decision",
    "Intake",
    "address_key",
    "client_address",
    "socket_budget",
]

MAX_TRACKED: Final = 100_000
IPV6_PREFIX: Final = 64


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


def address_key(address: str, ipv6_prefix: int = IPV6_PREFIX) -> str:
    """The key per-address limits count under: an IPv6 address's network of ``ipv6_prefix``
    bits (``2001:db8:1:2::/64``), an IPv4 (or IPv4-mapped IPv6) address as itself; a string
    that is not an address (a Unix socket's peer) as itself."""
    try:
        parsed = ipaddress.ip_address(address.split("%", 1)[0])  # no zone id
    except ValueError:
        return address
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        return str(ipaddress.IPv6Network((parsed, ipv6_prefix), strict=False))
    return str(parsed)


class _Bucket:
    __slots__ = ("open", "tokens", "updated")

    def __init__(self, tokens: float, now: float) -> None:
        self.tokens = tokens
        self.updated = now
        self.open = 0


class Admission:
    """Origin allow-list, new connections per second per address (token bucket, burst twice
    the rate), and open connections per address (IPv6: per ``ipv6_prefix`` network)."""

    def __init__(
        self,
        *,
        allowed_origins: Iterable[str] = (),
        rate_per_ip: float = 20.0,
        max_open_per_ip: int = 200,
        max_tracked: int = MAX_TRACKED,
        ipv6_prefix: int = IPV6_PREFIX,
    ) -> None:
        self.ipv6_prefix = ipv6_prefix
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
        bucket = self._bucket(address_key(address, self.ipv6_prefix), now)
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
        bucket = self._buckets.get(address_key(address, self.ipv6_prefix))
        if bucket is not None and bucket.open > 0:
            bucket.open -= 1

    def open_count(self, address: str) -> int:
        bucket = self._buckets.get(address_key(address, self.ipv6_prefix))
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


def socket_budget(nofile: int, reserve: int) -> int:
    """Client sockets the main port may hold with ``nofile`` file descriptors, leaving
    ``reserve`` for everything else (database connections, the health port, stdio, epoll):
    past it an accepted socket is closed at once, so accept() never meets EMFILE."""
    return max(1, nofile - reserve)


class Intake:
    """Sockets from TCP accept on, before any admission check can run.

    ``accept`` counts a socket open and its handshake in progress, or refuses it (the shell
    closes it at once): beyond ``max_sockets`` open (the file budget), ``max_handshakes``
    handshakes in progress, or ``max_handshakes_per_address`` from one address (IPv6: one
    ``ipv6_prefix`` network). ``address`` None is a trusted proxy's: only the total applies.
    A handshake is in progress until its HTTP request is complete (``request_complete``) or its
    socket closes (``closed``). Memory: one entry per address with a handshake in progress, so
    at most ``max_handshakes`` entries.
    """

    def __init__(
        self,
        *,
        max_sockets: int,
        max_handshakes: int,
        max_handshakes_per_address: int,
        ipv6_prefix: int = IPV6_PREFIX,
    ) -> None:
        self.max_sockets = max_sockets
        self.max_handshakes = max_handshakes
        self.max_per_address = max_handshakes_per_address
        self.ipv6_prefix = ipv6_prefix
        self.sockets = 0
        self.handshakes = 0
        self._per_address: dict[str, int] = {}

    def accept(self, address: str | None) -> Decision:
        """A socket was accepted from ``address``: counted, or refused with the reason."""
        if self.sockets >= self.max_sockets:
            return Decision(503, "sockets")
        if self.handshakes >= self.max_handshakes:
            return Decision(503, "handshakes")
        if address is not None:
            key = address_key(address, self.ipv6_prefix)
            count = self._per_address.get(key, 0)
            if count >= self.max_per_address:
                return Decision(429, "ip_handshakes")
            self._per_address[key] = count + 1
        self.sockets += 1
        self.handshakes += 1
        return ADMITTED

    def request_complete(self, address: str | None) -> None:
        """An accepted socket's request arrived: its handshake no longer counts."""
        self.handshakes = max(0, self.handshakes - 1)
        if address is None:
            return
        key = address_key(address, self.ipv6_prefix)
        count = self._per_address.get(key, 0)
        if count <= 1:
            self._per_address.pop(key, None)
        else:
            self._per_address[key] = count - 1

    def closed(self, address: str | None, *, handshaking: bool) -> None:
        """An accepted socket closed; ``handshaking`` if its request never completed."""
        if handshaking:
            self.request_complete(address)
        self.sockets = max(0, self.sockets - 1)

    def handshakes_from(self, address: str) -> int:
        return self._per_address.get(address_key(address, self.ipv6_prefix), 0)
