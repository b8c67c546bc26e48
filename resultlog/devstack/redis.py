"""Redis for the local stack: the Debian ``redis-server`` with our own config file."""

from __future__ import annotations

import shutil
from pathlib import Path

import redis.asyncio
import redis.exceptions

from resultlog.connections import redis_url
from resultlog.devstack import process, secure
from resultlog.devstack.service import Port, Service
from resultlog.settings import DEV_REDIS_PORT, port_of

PACKAGE = "redis-server"


def _server_binary() -> str | None:
    return shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )


class RedisService(Service):
    kind = "redis"
    start_timeout_s = 20.0
    stop_timeout_s = 15.0

    @property
    def ports(self) -> list[Port]:
        port = port_of(self.settings.redis_url, DEV_REDIS_PORT)
        return [Port(port, "redis", "RESULTLOG_REDIS_URL")]

    def check_tools(self) -> None:
        self.check_host(self.settings.redis_url, "RESULTLOG_REDIS_URL")

    def missing_packages(self) -> list[str]:
        return [] if _server_binary() else [PACKAGE]

    def config(self) -> str:
        lines = [
            "# Written by `resultlog dev up` on every start; edits are overwritten.",
            "bind 127.0.0.1",
            # The port (a TLS port for rediss://) and the user: resultlog/devstack/secure.py.
            *secure.redis_config_lines(self.settings, self.ports[0].number),
            "protected-mode yes",
            "daemonize no",  # started detached by resultlog, which keeps the pid
            'logfile ""',  # stdout, which goes to redis.log
            f"dir {self.home.resolve()}",
            # A test store: no snapshots, no append-only file.
            'save ""',
            "appendonly no",
            "databases 16",
        ]
        return "\n".join(lines) + "\n"

    def start(self) -> None:
        binary = _server_binary()
        assert binary is not None, "missing_packages() is checked first"
        self.home.mkdir(parents=True, exist_ok=True)
        conf = self.home / "redis.conf"
        conf.write_text(self.config())
        conf.chmod(0o600)  # it may hold the user's password
        process.rotate(self.log_path)
        pid = process.spawn_detached(
            [binary, str(conf)], cwd=self.home, log_path=self.log_path
        )
        self.pid_path.write_text(f"{pid}\n")

    async def answers(self) -> bool:
        client = redis.asyncio.Redis.from_url(
            redis_url(self.settings), socket_connect_timeout=1, socket_timeout=2
        )
        try:
            return bool(await client.ping())
        except (redis.exceptions.RedisError, OSError):
            return False
        finally:
            await client.aclose()
