"""The three services are real: a Kafka round trip, Redis SET/GET, a Postgres query."""

from __future__ import annotations

import asyncpg  # type: ignore[import-untyped]
import pytest
import redis.asyncio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # type: ignore[import-untyped]
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped]

from resultlog.settings import Settings

pytestmark = pytest.mark.integration


async def test_kafka_produces_and_consumes_through_a_consumer_group(
    settings: Settings, kafka_admin: AIOKafkaAdminClient
) -> None:
    topic = settings.events_topic
    await kafka_admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])
    sent = {f"task-{i}".encode(): f"event-{i}".encode() for i in range(30)}

    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers, acks="all", enable_idempotence=True
    )
    await producer.start()
    try:
        for key, value in sent.items():
            await producer.send(topic, value, key=key)
        await producer.flush()
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=settings.consumer_group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    received: dict[bytes, bytes] = {}
    try:
        for _ in range(60):
            batches = await consumer.getmany(timeout_ms=500)
            for messages in batches.values():
                received.update((m.key, m.value) for m in messages)
            if len(received) == len(sent):
                break
        await consumer.commit()
        committed = [await consumer.committed(tp) for tp in consumer.assignment()]
    finally:
        await consumer.stop()

    assert received == sent
    assert sum(offset or 0 for offset in committed) == len(sent)
    assert topic in await kafka_admin.list_topics()


async def test_redis_set_get(settings: Settings, redis_client: redis.asyncio.Redis) -> None:
    key = f"{settings.redis_prefix}smoke"
    assert await redis_client.set(key, b"value", ex=60)
    assert await redis_client.get(key) == b"value"
    assert await redis_client.ttl(key) > 0


async def test_postgres_query_in_the_tests_schema(settings: Settings, pg_pool: asyncpg.Pool) -> None:
    async with pg_pool.acquire() as conn:
        await conn.execute(f"CREATE SCHEMA {settings.postgres_schema}")
        await conn.execute("CREATE TABLE smoke (id int PRIMARY KEY, name text)")
        await conn.execute("INSERT INTO smoke VALUES (1, 'one'), (2, 'two')")
        rows = await conn.fetch("SELECT name FROM smoke ORDER BY id")
        schema = await conn.fetchval(
            "SELECT table_schema FROM information_schema.tables WHERE table_name = 'smoke'"
        )
    assert [r["name"] for r in rows] == ["one", "two"]
    assert schema == settings.postgres_schema
