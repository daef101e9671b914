"""Operable in production: metrics move as they should, readiness, config failures, log hygiene."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from websockets.exceptions import ConnectionClosed

from relay.devserver import SERVER_USER, PgServer, grant_traverse
from relay.sqlfiles import install_script
from tests.conftest import example_path
from tests.helpers import SECRET, Client, RelayProcess, relay_process, token, wait_until

pytestmark = pytest.mark.pg


def run_relay(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay.cli", *args],
        capture_output=True, text=True, timeout=60, check=False,
        env={"PATH": os.environ["PATH"], **env},
    )  # fmt: skip


def listener_pid(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'pgrelay-listener'"
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_listener_reconnect_is_counted_and_logged(relay_db: str) -> None:
    """Killing the listener's backend increments relay_listener_reconnects_total and logs listener_lost."""
    with relay_process(relay_db) as relay:
        assert 0.0 == relay.metric("relay_listener_reconnects_total")
        with psycopg.connect(relay_db, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(%s)", (listener_pid(relay_db),))
        relay.wait_log("listener_lost")
        wait_until(lambda: relay.metric("relay_listener_up") == 1.0, 15, "listener back up")
        assert 1.0 == relay.metric("relay_listener_reconnects_total")


def test_heartbeat_keeps_last_event_age_low_without_writes(relay_db: str) -> None:
    """With no application writes, heartbeats through the log keep the last-event age near the interval."""
    with relay_process(relay_db) as relay:  # heartbeat every 1 s in tests
        time.sleep(2.5)
        ages = []
        for _ in range(10):
            ages.append(relay.metric("relay_last_event_age_seconds"))
            time.sleep(0.3)
        assert all(age < 2.5 for age in ages), ages


def test_stalled_listener_backend_raises_age_and_is_replaced(relay_db: str) -> None:
    """A listener backend that stops answering (SIGSTOP) lets the age grow until the heartbeat query
    times out; the relay then reconnects and the age falls back."""
    with relay_process(relay_db) as relay:
        wait_until(lambda: relay.metric("relay_last_event_age_seconds") < 2, 10, "healthy age")
        pid = listener_pid(relay_db)
        os.kill(pid, signal.SIGSTOP)
        try:
            wait_until(lambda: relay.metric("relay_last_event_age_seconds") > 2.0, 10, "age grows")
            relay.wait_log("listener_lost", timeout=15)
        finally:
            os.kill(pid, signal.SIGCONT)
        wait_until(lambda: relay.metric("relay_last_event_age_seconds") < 2.0, 15, "age recovers")
        assert relay.metric("relay_listener_reconnects_total") >= 1
    # psycopg logs the cancelled query through stdlib logging: rendered as JSON too.
    assert [] == [line for line in relay.lines if line.get("event") == "raw"]


def test_readyz_flips_while_postgres_is_down(private_pg: PgServer) -> None:
    """/readyz answers 503 while the database is unreachable and 200 again after it comes back."""
    dsn = private_pg.dsn()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(install_script())
    with relay_process(dsn) as relay:
        assert 200 == relay.http("/readyz")[0]
        private_pg.stop()
        wait_until(lambda: relay.http("/readyz")[0] == 503, 15, "readyz 503")
        assert (200, "ok\n") == relay.http("/healthz")  # the process itself still serves
        assert 0.0 == relay.metric("relay_listener_up")
        private_pg.start()
        wait_until(lambda: relay.http("/readyz")[0] == 200, 30, "readyz 200 again")


def test_refused_token_is_counted_by_reason(relay_db: str) -> None:
    """A refused token increments relay_auth_failures_total with its reason label only."""
    with relay_process(relay_db) as relay:
        client = Client(relay.url)
        client.send({"type": "auth", "token": token("alice", ttl=-100)})
        with pytest.raises(ConnectionClosed):
            client.recv(5)
        assert 1.0 == relay.metric("relay_auth_failures_total", 'reason="expired"')
        _, body = relay.http("/metrics")
        assert "alice" not in body  # labels never carry a user id


def test_delivery_metrics_move_with_events(relay_db: str) -> None:
    """An event delivered to one client counts one event, one delivery and one lag observation."""
    with relay_process(relay_db) as relay:
        client = Client(relay.url, "alice")
        client.ready()
        client.subscribe("s", "generations")
        with psycopg.connect(relay_db, autocommit=True) as conn:
            conn.execute("INSERT INTO generations (user_id, project_id) VALUES ('alice', 'p')")
        client.events(1)
        wait_until(lambda: relay.metric("relay_deliveries_total") == 1.0, 5, "delivery counted")
        assert 1.0 == relay.metric("relay_events_total", 'op="INSERT",table="generations"')
        assert 1.0 == relay.metric("relay_delivery_lag_seconds_count")
        assert 1.0 == relay.metric("relay_connections")
        assert 1.0 == relay.metric("relay_connections_total")


# -- configuration and start-up failures ---------------------------------------------------


def test_no_jwt_key_refuses_to_start_with_one_line(relay_db: str) -> None:
    """Without a JWT secret or JWKS (and no --insecure-dev) the relay exits 2 with one clear line."""
    result = run_relay("serve", env={"RELAY_DSN": relay_db})
    assert (2, "relay: no JWT key: set RELAY_JWT_SECRET or RELAY_JWKS_FILE (or --insecure-dev for "
               "local development only)\n") == (result.returncode, result.stderr)  # fmt: skip


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"RELAY_LISTEN_WINDOW": "soon"}, "relay: RELAY_LISTEN_WINDOW: 'soon' is not a duration (like 250ms, 5s, 2m, 24h)\n"),
        ({"RELAY_PORT": "70000"}, "relay: RELAY_PORT: 70000 is not a port number\n"),
        ({"RELAY_TRUSTED_PROXIES": "10.0.0.0/33"}, "relay: RELAY_TRUSTED_PROXIES: '10.0.0.0/33' does not appear to be an IPv4 or IPv6 network\n"),
        ({"RELAY_TLS_CERT": "cert.pem"}, "relay: TLS needs both RELAY_TLS_CERT and RELAY_TLS_KEY\n"),
        ({"RELAY_LOG_FORMAT": "xml"}, "relay: RELAY_LOG_FORMAT: 'xml' is not one of auto, json, console\n"),
    ],
)  # fmt: skip
def test_bad_settings_fail_at_start_with_one_line(env: dict[str, str], message: str) -> None:
    """Each malformed setting stops `relay config check` with exit 2 and a line naming the variable."""
    base = {"RELAY_DSN": "postgresql://x@127.0.0.1/db", "RELAY_JWT_SECRET": SECRET}
    result = run_relay("config", "check", env={**base, **env})
    assert (2, message) == (result.returncode, result.stderr)


