"""Structured logs: JSON lines by default, the console renderer on a TTY.

One event a line with its keys. Tokens and DSN passwords never reach a log line: the relay never
passes them to a logger, and user ids are hashed unless configured otherwise.

Warnings and errors cannot flood: each kind of line (the relay's event name, or a library's
logger and first message line, such as asyncio's "socket.accept() out of system resource") is
written at most ``LOG_BURST`` times per ``LOG_WINDOW`` seconds; the lines beyond are counted,
and each count is written once: as ``suppressed`` on the kind's first line of a later window,
or, within a second of its window's end, as a ``log_suppressed`` line (``key``, ``count``).
Info and debug lines are not limited.
"""

from __future__ import annotations

import hashlib
import logging
import sys
import time
from collections.abc import MutableMapping
from typing import Any, Final

import structlog

__all__ = [
    "LOG_BURST",
    "LOG_WINDOW",
    "LogLimiter",
    "configure_logging",
    "flush_suppressed",
    "user_label",
]

LOG_BURST: Final = 10  # lines of one kind per window
LOG_WINDOW: Final = 10.0  # seconds
MAX_KINDS: Final = 256  # kinds tracked; beyond, further kinds share one budget
OTHER: Final = "(other)"
_LIMITED_LEVELS: Final = frozenset({"warning", "error", "critical", "exception"})


class _Kind:
    __slots__ = ("emitted", "started", "suppressed")

    def __init__(self, now: float) -> None:
        self.started = now
        self.emitted = 0
        self.suppressed = 0


class LogLimiter:
    """Pure: at most ``burst`` lines per kind per ``window`` seconds; time passed in. Memory:
    at most ``max_kinds`` kinds (the rest share the kind ``(other)``)."""

    def __init__(
        self, burst: int = LOG_BURST, window: float = LOG_WINDOW, max_kinds: int = MAX_KINDS
    ) -> None:
        self.burst = burst
        self.window = window
        self.max_kinds = max_kinds
        self._kinds: dict[str, _Kind] = {}

    def allow(self, key: str, now: float) -> int | None:
        """None: suppress this line. Otherwise write it, with the number of lines of its kind
        suppressed since its last line (and not yet reported by ``drain``)."""
        kind = self._kinds.get(key)
        if kind is None:
            if len(self._kinds) >= self.max_kinds:
                key = OTHER
                kind = self._kinds.get(key)
            if kind is None:
                kind = self._kinds[key] = _Kind(now)
        if now - kind.started >= self.window:
            kind.started, kind.emitted = now, 0
        if kind.emitted >= self.burst:
            kind.suppressed += 1
            return None
        kind.emitted += 1
        reported, kind.suppressed = kind.suppressed, 0
        return reported

    def drain(self, now: float) -> list[tuple[str, int]]:
        """The kinds whose window ended with lines suppressed, and how many; counted once."""
        out = []
        for key, kind in self._kinds.items():
            if kind.suppressed and now - kind.started >= self.window:
                out.append((key, kind.suppressed))
                kind.suppressed = 0
        return out


_limiter = LogLimiter()


def _limit_structlog(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    level, event = event_dict.get("level"), event_dict.get("event")
    if level not in _LIMITED_LEVELS or event == "log_suppressed":
        return event_dict
    reported = _limiter.allow(f"relay:{event}", time.monotonic())
    if reported is None:
        raise structlog.DropEvent
    if reported:
        event_dict["suppressed"] = reported
    return event_dict


class _LimitFilter(logging.Filter):
    """The same budget for libraries' lines (asyncio, websockets, psycopg)."""

    def filter(self, record: logging.LogRecord) -> bool:
        first = str(record.msg).split("\n", 1)[0][:120]
        reported = _limiter.allow(f"{record.name}:{first}", time.monotonic())
        if reported is None:
            return False
        if reported:
            record.suppressed = reported
        return True


def flush_suppressed() -> None:
    """Writes one ``log_suppressed`` line per kind whose window ended with lines suppressed
    (the relay calls this every second)."""
    for key, count in _limiter.drain(time.monotonic()):
        structlog.get_logger("relay.ops.logs").warning("log_suppressed", key=key, count=count)


def configure_logging(fmt: str = "auto", level: str = "info") -> None:
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    renderer: structlog.types.Processor = (
        structlog.dev.ConsoleRenderer() if fmt == "console" else structlog.processors.JSONRenderer()
    )
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    # Libraries log through the standard logging module (psycopg, for one, when it closes a
    # connection whose query was cancelled): render those lines the same way, one JSON each.
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_LimitFilter())
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=[
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                structlog.stdlib.ExtraAdder(allow=["suppressed"]),
                timestamper,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(logging.WARNING, logging.getLevelName(level.upper())))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            _limit_structlog,
            timestamper,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )


def user_label(user: str, mode: str) -> str | None:
    """How a user id appears in logs: hashed (stable, not reversible), plain, or not at all."""
    if mode == "plain":
        return user
    if mode == "none":
        return None
    return hashlib.sha256(user.encode()).hexdigest()[:16]
