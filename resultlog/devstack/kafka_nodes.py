"""The nodes of the local Kafka cluster: names, ports, the shared cluster id, and
the internal topics a cluster makes while all its nodes are up.

One node (the default) is ``kafka`` in ``<dev_dir>/kafka``, as it always was; with
``dev_kafka_brokers=3`` the nodes are ``kafka-1`` to ``kafka-3``, each in its own
state directory, so a one-node and a three-node stack never share storage (a node
formatted for one quorum cannot join another).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient  # type: ignore[import-untyped]
from aiokafka.errors import KafkaError  # type: ignore[import-untyped]

from resultlog.connections import kafka_client_args
from resultlog.errors import DevStackError
from resultlog.settings import DEV_KAFKA_PORT, Settings, port_of

# In the state dir: the id every node of a multi-node cluster is formatted with.
CLUSTER_ID_FILE = "kafka-cluster.id"


@contextlib.asynccontextmanager
async def admin_client(
    settings: Settings, bootstrap: str, client_id: str = "resultlog-devstack"
) -> AsyncIterator[Any]:
    """An aiokafka admin client on ``bootstrap``, started; closed on leaving, also when
    starting failed (the caller catches ``KafkaError``, ``OSError``, ``TimeoutError``)."""
    admin = AIOKafkaAdminClient(
        **kafka_client_args(settings, bootstrap), client_id=client_id, request_timeout_ms=5000
    )
    try:
        await admin.start()
        yield admin
    finally:
        await admin.close()


def random_cluster_id() -> str:
    """What ``kafka-storage.sh random-uuid`` prints: 16 bytes, base64url, no padding,
    never starting with "-": the storage tool's argument parser reads such an id as an
    option ("argument --cluster-id/-t: expected one argument"; 1 start in 64 failed so),
    which is why Kafka's own ``Uuid.randomUuid`` draws again in that case too."""
    while True:
        cluster_id = base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


def node_ports(settings: Settings) -> list[int]:
    """The client port of each Kafka node of the local stack, by node id (1 first).

    Each node's controller listens on its client port + 1. With several nodes,
    ``kafka_bootstrap_servers`` lists one address per node, or one address whose port
    is node 1's and the others follow two by two (19092, 19094, 19096).
    """
    listed = [port_of(hp, DEV_KAFKA_PORT) for hp in settings.kafka_bootstrap_servers.split(",")]
    count = settings.dev_kafka_brokers
    if count == 1:
        return listed[:1]
    if len(listed) == 1:
        ports = [listed[0] + 2 * i for i in range(count)]
    elif len(listed) == count:
        ports = listed
    else:
        raise DevStackError(
            f"kafka: RESULTLOG_KAFKA_BOOTSTRAP_SERVERS lists {len(listed)} addresses for "
            f"{count} nodes (RESULTLOG_DEV_KAFKA_BROKERS); list one per node, or one: the "
            f"first node's, the others then take the next ports two by two"
        )
    every = [*ports, *(p + 1 for p in ports)]
    if len(set(every)) != len(every):
        raise DevStackError(
            f"kafka: the nodes' ports {ports} (each with its controller on port + 1) "
            f"overlap; choose ports at least 2 apart in RESULTLOG_KAFKA_BOOTSTRAP_SERVERS"
        )
    return ports


def cluster_bootstrap(settings: Settings) -> str:
    """Every node's address, for clients that must survive losing any one node."""
    return ",".join(f"127.0.0.1:{port}" for port in node_ports(settings))


def node_name(settings: Settings, node_id: int) -> str:
    """``kafka`` for the one-node stack (its state dir since the start), else ``kafka-<id>``."""
    return "kafka" if settings.dev_kafka_brokers == 1 else f"kafka-{node_id}"


def shared_cluster_id(dev_dir: Path, node_names: list[str]) -> str:
    """The cluster id all nodes format with: an existing node's, else a new one, made once.

    The nodes prepare in parallel threads; ``os.link`` creates the file atomically, so
    exactly one id wins even when two nodes ask at the same moment.
    """
    path = dev_dir / CLUSTER_ID_FILE
    if not path.exists():
        known = [_formatted_cluster_id(dev_dir / name / "data") for name in node_names]
        chosen = next((cid for cid in known if cid), random_cluster_id())
        dev_dir.mkdir(parents=True, exist_ok=True)
        draft = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}")
        draft.write_text(chosen + "\n")
        try:
            os.link(draft, path)
        except FileExistsError:
            pass  # another node's thread was first: use its id
        finally:
            draft.unlink()
    return path.read_text().strip()


def _formatted_cluster_id(data_dir: Path) -> str | None:
    try:
        lines = (data_dir / "meta.properties").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        key, _, value = line.partition("=")
        if key.strip() == "cluster.id":
            return value.strip()
    return None


async def ensure_internal_topics(settings: Settings, *, timeout_s: float = 60.0) -> None:
    """Have a cluster create its group-offsets and transaction topics now.

    Kafka creates them on the first FindCoordinator request, with their full
    replication factor (3 on a three-node cluster), which needs that many brokers
    registered. Made while every node is up, they exist before a fault test kills one;
    made later, the first consumer group would wait for the dead node to come back.
    """
    deadline = time.monotonic() + timeout_s
    pending = {0: "group", 1: "transaction"}  # FindCoordinator key types
    while pending:
        try:
            async with admin_client(settings, cluster_bootstrap(settings)) as admin:
                for key_type in list(pending):
                    await admin.find_coordinator("resultlog-devstack", key_type)
                    del pending[key_type]
        except (KafkaError, OSError, TimeoutError) as exc:
            if time.monotonic() > deadline:
                kinds = " and ".join(pending.values())
                raise DevStackError(
                    f"kafka: no {kinds} coordinator within {timeout_s:.0f} s "
                    f"(the internal topics were not created): {exc!r}"
                ) from exc
            await asyncio.sleep(0.2)