def test_config_check_prints_effective_config_with_secrets_redacted() -> None:
    """`relay config check` lists every setting; the JWT secret and the DSN password never appear."""
    env = {
        "DATABASE_URL": "postgresql://app:hunter2@db.internal:5432/app",
        "RELAY_JWT_SECRET": SECRET,
    }
    result = run_relay("config", "check", "--port", "9000", env=env)
    assert 0 == result.returncode, result.stderr
    lines = dict(line.split(" = ", 1) for line in result.stdout.splitlines())
    assert ("'postgresql://app:********@db.internal:5432/app'", "'********'", "9000") == (
        lines["dsn"],
        lines["jwt_secret"],
        lines["port"],
    )
    assert "hunter2" not in result.stdout and SECRET not in result.stdout


def test_schema_not_installed_fails_at_start_with_one_line(empty_db: str) -> None:
    """Against a database without the relay schema, serve exits with the install hint."""
    result = run_relay("serve", env={"RELAY_DSN": empty_db, "RELAY_JWT_SECRET": SECRET})
    assert (2, "relay: the relay schema is not installed: run `relay sql install` (or psql -f "
               "install.sql)\n") == (result.returncode, result.stderr)  # fmt: skip


def test_serve_help_lists_every_setting_with_its_variable() -> None:
    """`relay serve --help` names each setting's flag and environment variable."""
    from dataclasses import fields

    from relay.config import Settings

    result = run_relay("serve", "--help", env={"COLUMNS": "200"})
    assert 0 == result.returncode
    for spec in fields(Settings):
        assert f"--{spec.name.replace('_', '-')}" in result.stdout
    assert "RELAY_DSN / DATABASE_URL" in result.stdout


def test_env_example_is_generated_from_the_settings() -> None:
    """deploy/relay.env.example is exactly what `relay config example` prints, so it cannot drift."""
    result = run_relay("config", "example", env={})
    assert 0 == result.returncode, result.stderr
    committed = (Path(__file__).parent.parent / "deploy" / "relay.env.example").read_text()
    assert committed == result.stdout


# -- logs ----------------------------------------------------------------------------------


