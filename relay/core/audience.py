"""Audience keys: who a connection is, as the events' audiences name it.

An event's audience (``relay.log.audience``) lists the keys allowed to see the row: user ids,
as the owner column or the audience function of ``relay.track`` give them, and role keys,
``role:<name>``, which an audience function may add to reach every holder of a valid token with
that ``role`` claim (``role:anon`` for anonymous visitors with Supabase's anon key,
``role:authenticated`` for every signed-in user): a public gallery or feed. A connection is
registered with the router under each key its token holds, so the router's audience check
(relay/core/router.py) is the one check for both, live and by replay.

No user id can pose as a role: a token whose ``sub`` starts with ``role:`` is refused
(relay/core/auth.py, ``reserved_sub``). An owner column whose value starts with ``role:`` does
make its row visible to that role (the column is trusted as any owner value is: a writer who
may set it to another user's id may set it to a role too); docs/supabase.md says so.
"""

from __future__ import annotations

from relay.core.auth import ROLE_PREFIX, Claims

__all__ = ["ROLE_PREFIX", "audience_keys", "role_key"]


def role_key(role: str) -> str:
    """The audience key naming every holder of a token with this role."""
    return ROLE_PREFIX + role


def audience_keys(claims: Claims) -> tuple[str, ...]:
    """The keys a connection with these claims is reached by: its user id (none for an anonymous
    token) and its role's key (none without a role claim)."""
    keys = (claims.sub,) if claims.sub else ()
    return (*keys, role_key(claims.role)) if claims.role else keys
