"""The relay process: wires the shells together under one task group.

Tasks: the log reader (supervised LISTEN connection), the sequencer (competes for its advisory
lock), the heartbeat/catalog loop, and the websockets server. SIGTERM or SIGINT stops accepting,
closes every client with 1001 (going away) and exits within ``shutdown_timeout``.
"""

from __future__ import annotations

import contextlib
import resource
import signal
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Final

import anyio
import prometheus_client
import structlog
from psycopg_pool import AsyncConnectionPool
from websockets.asyncio.server import ServerConnection
from websockets.asyncio.server import serve as ws_serve

from relay.core.admission import Intake, socket_budget
from relay.core.auth import Authenticator
from relay.net.http import WebsocketShell
from relay.net.hub import Hub
from relay.net.responses import Handler
from relay.net.sockets import SocketGuard
from relay.ops.config import Settings, redact_dsn
from relay.ops.keys import build_authenticator
from relay.ops.logs import flush_suppressed
from relay.ops.metrics import Metrics
from relay.pg.maintenance import Maintenance
from relay.pg.queries import preflight
from relay.pg.reader import LogReader
from relay.pg.replay import PoolLogSource, replay_pool
from relay.pg.sequencer import Sequencer

__all__ = ["AppServices", "RouteFactory", "run_relay"]

log = structlog.get_logger("relay.app")
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]

# File descriptors kept out of the client sockets' budget: stdio, epoll, the listening sockets,
# the log reader's, sequencer's and maintenance connections, the Prometheus process collector.
FD_RESERVE: Final = 64
# Each listener's backlog: asyncio accepts up to this many sockets per wake-up before their
# protocols run (and the guard closes the ones past its bounds), so they are reserved too.
ACCEPT_BURST: Final = 100
METRICS_MAX_SOCKETS: Final = 32  # open sockets on the metrics port (scrapes and probes)


def file_budget(settings: Settings) -> int:
    """The client sockets the main port may hold. The soft RLIMIT_NOFILE is raised (up to the
    hard limit) to what the settings need: RELAY_MAX_CONNECTIONS + RELAY_MAX_HANDSHAKES + the
    replay pool + the metrics port's sockets + each listener's accept burst + FD_RESERVE; a
    warning says when it cannot be.
    Past the budget an accepted socket is closed at once, so the process never runs out of
    descriptors: open clients, the database and the metrics port keep theirs."""
    reserve = FD_RESERVE + ACCEPT_BURST + 2 * METRICS_MAX_SOCKETS + settings.replay_pool_size
    needed = settings.max_connections + settings.max_handshakes + reserve
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return needed
    if soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    budget = socket_budget(soft, reserve)
    if soft < needed:
        hint = "raise the nofile limit (ulimit -n, systemd LimitNOFILE=, the container's)"
        log.warning("file_limit_low", nofile=soft, needed=needed, sockets=budget, hint=hint)
    return budget


@dataclass(frozen=True, slots=True)
class AppServices:
    """What routes handed in to ``run_relay`` may use: settings, the hub (its metrics), the
    authenticator and the replay pool (for short queries, with the relay's query timeout)."""

    settings: Settings
    hub: Hub
    authenticator: Authenticator
    pool: AsyncConnectionPool[Any]


# Builds the routes a caller adds to the relay's port (the demo's), once the services exist.
RouteFactory = Callable[[AppServices], Handler]


def _tls(settings: Settings) -> dict[str, Any]:
    """serve()'s TLS arguments: none without a certificate. The TLS handshake must end within
    RELAY_REQUEST_TIMEOUT too (asyncio hands the socket to the guard only after it)."""
    if not settings.tls_cert:
        return {}
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.tls_cert, settings.tls_key)
    return {"ssl": context, "ssl_handshake_timeout": settings.request_timeout}


