"""Stream tickets: one address, a short life while unused, one stream at a time, bounded."""

from __future__ import annotations

import itertools

from relay.core.tickets import Redeemed, Tickets


def book(ttl: float = 30.0, max_tickets: int = 10) -> Tickets:
    numbers = itertools.count(1)
    return Tickets(ttl=ttl, max_tickets=max_tickets, new_ticket=lambda: f"t{next(numbers)}")


def test_a_ticket_opens_a_stream_from_its_address_only() -> None:
    """Redeemed from the address it was issued to: the token; from another: nothing."""
    tickets, stream = book(), object()
    ticket = tickets.issue("token-a", "10.0.0.1", now=0)
    assert "t1" == ticket
    assert tickets.redeem("t1", "10.0.0.2", stream, now=1) is None
    assert tickets.redeem("unknown", "10.0.0.1", stream, now=1) is None
    assert Redeemed("token-a", None) == tickets.redeem("t1", "10.0.0.1", stream, now=1)


def test_an_unused_ticket_expires_after_ttl_from_issue_or_from_its_last_stream() -> None:
    """Unredeemed past ttl: refused. Held by a stream: valid however long; released: ttl more."""
    tickets, stream = book(ttl=30), object()
    tickets.issue("token-a", "a", now=0)
    assert tickets.redeem("t1", "a", stream, now=30) is None
    assert 0 == len(tickets)
    tickets.issue("token-b", "a", now=0)
    assert tickets.redeem("t2", "a", stream, now=29) is not None
    assert tickets.redeem("t2", "a", stream, now=5000) is not None  # a reconnect while held
    tickets.release("t2", stream, now=6000)
    assert Redeemed("token-b", None) == tickets.redeem("t2", "a", object(), now=6029)
    tickets.release("t2", stream, now=7000)  # not the holder any more: no effect
    assert tickets.redeem("t2", "a", object(), now=9000) is not None


def test_a_newer_stream_replaces_the_one_holding_the_ticket() -> None:
    """The second redemption says which stream held it, so the shell can close that one."""
    tickets, first, second = book(), object(), object()
    tickets.issue("token", "a", now=0)
    assert Redeemed("token", None) == tickets.redeem("t1", "a", first, now=1)
    assert Redeemed("token", first) == tickets.redeem("t1", "a", second, now=2)
    tickets.release("t1", first, now=3)  # the replaced stream ends: the ticket stays second's
    assert Redeemed("token", second) == tickets.redeem("t1", "a", first, now=100)


def test_the_book_is_bounded_forgetting_expired_then_the_oldest_unheld() -> None:
    """At max_tickets: expired ones go first, then the oldest no stream holds; all held: None."""
    tickets = book(ttl=30, max_tickets=2)
    tickets.issue("x", "a", now=0)  # t1
    tickets.issue("y", "a", now=10)  # t2
    assert "t3" == tickets.issue("z", "a", now=35)  # t1 expired at 30
    assert (2, None) == (len(tickets), tickets.redeem("t1", "a", object(), now=35))
    held = object()
    tickets.redeem("t3", "a", held, now=36)
    assert "t4" == tickets.issue("w", "a", now=36)  # t2, the oldest unheld, is forgotten
    assert tickets.redeem("t2", "a", object(), now=36) is None
    tickets.redeem("t4", "a", object(), now=37)
    assert tickets.issue("v", "a", now=38) is None  # both held