def test_logs_are_json_lines_without_tokens_or_passwords(relay_db: str) -> None:
    """Every log line is JSON; no token or DSN password appears, and a connection's lines share its id."""
    dsn = psycopg.conninfo.make_conninfo(relay_db, password="hunter2")  # trust auth ignores it
    with relay_process(dsn) as relay:
        secret_token = token("alice")
        client = Client(relay.url)
        client.send({"type": "auth", "token": secret_token})
        client.ready()
        client.close()
        relay.wait_log("authenticated")
        bad = Client(relay.url)
        bad.send({"type": "auth", "token": secret_token + "x"})
        with pytest.raises(ConnectionClosed):
            bad.recv(5)
        relay.wait_log("closing", reason="bad_signature")
    assert [] == [line for line in relay.lines if line.get("event") == "raw"]
    text = repr(relay.lines)
    assert "hunter2" not in text and secret_token not in text and "alice" not in text
    authenticated = relay.wait_log("authenticated")
    assert authenticated["conn"] and len(authenticated["user"]) == 16  # hashed user id


# -- a DSN through PgBouncer in transaction mode -------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def pgbouncer(relay_db: str, tmp_path: Path) -> Iterator[str]:
    """A real PgBouncer in transaction pooling mode in front of the test database."""
    binary = shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None
    )
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("pgbouncer is missing: .ci/run installs Debian's pgbouncer package")
        pytest.skip("pgbouncer is not installed")
    info = psycopg.conninfo.conninfo_to_dict(relay_db)
    port = _free_port()
    folder = tmp_path / "pgbouncer"
    folder.mkdir()
    (folder / "users.txt").write_text('"postgres" ""\n')
    (folder / "pgbouncer.ini").write_text(
        f"[databases]\n* = host=127.0.0.1 port={info['port']}\n"
        f"[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {folder / 'users.txt'}\npool_mode = transaction\n"
        f"default_pool_size = 4\nlogfile = {folder / 'pgbouncer.log'}\n"
    )
    kwargs: dict[str, object] = {}
    if os.geteuid() == 0:  # pgbouncer refuses to run as root
        import pwd

        entry = pwd.getpwnam(SERVER_USER)
        for path in [folder, *folder.iterdir()]:
            os.chown(path, entry.pw_uid, entry.pw_gid)
        grant_traverse(tmp_path)
        kwargs = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
    process = subprocess.Popen([binary, str(folder / "pgbouncer.ini")], **kwargs)  # type: ignore[call-overload]
    dsn = f"postgresql://postgres@127.0.0.1:{port}/{info['dbname']}"
    try:
        wait_until(lambda: _accepts(dsn), 10, "pgbouncer accepts")
        yield dsn
    finally:
        process.terminate()
        process.wait(10)


def _accepts(dsn: str) -> bool:
    try:
        with psycopg.connect(dsn, connect_timeout=1) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


def test_dsn_through_pgbouncer_transaction_pooling_is_refused_at_start(pgbouncer: str) -> None:
    """Through PgBouncer in transaction mode, where LISTEN never hears anything, serve refuses to start."""
    result = run_relay("serve", env={"RELAY_DSN": pgbouncer, "RELAY_JWT_SECRET": SECRET,
                                     "RELAY_PORT": "0"})  # fmt: skip
    assert 2 == result.returncode
    assert result.stderr.startswith("relay: NOTIFY does not reach a LISTENing connection") or (
        result.stderr.startswith("relay: the DSN goes through a connection pooler")
    ), result.stderr
    assert 1 == len(result.stderr.splitlines())


def test_relay_process_fixture_is_healthy(relay_db: str) -> None:
    """Sanity: the direct DSN passes the same start-up checks (the refusal above is specific)."""
    relay = RelayProcess(relay_db).start()
    try:
        assert 200 == relay.http("/readyz")[0]
    finally:
        relay.stop()


def test_example_schema_is_installable_over_itself(relay_db: str) -> None:
    """The example schema is idempotent like the install script."""
    with psycopg.connect(relay_db, autocommit=True) as conn:
        conn.execute(example_path().read_text())


def test_separate_metrics_port_serves_metrics_and_hides_them_on_the_main_port(
    relay_db: str,
) -> None:
    """With RELAY_METRICS_PORT, /metrics answers there (with health) and 404 on the public port."""
    import urllib.request

    metrics_port = _free_port()
    with relay_process(relay_db, {"RELAY_METRICS_PORT": str(metrics_port)}) as relay:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as resp:
            assert b"relay_listener_up 1.0" in resp.read()
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/readyz", timeout=5) as resp:
            assert 200 == resp.status
        assert 404 == relay.http("/metrics")[0]
        assert 200 == relay.http("/healthz")[0]
