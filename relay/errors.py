"""The exceptions pgrelay raises, one small hierarchy.

``RelayError``
  ``ConfigError``     a setting is missing or malformed; the message is one line for the operator.
  ``ProtocolError``   a client sent something protocol v1 does not allow; ``code`` is the error
                      code sent back (``bad_message``, ``unknown_table``, ``forbidden``,
                      ``too_many_subscriptions``...).
  ``AuthError``       a token was refused; ``reason`` is short and bounded: a metric label and
                      the close reason. Never carries the token.
  ``CursorError``     a cursor cannot be resumed from; ``reason`` is the reset reason sent to the
                      client (``cursor_expired``, ``epoch_changed``), or ``bad_cursor`` when it
                      does not parse at all.
  ``DatabaseError``   the database side is missing or in a state the relay cannot work with
                      (schema not installed, incompatible schema version).
"""

from __future__ import annotations

__all__ = [
    "AuthError",
    "ConfigError",
    "CursorError",
    "DatabaseError",
    "LogUnavailable",
    "ProtocolError",
    "RelayError",
]


class RelayError(Exception):
    """Base of every exception pgrelay raises on purpose."""


class ConfigError(RelayError):
    """A setting is missing or malformed."""


class ProtocolError(RelayError):
    """A client message broke protocol v1."""

    def __init__(self, code: str, message: str, *, sub_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.sub_id = sub_id


class AuthError(RelayError):
    """A token was refused. ``reason`` is short and bounded: a metric label."""

    def __init__(self, reason: str, message: str | None = None) -> None:
        super().__init__(message or reason)
        self.reason = reason


class CursorError(RelayError):
    """A cursor cannot be resumed from."""

    def __init__(self, reason: str, message: str | None = None) -> None:
        super().__init__(message or reason)
        self.reason = reason


class DatabaseError(RelayError):
    """The database side is missing or incompatible."""


class LogUnavailable(RelayError):
    """The log cannot be read now (database unreachable, pool exhausted, query timed out): the
    client may retry with the same cursor."""
