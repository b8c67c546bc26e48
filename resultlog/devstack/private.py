"""Private stacks: a whole local stack on free ports of its own, to break on purpose.

Fault tests SIGKILL brokers and stores; they must never do that to the stack other
tests (and other developers) share. Usage: docs/local-stack.md, "Private stacks".
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from aiokafka.errors import KafkaError  # type: ignore[import-untyped]

from resultlog.devstack import process
from resultlog.devstack.kafka_nodes import admin_client, cluster_bootstrap, node_name
from resultlog.devstack.process import Out
from resultlog.devstack.secure import secure_settings
from resultlog.devstack.service import Service, elapsed
from resultlog.devstack.stack import DevStack, print_flush
from resultlog.errors import DevStackError
from resultlog.settings import DEV_KAFKA_BROKER_COUNTS, Settings

# Below Linux's ephemeral range (32768-60999), where outgoing connections take ports.
PORT_RANGE = (20000, 32000)
# Where a fresh state directory goes when none is given: not /tmp/pytest-of-root or
# /root (mode 700), which the postgres user cannot enter.
STATE_PARENT = Path("/var/tmp")


@dataclass(frozen=True, slots=True)
class PartitionState:
    """One partition as the cluster's metadata describes it."""

    leader: int  # node id; -1 while there is none
    replicas: tuple[int, ...]
    isr: tuple[int, ...]


def free_port_run(length: int, *, taken: set[int]) -> int:
    """The first of ``length`` consecutive ports, all free now and not in ``taken``.

    The ports chosen are added to ``taken``: nothing listens on them until the
    services start, so the next choice must skip them by itself.
    """
    for _ in range(500):
        first = random.randrange(PORT_RANGE[0], PORT_RANGE[1] - length)
        run = range(first, first + length)
        if not any(port in taken or process.port_in_use(port) for port in run):
            taken.update(run)
            return first
    raise DevStackError(f"no {length} consecutive free ports found in {PORT_RANGE}")


def _with_port(url: str, port: int) -> str:
    parts = urlsplit(url)
    userinfo, at, _ = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{userinfo}{at}127.0.0.1:{port}"))


def private_settings(base: Settings, dev_dir: Path, *, brokers: int) -> Settings:
    """``base`` moved onto free ports and ``dev_dir``; topics replicated as the nodes allow.

    With three nodes, resultlog's topics get replication factor 3 and
    ``min.insync.replicas`` 2 (the brokers' default gives faust's own topics the same).
    """
    if brokers not in DEV_KAFKA_BROKER_COUNTS:
        raise DevStackError(
            f"brokers={brokers}: a private stack runs 1 Kafka node or 3 (a KRaft quorum "
            f"that survives losing one)"
        )
    taken: set[int] = set()
    kafka = free_port_run(2 * brokers, taken=taken)  # node i: kafka + 2(i-1), its controller + 1
    return base.replace(
        dev_dir=str(dev_dir),
        dev_kafka_brokers=brokers,
        kafka_bootstrap_servers=",".join(f"127.0.0.1:{kafka + 2 * i}" for i in range(brokers)),
        redis_url=_with_port(base.redis_url, free_port_run(1, taken=taken)),
        postgres_dsn=_with_port(base.postgres_dsn, free_port_run(1, taken=taken)),
        topic_replication_factor=brokers,
        topic_min_insync_replicas=brokers - 1,  # 0 with one node: the broker's default
    )


