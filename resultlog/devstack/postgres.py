"""PostgreSQL for the local stack: Debian's ``postgresql-15``, a cluster of our own.

The cluster lives in ``<dev_dir>/postgres/data``. When we are root it belongs to the
``postgres`` user (PostgreSQL refuses to run as root), so the directory is chowned to
it and ``initdb``/``pg_ctl`` run through ``runuser``. Local socket connections are
trusted (the socket is in our state dir, mode 0700); TCP connections need the
password named by ``postgres_dsn``, whose role and database are created on ``up``.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
from pathlib import Path
from urllib.parse import unquote, urlsplit

import asyncpg  # type: ignore[import-untyped]

from resultlog.connections import postgres_dsn
from resultlog.devstack import process, secure
from resultlog.devstack.service import Port, Service
from resultlog.errors import DevStackError
from resultlog.settings import DEV_POSTGRES_PORT, port_of

MAJOR = 15
PACKAGE = f"postgresql-{MAJOR}"
BIN_DIR = Path(f"/usr/lib/postgresql/{MAJOR}/bin")
SUPERUSER = "postgres"
OS_USER = "postgres"  # who runs the server when we are root

# Appended to the generated postgresql.conf once; resultlog.conf is rewritten per start.
_INCLUDE = "\n# resultlog dev up\ninclude_if_exists = 'resultlog.conf'\n"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class PostgresService(Service):
    kind = "postgres"
    start_timeout_s = 60.0
    stop_timeout_s = 30.0
    # Until init reaps a killed postmaster, its zombie's pid answers kill(pid, 0), and a
    # new postmaster refuses to start ("lock file postmaster.pid already exists").
    kill_waits_for_reaping = True

    @property
    def ports(self) -> list[Port]:
        port = port_of(self.settings.postgres_dsn, DEV_POSTGRES_PORT)
        return [Port(port, "postgres", "RESULTLOG_POSTGRES_DSN")]

    @property
    def socket_dir(self) -> Path:
        return self.home / "run"

    @property
    def pid_path(self) -> Path:
        return self.data_dir / "postmaster.pid"

    @property
    def process_home(self) -> Path:
        return self.data_dir  # the postmaster chdirs into its data directory

    @property
    def _os_user(self) -> str | None:
        return OS_USER if os.geteuid() == 0 else None

    def check_tools(self) -> None:
        self.check_host(self.settings.postgres_dsn, "RESULTLOG_POSTGRES_DSN")
        if self._os_user is None:
            return
        try:
            uid = pwd.getpwnam(self._os_user).pw_uid
        except KeyError:
            if not self.missing_packages():
                raise DevStackError(
                    f"postgres: there is no `{OS_USER}` user to run PostgreSQL as "
                    f"(reinstall {PACKAGE}: apt-get install --reinstall {PACKAGE})"
                ) from None
            return  # the package (and its user) is about to be installed
        # As root, the server runs as `postgres`: it must be able to enter the dev dir.
        target = self.home.absolute()
        for path in [*reversed(target.parents), target]:
            if not path.exists():
                break
            info = path.stat()
            if info.st_uid != uid and not info.st_mode & 0o001:
                raise DevStackError(
                    f"postgres: the `{self._os_user}` user cannot enter {path} "
                    f"(mode {info.st_mode & 0o777:o}), so PostgreSQL cannot use {self.home}; "
                    f"set RESULTLOG_DEV_DIR to a directory it can reach, e.g. /var/tmp/resultlog"
                )

    def missing_packages(self) -> list[str]:
        return [] if (BIN_DIR / "initdb").exists() else [PACKAGE]

    def _run(self, tool: str, *args: str, what: str) -> None:
        argv = process.as_user([str(BIN_DIR / tool), *args], self._os_user)
        process.run_logged(argv, log_path=self.home / "setup.log", what=what, cwd=self.home)

    def _chown(self, *paths: Path) -> None:
        if self._os_user is not None:
            entry = pwd.getpwnam(self._os_user)
            for path in paths:
                os.chown(path, entry.pw_uid, entry.pw_gid)

    def prepare(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.home.chmod(0o700)
        (self.home / "setup.log").touch()
        self.socket_dir.mkdir(exist_ok=True)
        self._chown(self.home, self.home / "setup.log", self.socket_dir)
        if (self.data_dir / "PG_VERSION").exists():
            return
        self.say(f"initdb {self.data_dir}")
        if self.data_dir.exists():
            shutil.rmtree(self.data_dir)  # a failed earlier initdb
        self._run(
            "initdb",
            "-D", str(self.data_dir),
            "-U", SUPERUSER,
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C",
            "--no-instructions",
            what="initdb",
        )
        with open(self.data_dir / "postgresql.conf", "a") as conf:
            conf.write(_INCLUDE)

    def config(self) -> str:
        return "\n".join([
            "# Written by `resultlog dev up` on every start; edits are overwritten.",
            f"port = {self.ports[0].number}",
            "listen_addresses = '127.0.0.1'",
            f"unix_socket_directories = '{self.socket_dir.resolve()}'",
            "unix_socket_permissions = 0700",
            "max_connections = 200",
            "shared_buffers = 64MB",
            "timezone = 'UTC'",
            "log_timezone = 'UTC'",
            "log_line_prefix = '%m [%p] %q%u@%d '",
            "logging_collector = off",
            # TLS when the DSN's sslmode requires it: resultlog/devstack/secure.py.
            *secure.postgres_ssl_lines(self.settings, self.key_dir),
            "",
        ])

    @property
    def key_dir(self) -> Path:
        return self.home.resolve() / "tls"

    def _write_access(self) -> None:
        """pg_hba.conf, and the server's certificate and key where PostgreSQL accepts
        them: owned by its user, the key mode 0600."""
        hba = self.data_dir / "pg_hba.conf"
        hba.write_text(secure.postgres_hba(self.settings))
        self._chown(hba)
        if not secure.postgres_secure(self.settings):
            return
        certs = secure.certificates(self.settings)
        self.key_dir.mkdir(mode=0o700, exist_ok=True)
        self._chown(self.key_dir)
        for source, name in ((certs.server_cert, "server.pem"), (certs.server_key, "server.key"),
                             (certs.ca, "ca.pem")):
            target = self.key_dir / name
            shutil.copyfile(source, target)
            target.chmod(0o600)
            self._chown(target)

    def start(self) -> None:
        self._write_access()
        conf = self.data_dir / "resultlog.conf"
        conf.write_text(self.config())
        process.rotate(self.log_path)
        self.log_path.touch()
        self._chown(conf, self.log_path)
        try:
            # -w: pg_ctl returns once the postmaster accepts connections, or failed.
            self._run(
                "pg_ctl", "start", "-w", "-t", str(int(self.start_timeout_s)),
                "-D", str(self.data_dir), "-l", str(self.log_path),
                what="pg_ctl start",
            )
        except DevStackError as exc:
            raise DevStackError(
                process.with_tail(f"postgres did not start: {exc}", self.log_path)
            ) from None

    async def _superuser(self) -> asyncpg.Connection:
        return await asyncpg.connect(
            host=str(self.socket_dir.resolve()),
            port=self.ports[0].number,
            user=SUPERUSER,
            database="postgres",
            timeout=3,
        )

    async def answers(self) -> bool:
        """SELECT 1 with the settings' DSN (over TCP, with its password)."""
        try:
            conn = await asyncpg.connect(postgres_dsn(self.settings), timeout=3)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
            return False
        try:
            return bool(await conn.fetchval("SELECT 1") == 1)
        finally:
            await conn.close()

    async def starting_answers(self) -> bool:
        """The DSN's role may not exist yet: wait for the server via the local socket."""
        try:
            conn = await self._superuser()
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
            return False
        await conn.close()
        return True

    async def after_ready(self) -> None:
        """Create the role and database named by ``postgres_dsn`` if they are missing."""
        url = urlsplit(self.settings.postgres_dsn)
        user = unquote(url.username or SUPERUSER)
        password = unquote(url.password) if url.password else None
        database = unquote(url.path.lstrip("/")) or user
        auth = f" PASSWORD {_literal(password)}" if password else ""
        conn = await self._superuser()
        try:
            if not await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", user):
                await conn.execute(f"CREATE ROLE {_ident(user)} WITH LOGIN{auth}")
            if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database):
                await conn.execute(f"CREATE DATABASE {_ident(database)} OWNER {_ident(user)}")
            if not await self.answers() and password:
                # The role exists with another password (the DSN changed): align it.
                await conn.execute(f"ALTER ROLE {_ident(user)} WITH LOGIN{auth}")
        finally:
            await conn.close()
        if not await self.answers():
            raise DevStackError(
                process.with_tail(
                    f"postgres runs, but `SELECT 1` with RESULTLOG_POSTGRES_DSN "
                    f"({url.scheme}://{user}@{url.hostname}:{url.port}/{database}) fails",
                    self.log_path,
                )
            )

    def stop(self, pid: int) -> bool:
        # SIGINT is PostgreSQL's "fast" shutdown: roll back sessions, checkpoint, exit.
        return process.stop_pid(pid, signal.SIGINT, timeout_s=self.stop_timeout_s)
