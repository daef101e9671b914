"""Cursors: opaque strings that name a position in one epoch of the log.

A client treats a cursor as an opaque token. Inside it is the log's epoch (a UUID created when
``sql/install.sql`` first ran) and a position, so a cursor from another install, or from before
a restore, is recognised instead of silently resuming at the wrong place.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from relay.core.wire import cursor_text
from relay.errors import CursorError

__all__ = ["Cursor"]

_CURSOR = re.compile(r"^([0-9a-f]{32})\.([0-9]{1,19})$")
_MAX_POS = 2**63 - 1


@dataclass(frozen=True, slots=True)
class Cursor:
    """A position in the log of one epoch."""

    epoch: str  # the epoch UUID as 32 lowercase hex digits
    pos: int

    def encode(self) -> str:
        return cursor_text(self.epoch, self.pos)

    @classmethod
    def decode(cls, text: object) -> Cursor:
        """Parses a client's cursor; raises CursorError('bad_cursor') when it is not one."""
        if not isinstance(text, str) or (match := _CURSOR.match(text)) is None:
            raise CursorError("bad_cursor", "the cursor is not one this relay issued")
        pos = int(match.group(2))
        if pos > _MAX_POS:
            raise CursorError("bad_cursor", "the cursor is out of range")
        return cls(match.group(1), pos)