class PrivateStack:
    """A local stack of its own; use :func:`private_stack`. The faults, what each does
    to the stack and how long it takes: docs/local-stack.md, "Private stacks"."""

    def __init__(
        self,
        dev_dir: Path | None = None,
        *,
        brokers: int = 1,
        base: Settings | None = None,
        secure: bool = False,
        out: Out = print_flush,
    ) -> None:
        self.owns_dir = dev_dir is None
        if dev_dir is None:
            STATE_PARENT.mkdir(parents=True, exist_ok=True)
            dev_dir = Path(tempfile.mkdtemp(prefix="resultlog-private-", dir=STATE_PARENT))
            dev_dir.chmod(0o755)  # PostgreSQL runs as `postgres` and must enter it
        self.dev_dir = dev_dir
        base = base if base is not None else Settings.from_env()
        self.settings = private_settings(base, dev_dir, brokers=brokers)
        if secure:
            self.settings = secure_settings(self.settings)
        self.out = out
        self.dev = DevStack(self.settings, out=lambda line: out(f"[{dev_dir.name}] {line}"))

    @property
    def brokers(self) -> int:
        return self.settings.dev_kafka_brokers

    @property
    def bootstrap_servers(self) -> str:
        """Every Kafka node's address (also ``settings.kafka_bootstrap_servers``)."""
        return cluster_bootstrap(self.settings)

    async def up(self) -> float:
        """Start every service and wait until each answers; return the seconds it took."""
        since = time.monotonic()
        await self.dev.up()
        return elapsed(since)

    # -- faults -------------------------------------------------------------------------

    async def kill(self, service: str) -> None:
        """SIGKILL ``kafka`` (every node), ``redis`` or ``postgres``; return once gone."""
        await self._kill(self.dev.services_of(service))

    async def start(self, service: str) -> None:
        """Start ``kafka`` (every node that is down), ``redis`` or ``postgres`` again;
        return once it answers (Redis comes back empty)."""
        await self.dev.up_services(self.dev.services_of(service))

    async def kill_broker(self, node_id: int) -> None:
        """SIGKILL one Kafka node (broker and controller); return once it is gone."""
        await self._kill([self._node(node_id)])

    async def start_broker(self, node_id: int) -> None:
        """Start one Kafka node again; return once the cluster lists it as a broker."""
        await self.dev.up_services([self._node(node_id)])

    def _node(self, node_id: int) -> Service:
        if not 1 <= node_id <= self.brokers:
            raise DevStackError(
                f"there is no Kafka node {node_id}: this stack's nodes are 1 to {self.brokers}"
            )
        return self.dev.service(node_name(self.settings, node_id))

    async def _kill(self, services: Sequence[Service]) -> None:
        down = [svc.name for svc in services if svc.pid() is None]
        if down:
            raise DevStackError(f"cannot kill {', '.join(down)}: not running")
        await asyncio.gather(*(asyncio.to_thread(svc.kill) for svc in services))
        for svc in services:
            svc.say("killed (SIGKILL)")

    # -- cluster metadata ---------------------------------------------------------------

    async def partition_state(self, topic: str, partition: int, *, timeout_s: float = 30.0) -> PartitionState:
        """Leader, replicas and in-sync replicas of one partition, from the metadata.

        The metadata may lag a kill by a moment (a dead leader stays listed until the
        controller fences it): to wait for a new leader use :meth:`partition_leader`.
        """
        return await self._wait_for(topic, partition, "metadata", lambda state: True, timeout_s)

    async def partition_leader(
        self,
        topic: str,
        partition: int,
        *,
        other_than: int | None = None,
        timeout_s: float = 60.0,
    ) -> int:
        """The node that leads ``topic[partition]``; waits until there is one.

        With ``other_than``, waits until the leader is another node: after killing the
        leader, this returns once the cluster elected a new one.
        """
        wanted = "a leader" if other_than is None else f"a leader other than node {other_than}"
        state = await self._wait_for(
            topic, partition, wanted, lambda s: s.leader >= 0 and s.leader != other_than, timeout_s
        )
        return state.leader

    async def _wait_for(
        self, topic: str, partition: int, wanted: str,
        accept: Callable[[PartitionState], bool], timeout_s: float,
    ) -> PartitionState:
        deadline = time.monotonic() + timeout_s
        while True:
            found = await self._describe(topic, partition)
            if isinstance(found, PartitionState) and accept(found):
                return found
            if time.monotonic() > deadline:
                raise DevStackError(f"{topic}[{partition}] has no {wanted} after {timeout_s:.0f} s: {found}")
            await asyncio.sleep(0.2)

    async def _describe(self, topic: str, partition: int) -> PartitionState | str:
        """The partition's state, or why it could not be read (worth asking again)."""
        try:
            async with admin_client(self.settings, self.bootstrap_servers,
                                    "resultlog-private-stack") as admin:
                topics: list[dict[str, Any]] = await admin.describe_topics([topic])
        except (KafkaError, OSError, TimeoutError) as exc:
            # A dead node can still be in the client's metadata and be the one asked.
            return f"metadata request failed: {exc!r}"
        for entry in topics:
            if entry["topic"] != topic:
                continue
            if entry.get("error_code", 0):
                return f"topic error code {entry['error_code']}"
            for p in entry["partitions"]:
                if p["partition"] == partition:
                    return PartitionState(p["leader"], tuple(p["replicas"]), tuple(p["isr"]))
        return f"partition {partition} of {topic} is not in the metadata"

    # -- down ---------------------------------------------------------------------------

    async def down(self, *, purge: bool = True) -> None:
        """SIGKILL every server of this stack that runs; with ``purge``, delete its state.

        Safe after any failure, and twice: servers that are not running are skipped.
        A directory given by the caller is left in place, only its content is deleted.
        """
        await asyncio.gather(*(asyncio.to_thread(svc.kill) for svc in self.dev.services))
        if not purge:
            self.out(f"private stack stopped; its state and logs are kept in {self.dev_dir}")
            return
        if self.owns_dir:
            shutil.rmtree(self.dev_dir, ignore_errors=True)
        else:
            for child in self.dev_dir.iterdir():
                if child.is_dir():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)


@contextlib.asynccontextmanager
async def private_stack(
    dev_dir: Path | None = None,
    *,
    brokers: int = 1,
    base: Settings | None = None,
    secure: bool = False,
    out: Out = print_flush,
) -> AsyncIterator[PrivateStack]:
    """A :class:`PrivateStack`, up; stopped and deleted on leaving (kept if the block raised).

    ``dev_dir``: its state directory (the postgres user must be able to enter it);
    default a new one under /var/tmp. ``brokers``: 1 or 3 Kafka nodes. ``base``: the
    settings to start from (default: from the environment); only ports, ``dev_dir``,
    the broker count and the topics' replication are changed. ``secure``: TLS and
    authentication everywhere, on a CA of the stack's own (see
    :func:`resultlog.devstack.secure.secure_settings`).
    """
    stack = PrivateStack(dev_dir, brokers=brokers, base=base, secure=secure, out=out)
    try:
        await stack.up()
        yield stack
    except BaseException as exc:
        await stack.down(purge=False)
        exc.add_note(f"the private stack's state and logs are kept in {stack.dev_dir}")
        raise
    await stack.down()
