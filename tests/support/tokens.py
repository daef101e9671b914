"""Test tokens: HS256 JWTs signed with the secret every test relay (and benchmark server) uses."""

from __future__ import annotations

import time
from typing import Any

import jwt

__all__ = ["SECRET", "token"]

SECRET = "test-secret-with-enough-entropy-0123456789"


def token(sub: str, *, ttl: float = 3600, secret: str = SECRET, **claims: Any) -> str:
    """A token for `sub`, valid for `ttl` seconds from now, with any extra claims."""
    now = time.time()
    return jwt.encode({"sub": sub, "exp": now + ttl, "iat": now, **claims}, secret, "HS256")
