"""What every service of the local stack provides, and what the stack reports about it."""

from __future__ import annotations

import abc
import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlsplit

from resultlog.devstack import process
from resultlog.devstack.process import Out
from resultlog.errors import DevStackError
from resultlog.settings import Settings

LOCAL_HOSTS = ("127.0.0.1", "localhost")


@dataclass(frozen=True, slots=True)
class Port:
    """A TCP port a service listens on, and the setting that chooses it."""

    number: int
    role: str  # e.g. "kafka broker"
    setting: str  # e.g. "RESULTLOG_KAFKA_BOOTSTRAP_SERVERS"


@dataclass(frozen=True, slots=True)
class ServiceState:
    """What ``status`` found (or ``up`` left) for one service."""

    name: str
    address: str
    pid: int | None
    answering: bool
    log_path: Path
    detail: str = ""

    @property
    def running(self) -> bool:
        return self.pid is not None


@dataclass(frozen=True, slots=True)
class UpReport:
    """The outcome of ``up`` for one service."""

    name: str
    address: str
    pid: int
    started: bool  # False: it was already running and was left alone
    seconds: float


class Service(abc.ABC):
    """One server of the local stack, with its state in ``<dev_dir>/<name>``.

    ``kind`` is what ``--only`` selects (kafka, redis, postgres); ``name`` tells one
    server from another: the kind itself, or ``kafka-2`` for a node of a Kafka cluster.

    Subclasses implement the steps; :mod:`resultlog.devstack.stack` runs them, several
    services at once, in this order: ``missing_packages``/``check_tools`` (before
    anything starts), ``prepare`` and ``start`` (blocking, run in threads), then
    ``wait_ready`` and ``after_ready`` (async).
    """

    kind: ClassVar[str]
    start_timeout_s: ClassVar[float] = 60.0
    stop_timeout_s: ClassVar[float] = 30.0
    # Whether a restart after ``kill`` needs the dead processes reaped, not just dead.
    kill_waits_for_reaping: ClassVar[bool] = False

    def __init__(self, settings: Settings, out: Out, *, name: str | None = None) -> None:
        self.settings = settings
        self.out = out
        self.name = name or self.kind
        self.home = Path(settings.dev_dir).absolute() / self.name

    # -- identity -------------------------------------------------------------------

    @property
    @abc.abstractmethod
    def ports(self) -> list[Port]:
        """The ports this service listens on; the first one is the one clients use."""

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.ports[0].number}"

    @property
    def log_path(self) -> Path:
        return self.home / f"{self.kind}.log"

    @property
    def pid_path(self) -> Path:
        return self.home / f"{self.kind}.pid"

    @property
    def data_dir(self) -> Path:
        """Where a service that keeps data keeps it (Kafka's log, PostgreSQL's cluster)."""
        return self.home / "data"

    @property
    def process_home(self) -> Path:
        """The working directory of the service's process (how we know it is ours)."""
        return self.home

    def pid(self) -> int | None:
        """The pid of our running service, or None (a stale or foreign pid is None)."""
        return process.owned_pid(self.pid_path, self.process_home)

    def say(self, message: str) -> None:
        self.out(f"{self.name:<8} | {message}")

    # -- checks before anything starts -----------------------------------------------

    def check_host(self, url_or_hostport: str, setting: str) -> None:
        first = url_or_hostport.split(",")[0].strip()
        host = urlsplit(first).hostname if "://" in first else first.rpartition(":")[0]
        if host not in LOCAL_HOSTS:
            raise DevStackError(
                f"{self.name}: {setting} points at {host!r}; the local stack serves only "
                f"127.0.0.1 (unset {setting} to use the local stack)"
            )

    def port_conflicts(self) -> list[str]:
        """One message per port that something else already listens on."""
        conflicts = []
        for port in self.ports:
            if process.port_in_use(port.number):
                owner = process.port_owner(port.number)
                by = f" by {owner}" if owner else " by another process"
                conflicts.append(
                    f"port {port.number} ({port.role}) is already taken{by}; "
                    f"stop that process or choose another port with {port.setting}"
                )
        return conflicts

    def hint_when_stopped(self) -> str | None:
        """Why this service may look stopped though a relative of it runs, if it does."""
        return None

    def missing_packages(self) -> list[str]:
        """Debian packages this service needs and that are not installed."""
        return []

    def check_tools(self) -> None:
        """Raise DevStackError if a tool that cannot be installed for us is missing."""

    # -- lifecycle --------------------------------------------------------------------

    def prepare(self) -> None:
        """Slow one-time work: download, initialise data (blocking)."""

    @abc.abstractmethod
    def start(self) -> None:
        """Start the server process (blocking, returns once it is launched)."""

    @abc.abstractmethod
    async def answers(self) -> bool:
        """One quick attempt at a real request; True if it succeeded."""

    async def starting_answers(self) -> bool:
        """What ``wait_ready`` polls: :meth:`answers` unless a service must ask otherwise."""
        return await self.answers()

    async def wait_ready(self) -> None:
        await process.wait_until_ready(
            self.starting_answers,
            alive=lambda: self.pid() is not None,
            what=f"{self.name} ({self.address})",
            log_path=self.log_path,
            timeout_s=self.start_timeout_s,
        )

    async def after_ready(self) -> None:
        """Work that needs the running server (e.g. creating a database)."""

    def stop(self, pid: int) -> bool:
        """Stop our process ``pid``; False if it had to be killed."""
        ok = process.stop_pid(pid, timeout_s=self.stop_timeout_s)
        self.pid_path.unlink(missing_ok=True)
        return ok

    def kill(self) -> None:
        """SIGKILL our server (its whole process group) if it runs; return once it is gone.

        The pid file is left as it is: a stale one is never taken for ours (see
        :func:`resultlog.devstack.process.owned_pid`).
        """
        if (pid := self.pid()) is not None:
            process.kill_group(pid, what=f"{self.name} (pid {pid})", reaped=self.kill_waits_for_reaping)

    async def state(self) -> ServiceState:
        pid = self.pid()
        if pid is None:
            taken = "; ".join(self.port_conflicts())
            return ServiceState(self.name, self.address, None, False, self.log_path, taken)
        try:
            answering = await asyncio.wait_for(self.answers(), 10)
        except asyncio.TimeoutError:
            answering = False
        return ServiceState(self.name, self.address, pid, answering, self.log_path)


def elapsed(since: float) -> float:
    return round(time.monotonic() - since, 2)
