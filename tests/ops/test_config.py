"""Settings and start-up checks: malformed settings, missing keys or schema, a pooler in
transaction mode each stop the relay with one line; `relay config` prints and generates them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from relay.demo.pgserver import SERVER_USER, grant_traverse
from tests.support.paths import REPO
from tests.support.processes import RelayProcess, free_port
from tests.support.tokens import SECRET
from tests.support.waiting import wait_until

pytestmark = pytest.mark.pg


def run_relay(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay.cli", *args],
        capture_output=True, text=True, timeout=60, check=False,
        env={"PATH": os.environ["PATH"], **env},
    )  # fmt: skip


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

    from relay.ops.config import Settings

    result = run_relay("serve", "--help", env={"COLUMNS": "200"})
    assert 0 == result.returncode
    for spec in fields(Settings):
        assert f"--{spec.name.replace('_', '-')}" in result.stdout
    assert "RELAY_DSN / DATABASE_URL" in result.stdout


def test_env_example_is_generated_from_the_settings() -> None:
    """deploy/relay.env.example is exactly what `relay config example` prints, so it cannot drift."""
    result = run_relay("config", "example", env={})
    assert 0 == result.returncode, result.stderr
    committed = (REPO / "deploy" / "relay.env.example").read_text()
    assert committed == result.stdout


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
    port = free_port()
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
