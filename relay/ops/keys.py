"""The relay's token keys, from its settings: the HS256 secret and the JWKS file.

Reading the file is the only I/O; checking the document and verifying tokens is the core's
(relay/core/auth.py). Errors are one line (ConfigError), reported at start.
"""

from __future__ import annotations

import json
import os
from typing import Any

from relay.core.auth import Authenticator, AuthSettings, check_jwks_shape, one_line
from relay.errors import ConfigError
from relay.ops.config import Settings

__all__ = ["build_authenticator", "load_jwks_file"]


def load_jwks_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Reads a JWKS document; raises ConfigError with one line when it is not usable."""
    try:
        with open(path, encoding="utf-8") as f:
            document = json.load(f)
    except OSError as exc:
        raise ConfigError(
            f"cannot read the JWKS file {os.fspath(path)!r}: {exc.strerror}"
        ) from None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError
        raise ConfigError(
            f"the JWKS file {os.fspath(path)!r} is not valid JSON: {one_line(exc)}"
        ) from None
    check_jwks_shape(document, f"the JWKS file {os.fspath(path)!r}")
    return dict(document)


def build_authenticator(settings: Settings) -> Authenticator:
    """The authenticator the settings describe."""
    jwks = load_jwks_file(settings.jwks_file) if settings.jwks_file else None
    return Authenticator(
        AuthSettings(
            hs256_secret=settings.jwt_secret or None,
            jwks=jwks,
            audience=settings.jwt_audience or None,
            issuer=settings.jwt_issuer or None,
            leeway=settings.jwt_leeway,
            anonymous_roles=frozenset(settings.anonymous_roles),
        )
    )