async def run_relay(
    settings: Settings,
    *,
    extra_routes: RouteFactory | None = None,
    task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Runs until SIGTERM/SIGINT (or cancellation); reports the bound port via task_status."""
    metrics = Metrics()
    hub = Hub(settings, metrics)
    # Fails at start, with one line, on a database the relay cannot work with; the catalog
    # loaded now answers the first subscriptions after start correctly.
    hub.catalog_loaded(await preflight(settings.dsn, settings.query_timeout))
    authenticator = build_authenticator(settings)
    if not settings.allowed_origins:
        log.warning("origins_unrestricted", hint="set RELAY_ALLOWED_ORIGINS for browser clients")
    if settings.insecure_dev and not (settings.jwt_secret or settings.jwks_file):
        log.warning("insecure_dev", hint="no JWT key configured: every token is refused")

    # A reconnect storm queues its replays (bounded) instead of failing them at once.
    pool = replay_pool(
        settings.dsn, size=settings.replay_pool_size, max_waiting=settings.max_connections
    )
    reader = LogReader(
        settings.dsn,
        start_after=None,
        deliver=hub.deliver,
        on_state=hub.on_log_state,
        on_reconnect=metrics.listener_reconnects.inc,
        on_caught_up=hub.caught_up,
        on_uncarriable=hub.on_uncarriable,
        on_batch=metrics.count_reader_batch,
        listen_window=settings.listen_window,
        query_timeout=settings.query_timeout,
    )

    def on_leader(leader: bool) -> None:
        metrics.sequencer_leader.set(1 if leader else 0)
        reader.lead(leader)

    # The leader's reader takes each batch from its sequencer, in process (relay/pg/reader.py).
    sequencer = Sequencer(
        settings.dsn,
        on_leader=on_leader,
        on_batch=reader.hand,
        query_timeout=settings.query_timeout,
        poll_interval=settings.poll_interval,
        batch_window=settings.batch_window,
        batch=settings.sequencer_batch,
        retention=settings.retention,
        prune_interval=settings.prune_interval,
    )
    maintenance = Maintenance(
        settings.dsn,
        replica_id=settings.replica_id,
        heartbeat_interval=settings.heartbeat_interval,
        query_timeout=settings.query_timeout,
        on_catalog=hub.catalog_loaded,
        on_head=hub.head_seen,
        on_column_types=hub.types_loaded,
    )
    extra = extra_routes(AppServices(settings, hub, authenticator, pool)) if extra_routes else None
    # Replays wait their turn at the pool up to RELAY_REPLAY_WAIT; long-polls twice the query
    # timeout (their answer is due within the poll's own wait).
    source = PoolLogSource(pool, wait=settings.replay_wait, query_timeout=settings.query_timeout)
    poll_source = PoolLogSource(
        pool, wait=settings.query_timeout * 2, query_timeout=settings.query_timeout
    )
    shell = WebsocketShell(
        hub,
        authenticator,
        source,
        poll_source=poll_source,
        max_sockets=file_budget(settings),
        extra=extra,
    )
    await pool.open(wait=False)
    try:
        async with anyio.create_task_group() as tasks:
            await tasks.start(reader.run)
            tasks.start_soon(sequencer.run)
            tasks.start_soon(maintenance.run)
            shell.task_group = tasks
            tasks.start_soon(shell.sweep)
            tasks.start_soon(_flush_suppressed_logs)
            async with (
                ws_serve(
                    shell.handle,
                    settings.host,
                    settings.port,
                    process_request=shell.process_request,
                    process_response=shell.process_response,
                    create_connection=shell.guard.connection_class(shell.connection_class),
                    backlog=ACCEPT_BURST,
                    max_size=settings.max_message_bytes,
                    max_queue=16,
                    compression="deflate" if settings.compression else None,
                    **_tls(settings),
                    ping_interval=20,
                    ping_timeout=20,
                    close_timeout=2,
                    # The request must be complete within request_timeout (the guard); the
                    # shell bounds each answer but a stream, which lasts (relay/net/http.py).
                    open_timeout=None,
                    server_header=None,
                ) as server,
                _metrics_server(settings, shell) as metrics_port,
            ):
                port = next(iter(server.sockets)).getsockname()[1]
                log.info("listening", host=settings.host, port=port, dsn=redact_dsn(settings.dsn),
                         replica=settings.replica_id, metrics_port=metrics_port,
                         sockets=shell.guard.intake.max_sockets)  # fmt: skip
                task_status.started(port)
                await _until_signal()
                log.info("shutting_down", connections=len(hub.connections))
                hub.accepting = False
                with anyio.move_on_after(settings.shutdown_timeout):
                    server.close(close_connections=True)  # 1001 to every client
                    await server.wait_closed()
            tasks.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(2):
            await pool.close()
        flush_suppressed()
        log.info("stopped")


async def _flush_suppressed_logs() -> None:
    """Reports how many warning lines of each kind were suppressed, within a second of the end
    of the window that suppressed them (one line per kind per window)."""
    while True:
        await anyio.sleep(1.0)
        flush_suppressed()


@contextlib.asynccontextmanager
async def _metrics_server(settings: Settings, shell: WebsocketShell) -> AsyncIterator[int | None]:
    """With RELAY_METRICS_PORT (the default), /metrics and health on a port of their own, never
    upgraded, with their own small socket bounds: the main port's clients cannot starve them."""
    if not settings.metrics_port:
        yield None
        return
    guard = SocketGuard(
        Intake(
            max_sockets=METRICS_MAX_SOCKETS,
            max_handshakes=METRICS_MAX_SOCKETS,
            max_handshakes_per_address=METRICS_MAX_SOCKETS,
        ),
        settings.request_timeout,
        lambda reason: shell.count_refused(f"metrics_{reason}"),
    )

    async def refuse(ws: ServerConnection) -> None:  # every request is answered before this
        await ws.close(1008, "not a websocket endpoint")

    async with ws_serve(
        refuse,
        settings.host,
        settings.metrics_port,
        process_request=shell.process_ops_request,
        create_connection=guard.connection_class(),
        backlog=METRICS_MAX_SOCKETS,  # its accept burst
        open_timeout=settings.request_timeout,
        server_header=None,
    ) as server:
        yield next(iter(server.sockets)).getsockname()[1]


async def _until_signal() -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("signal", signal=signal.Signals(signum).name)
            return
