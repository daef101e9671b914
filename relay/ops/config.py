"""Settings from the environment (prefix ``RELAY_``) and command-line flags, typed.

Each setting has one definition here: its type, default, environment variable and flag are
derived from it, so ``relay serve --help``, ``relay config check`` and deploy/relay.env.example
agree (the example file is written by relay/ops/envfile.py). A bad value fails at start with
one line naming the variable (as Starlette's config).
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from relay.errors import ConfigError
from relay.ops.values import (
    choice,
    ipv6_prefix,
    parse_bool,
    parse_duration,
    parse_list,
    parse_networks,
    parse_size,
    port_number,
    positive_int,
)

__all__ = [
    "Settings",
    "add_flags",
    "env_names",
    "parse_duration",
    "redact_dsn",
    "settings_from_args",
]


def _setting(
    default: Any,
    parse: Callable[[str], Any],
    help: str,
    *,
    secret: bool = False,
    env: tuple[str, ...] = (),
) -> Any:
    return field(
        default=default,
        metadata={"parse": parse, "help": help, "secret": secret, "env": env},
    )


def _default_replica_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True)
class Settings:
    """The relay's effective configuration. Durations are seconds, sizes bytes."""

    # Database
    dsn: str = _setting(
        "",
        str,
        "PostgreSQL DSN; a direct connection, not PgBouncer transaction pooling",
        secret=True,
        env=("RELAY_DSN", "DATABASE_URL"),
    )
    # Network
    host: str = _setting("127.0.0.1", str, "address to listen on (0.0.0.0 in containers)")
    port: int = _setting(8080, port_number, "port for websockets, long-polls and health")
    metrics_port: int = _setting(
        9480, port_number, "port of its own for /metrics and health (0: /metrics on the main port)"
    )
    tls_cert: str = _setting(
        "", str, "TLS certificate file (PEM), for deployments without a TLS proxy"
    )
    tls_key: str = _setting("", str, "TLS private key file (PEM)", secret=False)
    allowed_origins: tuple[str, ...] = _setting(
        (), parse_list, "comma-separated websocket Origins allowed (empty: any, with a warning)"
    )
    trusted_proxies: tuple[str, ...] = _setting(
        (),
        parse_networks,
        "comma-separated proxy addresses/CIDRs whose X-Forwarded-For is trusted",
    )
    max_connections: int = _setting(
        20000,
        positive_int,
        "open websockets and SSE streams plus long-polls in flight per process",
    )
    max_connections_per_ip: int = _setting(200, positive_int, "open connections per client address")
    connect_rate_per_ip: float = _setting(
        20.0, float, "new connections per second per client address (burst: twice that)"
    )
    ipv6_prefix: int = _setting(
        64, ipv6_prefix, "IPv6 clients count as one address per network of this prefix length"
    )
    request_timeout: float = _setting(
        10.0, parse_duration, "time from TCP accept to a complete HTTP request (else closed)"
    )
    max_handshakes: int = _setting(
        1000, positive_int, "sockets accepted whose HTTP request is not complete yet"
    )
    max_handshakes_per_ip: int = _setting(
        32, positive_int, "of those, from one client address (trusted proxies: no limit)"
    )
    websockets: bool = _setting(
        True, parse_bool, "serve websockets (off: kill switch, clients use long-polling)"
    )
    compression: bool = _setting(
        False, parse_bool, "permessage-deflate (costs 2 to 3 times the CPU)"
    )
    # Auth
    jwt_secret: str = _setting("", str, "HS256 secret", secret=True)
    jwks_file: str = _setting("", str, "JWKS file with the RS256/ES256 public keys")
    jwt_audience: str = _setting("", str, "required 'aud' claim (empty: not checked)")
    jwt_issuer: str = _setting("", str, "required 'iss' claim (empty: not checked)")
    jwt_leeway: float = _setting(5.0, parse_duration, "clock skew allowed on exp/nbf")
    auth_timeout: float = _setting(5.0, parse_duration, "time a client has to authenticate")
    insecure_dev: bool = _setting(
        False, parse_bool, "allow starting without any JWT key (development only)"
    )
    anonymous_roles: tuple[str, ...] = _setting(
        ("anon",),
        parse_list,
        "token roles accepted without a sub: anonymous visitors, who get rows whose audience "
        "names role:<role> (empty: every token needs a sub)",
    )
    supabase: bool = _setting(
        True,
        parse_bool,
        "serve the Supabase Realtime dialect at /realtime/v1/websocket and /socket/websocket",
    )
    supabase_publishable_keys: tuple[str, ...] = _setting(
        (),
        parse_list,
        "comma-separated sb_publishable_... keys accepted as an apikey for role anon "
        "(Supabase's new API keys, without a gateway that swaps them for a JWT)",
        secret=True,
    )
    # Protocol limits
    max_message_bytes: int = _setting(65536, parse_size, "largest client frame accepted")
    max_subscriptions: int = _setting(100, positive_int, "subscriptions per connection")
    max_filter_bytes: int = _setting(
        256 << 10,
        parse_size,
        "estimated memory of one connection's filters, summed over its subscriptions",
    )
    inbound_frame_rate: int = _setting(
        100, positive_int, "client frames per second per connection, pings included (burst 2x)"
    )
    inbound_byte_rate: int = _setting(
        256 << 10,
        parse_size,
        "client bytes per second per connection (burst 2x, at least one largest frame)",
    )
    queue_max_messages: int = _setting(
        1000, positive_int, "outbound frames buffered per connection"
    )
    queue_max_bytes: int = _setting(1 << 20, parse_size, "outbound bytes buffered per connection")
    slow_client_timeout: float = _setting(
        30.0, parse_duration, "a connection that does not drain for this long is aborted"
    )
    sse_heartbeat: float = _setting(
        15.0,
        parse_duration,
        "an SSE stream gets a comment this often (keeps proxies from idling it out)",
    )
    # Pipeline
    listen_window: float = _setting(5.0, parse_duration, "LISTEN wait between heartbeat queries")
    query_timeout: float = _setting(
        3.0, parse_duration, "a database call taking longer means the connection is dead"
    )
    poll_interval: float = _setting(
        0.02, parse_duration, "longest wait between the sequencer's looks at an idle inbox"
    )
    batch_window: float = _setting(
        0.001,
        parse_duration,
        "sequencer's wait after a batch; what commits meanwhile joins the next",
    )
    sequencer_batch: int = _setting(
        1000, positive_int, "inbox rows moved per sequencer transaction"
    )
    heartbeat_interval: float = _setting(
        5.0, parse_duration, "interval of heartbeat events through the log (0: off)"
    )
    retention: float = _setting(
        86400.0, parse_duration, "how long the log keeps events; older cursors get reset"
    )
    prune_interval: float = _setting(60.0, parse_duration, "how often the sequencer prunes the log")
    replay_batch: int = _setting(500, positive_int, "log rows fetched per replay query")
    replay_pool_size: int = _setting(
        8, positive_int, "database connections for replays and long-polls"
    )
    replay_wait: float = _setting(
        30.0,
        parse_duration,
        "how long a replay may queue for one of them before the client is told to retry (1011)",
    )
    shutdown_timeout: float = _setting(10.0, parse_duration, "drain deadline on SIGTERM")
    replica_id: str = _setting(
        "", str, "name of this replica in logs and heartbeats (default: host-pid)"
    )
    event_loop: str = _setting(
        "asyncio",
        choice("asyncio", "uvloop"),
        "the event loop: asyncio, or uvloop (installed with pgrelay[uvloop])",
    )
    # Logs
    log_format: str = _setting(
        "auto",
        choice("auto", "json", "console"),
        "json lines, console, or auto (console on a TTY)",
    )
    log_level: str = _setting("info", choice("debug", "info", "warning", "error"), "log level")
    log_user_ids: str = _setting(
        "hash", choice("hash", "plain", "none"), "how user ids appear in logs"
    )
    # Demo
    demo: bool = _setting(
        False, parse_bool, "serve the demo page and its click endpoint (never in production)"
    )

    @classmethod
    def load(
        cls, environ: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None
    ) -> Settings:
        """Environment first, then flags given on the command line; raises ConfigError."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for spec in fields(cls):
            meta = spec.metadata
            for name in env_names(spec.name, meta):
                if name in environ:
                    values[spec.name] = _parse(name, environ[name], meta["parse"])
                    break
        for name, raw in (overrides or {}).items():
            if raw is not None:
                meta = cls.__dataclass_fields__[name].metadata
                values[name] = (
                    _parse(f"--{_flag(name)}", raw, meta["parse"]) if isinstance(raw, str) else raw
                )
        settings = cls(**values)
        settings.validate()
        if not settings.replica_id:
            settings = _replace(settings, replica_id=_default_replica_id())
        return settings

    def validate(self) -> None:
        """Refuses combinations that cannot work, with one line saying what to do."""
        if not self.dsn:
            raise ConfigError("no database: set RELAY_DSN or DATABASE_URL (or pass --dsn)")
        if not (self.jwt_secret or self.jwks_file or self.insecure_dev):
            raise ConfigError(
                "no JWT key: set RELAY_JWT_SECRET or RELAY_JWKS_FILE "
                "(or --insecure-dev for local development only)"
            )
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("TLS needs both RELAY_TLS_CERT and RELAY_TLS_KEY")
        if self.query_timeout <= 0 or self.listen_window <= 0:
            raise ConfigError("RELAY_QUERY_TIMEOUT and RELAY_LISTEN_WINDOW must be greater than 0")
        if not 0 < self.batch_window <= self.poll_interval:
            raise ConfigError(
                "RELAY_BATCH_WINDOW must be greater than 0 and at most RELAY_POLL_INTERVAL"
            )
        if self.request_timeout <= 0:
            raise ConfigError("RELAY_REQUEST_TIMEOUT must be greater than 0")
        if self.metrics_port and self.metrics_port == self.port:
            raise ConfigError("RELAY_METRICS_PORT must differ from RELAY_PORT (0: the main port)")
        if self.retention < 60:
            raise ConfigError("RELAY_RETENTION must be at least 60s")
        if self.inbound_byte_rate <= 0:
            raise ConfigError("RELAY_INBOUND_BYTE_RATE must be greater than 0")
        if self.event_loop == "uvloop" and not _importable("uvloop"):
            raise ConfigError(
                "RELAY_EVENT_LOOP=uvloop, but uvloop is not installed: "
                "pip install 'pgrelay[uvloop]' (or set RELAY_EVENT_LOOP=asyncio)"
            )

    def redacted(self) -> dict[str, Any]:
        """Every setting, with secrets and DSN passwords hidden: safe to print and log."""
        out: dict[str, Any] = {}
        for spec in fields(self):
            value = getattr(self, spec.name)
            if spec.name == "dsn":
                value = redact_dsn(value)
            elif spec.metadata["secret"] and value:
                value = "********"
            out[spec.name] = list(value) if isinstance(value, tuple) else value
        return out


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def _replace(settings: Settings, **changes: Any) -> Settings:
    from dataclasses import replace

    return replace(settings, **changes)


def env_names(name: str, meta: Mapping[str, Any]) -> tuple[str, ...]:
    """The environment variables a setting is read from, in order (its own, else RELAY_NAME)."""
    return tuple(meta["env"]) or (f"RELAY_{name.upper()}",)


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _parse(source: str, raw: str, parse: Callable[[str], Any]) -> Any:
    try:
        return parse(raw)
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def redact_dsn(dsn: str) -> str:
    """The DSN with its password replaced, in URL or key=value form."""
    if "://" in dsn:
        parts = urlsplit(dsn)
        if parts.password is not None:
            host = parts.hostname or ""
            netloc = f"{parts.username}:********@{host}" + (f":{parts.port}" if parts.port else "")
            return urlunsplit(parts._replace(netloc=netloc))
        return dsn
    return re.sub(r"(password\s*=\s*)('[^']*'|\S+)", r"\1********", dsn)


def add_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per setting; the help names the environment variable and the default."""
    for spec in fields(Settings):
        meta = spec.metadata
        env = " / ".join(env_names(spec.name, meta))
        default = spec.default
        shown = ",".join(default) if isinstance(default, tuple) else default
        help_text = f"{meta['help']} [env {env}; default {shown!r}]".replace("%", "%%")
        if meta["parse"] is parse_bool:
            parser.add_argument(
                f"--{_flag(spec.name)}",
                dest=spec.name,
                action="store_true",
                default=None,
                help=help_text,
            )
        else:
            parser.add_argument(
                f"--{_flag(spec.name)}", dest=spec.name, default=None, help=help_text
            )


def settings_from_args(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> Settings:
    overrides = {spec.name: getattr(args, spec.name, None) for spec in fields(Settings)}
    return Settings.load(environ, overrides)
