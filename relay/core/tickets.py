"""Stream tickets: how an EventSource, which cannot send an ``Authorization`` header, opens a
stream without a long-lived token in its URL.

A client trades its bearer token for a ticket (``POST /v1/sse/ticket``, the token in the
header) and opens ``GET /v1/sse?ticket=...``. The URL then holds a random string of 256 bits
that is worth much less than the token it stands for:

* it opens an SSE stream on this relay process and nothing else (not the websocket, not the
  long-poll, not the app's own API the token may also open);
* only from the client address it was issued to;
* within ``ttl`` seconds of being issued, or of its last stream ending: while a stream holds it,
  EventSource's own reconnects (same URL, plus ``Last-Event-ID``) may use it again;
* never past its token's expiry: the token is verified again at each use;
* for one stream at a time: a newer stream with the ticket replaces the one holding it (whose
  socket may be dead without the relay knowing yet);
* the relay keeps at most ``max_tickets``; past that, the oldest ticket no stream holds is
  forgotten (its next use is refused, and the client asks for another).

A process restart forgets every ticket, and another replica does not know them: the client's
next reconnect is refused (401) and it asks for a new ticket (the JS client does). The relay
never logs request targets. Pure: time and randomness are passed in.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

__all__ = ["MAX_TICKETS", "TICKET_TTL", "Redeemed", "Tickets"]

TICKET_TTL: Final = 30.0  # seconds a ticket no stream holds stays valid
MAX_TICKETS: Final = 10_000


def _new_ticket() -> str:
    return secrets.token_urlsafe(32)


@dataclass(slots=True, eq=False)
class _Ticket:
    token: str
    address: str
    expires: float  # when no stream holds it
    holder: object | None = None  # the stream holding it


@dataclass(frozen=True, slots=True)
class Redeemed:
    """A ticket taken by a stream: the token to verify, and the stream it took it from."""

    token: str
    replaced: object | None


class Tickets:
    """This process's tickets; see the module docstring for the rules."""

    def __init__(
        self,
        *,
        ttl: float = TICKET_TTL,
        max_tickets: int = MAX_TICKETS,
        new_ticket: Callable[[], str] = _new_ticket,
    ) -> None:
        self.ttl = ttl
        self.max_tickets = max_tickets
        self.new_ticket = new_ticket
        self._tickets: dict[str, _Ticket] = {}  # oldest first

    def __len__(self) -> int:
        return len(self._tickets)

    def issue(self, token: str, address: str, now: float) -> str | None:
        """A new ticket for a verified token, or None when ``max_tickets`` streams hold one."""
        if len(self._tickets) >= self.max_tickets and not self._make_room(now):
            return None
        ticket = self.new_ticket()
        self._tickets[ticket] = _Ticket(token, address, now + self.ttl)
        return ticket

    def redeem(self, ticket: str, address: str, holder: object, now: float) -> Redeemed | None:
        """The ticket's token for ``holder``'s stream, or None (unknown, expired, another
        address). The stream that held it until now, if any, is returned to be closed."""
        entry = self._tickets.get(ticket)
        if entry is None or entry.address != address:
            return None
        if entry.holder is None and now >= entry.expires:
            del self._tickets[ticket]
            return None
        replaced, entry.holder = entry.holder, holder
        return Redeemed(entry.token, replaced)

    def release(self, ticket: str, holder: object, now: float) -> None:
        """``holder``'s stream ended: the ticket stays valid for ``ttl`` seconds from now."""
        entry = self._tickets.get(ticket)
        if entry is not None and entry.holder is holder:
            entry.holder = None
            entry.expires = now + self.ttl

    def _make_room(self, now: float) -> bool:
        """Forgets expired tickets, else the oldest no stream holds; False if every one is held."""
        expired = [t for t, e in self._tickets.items() if e.holder is None and now >= e.expires]
        for ticket in expired:
            del self._tickets[ticket]
        if expired:
            return True
        for ticket, entry in self._tickets.items():
            if entry.holder is None:
                del self._tickets[ticket]
                return True
        return False
