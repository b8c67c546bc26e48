"""Private stacks: a stack of one's own to kill, never the one the session shares.

Each test here starts whole stacks (JVMs, an initdb), so they are slow; the session's
shared stack is only looked at, to prove that nothing here touched it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest
import redis.asyncio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition  # type: ignore[import-untyped]
from aiokafka.admin import AIOKafkaAdminClient  # type: ignore[import-untyped]
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType  # type: ignore[import-untyped]

from resultlog.devstack import DevStack, private_stack
from resultlog.devstack import process
from resultlog.producers.topics import ensure_topics
from resultlog.settings import Settings
from tests.conftest import pg_connection

# Killed brokers make aiokafka log at ERROR.
pytestmark = [pytest.mark.integration, pytest.mark.slow,
              pytest.mark.usefixtures("quiet_aiokafka")]


def _needs_local_stack(settings: Settings) -> None:
    if settings.test_services not in ("auto", "local"):
        pytest.skip(f"private stacks are built like the local stack ({settings.test_services})")


@dataclass
class Goal:
    count: int
    reached: asyncio.Event = field(default_factory=asyncio.Event)


async def _shared_pids(base: Settings) -> dict[str, int | None]:
    return {s.name: s.pid for s in await DevStack(base, out=lambda line: None).status()}


async def test_a_private_stack_survives_killing_its_stores_and_leaves_nothing_behind(
    base_settings: Settings,
) -> None:
    _needs_local_stack(base_settings)
    shared_before = await _shared_pids(base_settings)
    lines: list[str] = []
    async with private_stack(base=base_settings, out=lines.append) as stack:
        settings = stack.settings
        assert settings.kafka_bootstrap_servers != base_settings.kafka_bootstrap_servers
        assert settings.redis_url != base_settings.redis_url
        async with redis.asyncio.Redis.from_url(settings.redis_url) as client:
            await client.set("kept?", "no")
        async with pg_connection(settings.postgres_dsn) as conn:
            await conn.execute("CREATE TABLE kept (id int); INSERT INTO kept VALUES (1)")

        redis_pid = stack.dev.service("redis").pid()
        await stack.kill("redis")
        assert redis_pid is not None and not process.pid_alive(redis_pid)
        await stack.start("redis")
        async with redis.asyncio.Redis.from_url(settings.redis_url) as client:
            assert await client.ping()
            assert await client.dbsize() == 0  # no persistence: it restarts empty

        await stack.kill("postgres")
        await stack.start("postgres")
        async with pg_connection(settings.postgres_dsn) as conn:
            assert await conn.fetchval("SELECT count(*) FROM kept") == 1  # crash recovery
        pids = [svc.pid() for svc in stack.dev.services]
        dev_dir = stack.dev_dir

    assert all(pid is not None and not process.pid_alive(pid) for pid in pids), pids
    assert not dev_dir.exists()
    assert any("killed (SIGKILL)" in line for line in lines)
    assert await _shared_pids(base_settings) == shared_before


async def test_a_three_node_cluster_keeps_every_acknowledged_record_when_the_leader_dies(
    base_settings: Settings,
) -> None:
    _needs_local_stack(base_settings)
    shared_before = await _shared_pids(base_settings)
    async with private_stack(brokers=3, base=base_settings, out=lambda line: None) as stack:
        settings = stack.settings
        assert (settings.topic_replication_factor, settings.topic_min_insync_replicas) == (3, 2)
        topic = "faults"
        await ensure_topics(settings, topic, partitions=1)
        before = await stack.partition_state(topic, 0)
        assert sorted(before.replicas) == [1, 2, 3] and sorted(before.isr) == [1, 2, 3]
        await _check_replication(settings.kafka_bootstrap_servers, topic)

        acked: list[int] = []
        goal = Goal(100)  # the producer sets goal.reached once goal.count are acknowledged
        stop = asyncio.Event()

        async def produce() -> None:
            producer = AIOKafkaProducer(
                bootstrap_servers=settings.kafka_bootstrap_servers,
                acks="all",
                enable_idempotence=True,
                request_timeout_ms=60_000,
            )
            await producer.start()
            try:
                n = 0
                while not stop.is_set():
                    await producer.send_and_wait(topic, str(n).encode())
                    acked.append(n)
                    n += 1
                    if n >= goal.count:
                        goal.reached.set()
            finally:
                await producer.stop()

        producing = asyncio.create_task(produce())
        await asyncio.wait_for(goal.reached.wait(), 60)
        await stack.kill_broker(before.leader)
        # Writes go on through the new leader: 100 more acknowledged after the kill.
        goal = Goal(len(acked) + 100)
        new_leader = await stack.partition_leader(topic, 0, other_than=before.leader)
        assert new_leader != before.leader
        await asyncio.wait_for(goal.reached.wait(), 120)
        stop.set()
        await producing

        consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap_servers, enable_auto_commit=False
        )
        await consumer.start()
        try:
            partition = TopicPartition(topic, 0)
            consumer.assign([partition])
            await consumer.seek_to_beginning(partition)
            end = (await consumer.end_offsets([partition]))[partition]
            seen: list[int] = []
            while await consumer.position(partition) < end:
                batch = await consumer.getmany(partition, timeout_ms=1000)
                seen.extend(int(m.value) for m in batch.get(partition, []))
        finally:
            await consumer.stop()
        assert seen == acked  # none lost, none duplicated, in order

        await stack.start_broker(before.leader)
        state = await stack.partition_state(topic, 0)
        assert before.leader in state.replicas
    assert await _shared_pids(base_settings) == shared_before


async def _check_replication(bootstrap: str, topic: str) -> None:
    """The topic and the cluster's offsets topic: 3 replicas, min.insync.replicas 2."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        # The broker that answers may not know a topic created a moment ago (its
        # metadata lags the controller's): it answers with no partitions, or an error
        # code and no config entries. Ask until one answers for the topic.
        deadline = asyncio.get_running_loop().time() + 30
        while True:
            described = await admin.describe_topics([topic, "__consumer_offsets"])
            replicas = {t["topic"]: {len(p["replicas"]) for p in t["partitions"]}
                        for t in described}
            if replicas.get(topic) or asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.2)
        assert replicas == {topic: {3}, "__consumer_offsets": {3}}
        while True:
            [response] = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, topic, {"min.insync.replicas": None})]
            )
            error_code, entries = response.resources[0][0], response.resources[0][4]
            if error_code == 0 or asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.2)
        configs = {entry[0]: entry[1] for entry in entries}
        assert configs["min.insync.replicas"] == "2", response
    finally:
        await admin.close()

