"""Values of settings, parsed from their text: durations, sizes, booleans, lists, networks,
ports. Each raises ValueError with a message naming the expected form; relay/ops/config.py
prefixes it with the variable or flag that carried the value.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable

__all__ = [
    "choice",
    "ipv6_prefix",
    "parse_bool",
    "parse_duration",
    "parse_list",
    "parse_networks",
    "parse_size",
    "port_number",
    "positive_int",
]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+)\s*(b|kib|mib|gib|kb|mb)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"b": 1, "kib": 1024, "kb": 1024, "mib": 1 << 20, "mb": 1 << 20, "gib": 1 << 30}


def parse_duration(text: str) -> float:
    """'250ms', '5s', '2m', '24h', '1d' or plain seconds, as seconds."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a duration (like 250ms, 5s, 2m, 24h)")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_size(text: str) -> int:
    """'65536', '64KiB', '1MiB' (or kb/mb, binary), as bytes."""
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a size (like 65536, 64KiB, 1MiB)")
    return int(match.group(1)) * _SIZE_UNITS[(match.group(2) or "b").lower()]


def parse_bool(text: str) -> bool:
    """true/false, on/off, yes/no, 1/0; empty is false."""
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"{text!r} is not a boolean (true/false, on/off, 1/0)")


def parse_list(text: str) -> tuple[str, ...]:
    """Comma-separated items, blanks dropped."""
    return tuple(item.strip() for item in text.split(",") if item.strip())


def parse_networks(text: str) -> tuple[str, ...]:
    """Comma-separated addresses or CIDR networks."""
    items = parse_list(text)
    for item in items:
        ipaddress.ip_network(item, strict=False)  # raises ValueError with a clear message
    return items


def choice(*allowed: str) -> Callable[[str], str]:
    """A parser accepting one of ``allowed``."""

    def parse(text: str) -> str:
        if text not in allowed:
            raise ValueError(f"{text!r} is not one of {', '.join(allowed)}")
        return text

    return parse


def port_number(text: str) -> int:
    """A TCP port, 0 to 65535."""
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError(f"{value} is not a port number")
    return value


def ipv6_prefix(text: str) -> int:
    """An IPv6 prefix length, 1 to 128."""
    value = int(text)
    if not 1 <= value <= 128:
        raise ValueError(f"{value} is not an IPv6 prefix length (1 to 128)")
    return value


def positive_int(text: str) -> int:
    """An integer greater than 0."""
    value = int(text)
    if value <= 0:
        raise ValueError(f"{value} must be greater than 0")
    return value
