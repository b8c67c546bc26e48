"""The local stack as a whole: bring services up in parallel, stop them, report on them.

What ``resultlog dev`` and the test fixtures use; what each command does and
guarantees: docs/local-stack.md, "How it works".
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import shutil
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path

from resultlog.devstack import apt, process, secure
from resultlog.devstack.kafka import KafkaService
from resultlog.devstack.kafka_nodes import CLUSTER_ID_FILE, ensure_internal_topics
from resultlog.devstack.postgres import PostgresService
from resultlog.devstack.process import Out
from resultlog.devstack.redis import RedisService
from resultlog.devstack.service import Service, ServiceState, UpReport, elapsed
from resultlog.errors import DevStackError
from resultlog.settings import Settings

# By kind; Kafka has one service per node (settings.dev_kafka_brokers).
SERVICE_CLASSES: dict[str, type[Service]] = {
    "kafka": KafkaService,
    "redis": RedisService,
    "postgres": PostgresService,
}
SERVICE_NAMES: tuple[str, ...] = tuple(SERVICE_CLASSES)


def print_flush(line: str) -> None:
    print(line, flush=True)


def parse_only(value: str | Iterable[str] | None) -> tuple[str, ...]:
    """``"kafka,redis"`` (or a list) as service names in stack order; None means all."""
    if value is None:
        return SERVICE_NAMES
    items = value.split(",") if isinstance(value, str) else list(value)
    names = {item.strip().lower() for item in items if item.strip()}
    unknown = names - set(SERVICE_NAMES)
    if unknown or not names:
        raise DevStackError(
            f"unknown service(s) {', '.join(sorted(unknown)) or '(none given)'}; "
            f"choose from {', '.join(SERVICE_NAMES)}"
        )
    return tuple(name for name in SERVICE_NAMES if name in names)


class DevStack:
    """Kafka, Redis and PostgreSQL on the ports of ``settings``, state in ``dev_dir``."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        only: str | Iterable[str] | None = None,
        out: Out = print_flush,
    ) -> None:
        self.settings = Settings.given(settings, "DevStack")
        self.out = out
        self.dev_dir = Path(self.settings.dev_dir)
        self.services: list[Service] = []
        for kind in parse_only(only):
            if kind == "kafka":
                self.services.extend(
                    KafkaService(self.settings, out, node_id=node_id)
                    for node_id in range(1, self.settings.dev_kafka_brokers + 1)
                )
            else:
                self.services.append(SERVICE_CLASSES[kind](self.settings, out))

    def service(self, name: str) -> Service:
        """A service by name: ``redis``, ``postgres``, ``kafka`` (one node) or ``kafka-2``."""
        for svc in self.services:
            if svc.name == name:
                return svc
        names = ", ".join(svc.name for svc in self.services)
        raise DevStackError(f"service {name!r} is not part of this stack (it has {names})")

    def services_of(self, kind: str) -> list[Service]:
        """The services of one kind (``kafka`` gives every node); an unknown kind is an error."""
        found = [svc for svc in self.services if svc.kind == kind]
        if not found:
            kinds = ", ".join(dict.fromkeys(svc.kind for svc in self.services))
            raise DevStackError(f"this stack runs no {kind!r}; it runs {kinds}")
        return found

    # -- up ---------------------------------------------------------------------------

    async def up(self) -> list[UpReport]:
        """Start every selected service that is not running; wait until all answer."""
        reports = await self.up_services(self.services)
        if self.settings.dev_kafka_brokers > 1 and any(s.kind == "kafka" for s in self.services):
            await ensure_internal_topics(self.settings)
        return reports

    async def up_services(self, services: Sequence[Service]) -> list[UpReport]:
        """``up`` for some of this stack's services (e.g. one Kafka node after a kill)."""
        started = time.monotonic()
        async with self._locked():
            running = {svc.name: svc.pid() for svc in services}
            to_start = [svc for svc in services if running[svc.name] is None]
            self._check_can_start(to_start)
            if to_start:
                # Before the services prepare in parallel: they share one CA.
                await asyncio.to_thread(secure.prepare_certificates, self.settings)
            needs_apt = {svc.name: svc.missing_packages() for svc in to_start}
            packages = sorted({pkg for pkgs in needs_apt.values() for pkg in pkgs})
            apt_task: asyncio.Task[None] | None = None
            if packages:
                apt_task = asyncio.create_task(
                    asyncio.to_thread(
                        apt.install, packages, log_path=self.dev_dir / "apt.log", out=self.out
                    )
                )
            outcomes = await asyncio.gather(
                *(
                    self._up_one(svc, running[svc.name], apt_task if needs_apt.get(svc.name) else None)
                    for svc in services
                ),
                return_exceptions=True,
            )
        reports = [o for o in outcomes if isinstance(o, UpReport)]
        failures = [o for o in outcomes if not isinstance(o, UpReport)]
        for failure in failures:
            if not isinstance(failure, DevStackError):
                raise failure
        if failures:
            messages = list(dict.fromkeys(str(f) for f in failures))
            ok = ", ".join(f"{r.name} ({r.address})" for r in reports) or "none"
            raise DevStackError(
                "resultlog dev up failed:\n" + "\n".join(messages) + f"\nservices up: {ok}"
            )
        what = "local stack" if services is self.services else ", ".join(svc.name for svc in services)
        self.out(f"{what} up in {elapsed(started):.1f} s (state in {self.dev_dir})")
        return reports

    def _check_can_start(self, to_start: Sequence[Service]) -> None:
        problems: list[str] = []
        for svc in to_start:
            try:
                svc.check_tools()
            except DevStackError as exc:
                problems.append(str(exc))
            problems.extend(f"{svc.name}: {c}" for c in svc.port_conflicts())
        if problems:
            raise DevStackError(
                "nothing was started:\n  - " + "\n  - ".join(problems)
            )

    async def _up_one(
        self, svc: Service, pid: int | None, apt_task: asyncio.Task[None] | None
    ) -> UpReport:
        since = time.monotonic()
        if pid is not None:
            await self._check_listening(svc, pid)
            await svc.wait_ready()
            await svc.after_ready()
            svc.say(f"already running on {svc.address} (pid {pid}), left alone")
            return UpReport(svc.name, svc.address, pid, False, elapsed(since))
        if apt_task is not None:
            await apt_task
        await asyncio.to_thread(svc.prepare)
        svc.say(f"starting on {svc.address}")
        await asyncio.to_thread(svc.start)
        try:
            await svc.wait_ready()
            await svc.after_ready()
        except Exception:
            # Do not leave a half-started server behind.
            if (half := svc.pid()) is not None:
                await asyncio.to_thread(svc.stop, half)
            raise
        new_pid = svc.pid()
        if new_pid is None:
            raise DevStackError(process.with_tail(f"{svc.name} exited just after starting", svc.log_path))
        report = UpReport(svc.name, svc.address, new_pid, True, elapsed(since))
        svc.say(f"ready on {svc.address} (pid {new_pid}) in {report.seconds:.1f} s")
        return report

    @staticmethod
    async def _check_listening(svc: Service, pid: int) -> None:
        """Our process runs: is it on the configured port (settings may have changed)?"""
        port = svc.ports[0].number
        deadline = time.monotonic() + 15  # it may have been started a moment ago
        while not process.port_in_use(port):
            if time.monotonic() > deadline:
                raise DevStackError(
                    f"{svc.name} runs (pid {pid}) but nothing listens on port {port}: it was "
                    f"started with other settings; run `resultlog dev down --only {svc.name}` "
                    f"and then `resultlog dev up` again"
                )
            await asyncio.sleep(0.2)

    # -- down -------------------------------------------------------------------------

    async def down(self, *, purge: bool = False) -> dict[str, str]:
        """Stop the selected services that ``up`` started; with ``purge``, delete their data.

        Returns what happened to each, by name.
        """
        async with self._locked():
            outcomes = await asyncio.gather(
                *(asyncio.to_thread(self._down_one, svc, purge) for svc in self.services)
            )
            if purge and self.settings.dev_kafka_brokers > 1 and any(
                svc.kind == "kafka" for svc in self.services
            ):
                (self.dev_dir / CLUSTER_ID_FILE).unlink(missing_ok=True)
        return dict(zip((svc.name for svc in self.services), outcomes))

    def _down_one(self, svc: Service, purge: bool) -> str:
        since = time.monotonic()
        pid = svc.pid()
        if pid is not None:
            svc.say(f"stopping (pid {pid})")
            clean = svc.stop(pid)
            outcome = f"stopped (pid {pid}) in {elapsed(since):.1f} s" + (
                "" if clean else ", killed after it did not exit in time"
            )
        else:
            listed = process.read_pid(svc.pid_path)
            if listed is not None and process.pid_alive(listed):
                outcome = (
                    f"not running; its pid file names {process.describe_pid(listed)}, "
                    f"which is not ours: left alone"
                )
            else:
                outcome = "not running"
                if hint := svc.hint_when_stopped():
                    outcome += f"; {hint}"
        if purge and svc.home.exists():
            shutil.rmtree(svc.home)
            outcome += f"; removed {svc.home}"
        svc.say(outcome)
        return outcome

    # -- status and logs ----------------------------------------------------------------

    async def status(self) -> list[ServiceState]:
        return list(await asyncio.gather(*(svc.state() for svc in self.services)))

    def logs(self, lines: int = 40) -> str:
        parts = []
        for svc in self.services:
            text = process.tail(svc.log_path, lines)
            parts.append(f"==> {svc.log_path} <==\n{text or '(empty or missing)'}")
        return "\n\n".join(parts)

    # -- one command at a time -----------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _locked(self) -> AsyncIterator[None]:
        self.dev_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.dev_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            waiting = False
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if not waiting:
                        self.out(f"waiting for another `resultlog dev` command on {self.dev_dir}")
                        waiting = True
                    await asyncio.sleep(0.2)
            yield
        finally:
            os.close(fd)
