"""The ``relay`` command.

``relay sql install|uninstall|show``   what a DBA runs (or reads) on the database side.
``relay serve``                        the relay process frontends connect to.
``relay config check``                 prints the effective configuration, secrets redacted.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from functools import partial

import psycopg

from relay.errors import RelayError
from relay.ops.config import Settings, add_flags, settings_from_args
from relay.ops.datafiles import install_script, uninstall_script
from relay.ops.envfile import render_env_example

__all__ = ["main"]


def _dsn_from(args: argparse.Namespace) -> str:
    dsn: str | None = args.dsn or os.environ.get("RELAY_DSN") or os.environ.get("DATABASE_URL")
    if not dsn:
        raise RelayError("no database: pass --dsn or set RELAY_DSN / DATABASE_URL")
    return dsn


def _run_sql(args: argparse.Namespace) -> int:
    if args.action == "show":
        sys.stdout.write(install_script())
        return 0
    script = install_script() if args.action == "install" else uninstall_script()
    with psycopg.connect(_dsn_from(args), autocommit=True) as conn:
        conn.execute(script)
        if args.action == "install":
            row = conn.execute("SELECT schema_version, epoch FROM relay.settings").fetchone()
            assert row is not None
            print(f"relay schema installed: version {row[0]}, epoch {row[1]}")
        else:
            print("relay schema removed; application tables untouched")
    return 0


def _serve(args: argparse.Namespace) -> int:
    import anyio

    from relay.app import run_relay
    from relay.ops.logs import configure_logging

    settings = settings_from_args(args)
    configure_logging(settings.log_format, settings.log_level)
    # RELAY_EVENT_LOOP: uvloop when asked for (checked installed when the settings loaded).
    options = {"use_uvloop": settings.event_loop == "uvloop"}
    if settings.demo:
        from relay.demo.web import demo_routes

        anyio.run(partial(run_relay, settings, extra_routes=demo_routes), backend_options=options)
    else:
        anyio.run(run_relay, settings, backend_options=options)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from relay.demo.scenario import run_demo
    from relay.ops.logs import configure_logging

    # The demo supplies its own database and JWT secret; every other RELAY_ setting applies.
    # One local process, one port: /metrics on it unless RELAY_METRICS_PORT says otherwise.
    environ = {
        "RELAY_METRICS_PORT": "0",
        **os.environ,
        "RELAY_DSN": args.dsn or "postgresql:///demo",
        "RELAY_INSECURE_DEV": "1",
    }
    overrides = {"host": args.host, "port": args.port}
    settings = replace(Settings.load(environ, overrides), dsn=args.dsn or "")
    configure_logging(settings.log_format, "warning" if not args.verbose else settings.log_level)
    run_demo(settings, simulate=not args.no_simulator)
    return 0


def _config_check(args: argparse.Namespace) -> int:
    if args.action == "example":
        sys.stdout.write(render_env_example())
        return 0
    settings = settings_from_args(args)
    from relay.ops.keys import build_authenticator

    build_authenticator(settings)  # the JWT secret's strength and the JWKS file, checked now
    for name, value in settings.redacted().items():
        print(f"{name} = {value!r}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="relay", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    sql = commands.add_parser("sql", help="install, remove or print the database side")
    sql.add_argument("action", choices=["install", "uninstall", "show"])
    sql.add_argument(
        "--dsn", help="PostgreSQL connection string (default: $RELAY_DSN, $DATABASE_URL)"
    )
    sql.set_defaults(handler=_run_sql)

    serve = commands.add_parser(
        "serve",
        help="run the relay",
        description="Run the relay. Every flag can also be set by its environment variable.",
    )
    add_flags(serve)
    serve.set_defaults(handler=_serve)

    demo = commands.add_parser(
        "demo",
        help="the live demo: embedded PostgreSQL, example schema, relay, simulator",
        description="Run the demo. Without --dsn, PostgreSQL runs with its data in .relay-demo/.",
    )
    demo.add_argument("--dsn", help="use this PostgreSQL server instead of the embedded one")
    demo.add_argument("--host", default=None, help="address for the demo page (default 127.0.0.1)")
    demo.add_argument("--port", default=None, help="port for the demo page (default 8080)")
    demo.add_argument("--no-simulator", action="store_true", help="no simulated activity")
    demo.add_argument("--verbose", action="store_true", help="the relay's info logs too")
    demo.set_defaults(handler=_demo)

    config = commands.add_parser("config", help="check the configuration")
    config.add_argument("action", choices=["check", "example"])
    add_flags(config)
    config.set_defaults(handler=_config_check)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.handler(args)
    except RelayError as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return 2
    except psycopg.Error as exc:
        print(f"relay: database error: {str(exc).strip().splitlines()[0]}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
