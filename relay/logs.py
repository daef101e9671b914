"""Structured logs: JSON lines by default, the console renderer on a TTY.

One event a line with its keys. Tokens and DSN passwords never reach a log line: the relay never
passes them to a logger, and user ids are hashed unless configured otherwise.
"""

from __future__ import annotations

import hashlib
import logging
import sys

import structlog

__all__ = ["configure_logging", "user_label"]


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
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=[
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
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
