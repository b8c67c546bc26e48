"""Shared by the benchmarks: isolated settings on the local stack, and cleanup."""

from __future__ import annotations

import asyncio
import subprocess
import uuid

import asyncpg
import redis
from aiokafka.admin import AIOKafkaAdminClient

from resultlog.processors.replay import clear_redis_view
from resultlog.settings import Settings


def isolated(prefix: str, **changes: object) -> Settings:
    tag = f"{prefix}{uuid.uuid4().hex[:8]}"
    return Settings.from_env().replace(
        events_topic=f"bench.{tag}", consumer_group=f"bench.{tag}", redis_prefix=f"bench{tag}:",
        postgres_schema=f"bench_{tag}", **changes)


async def cleanup(settings: Settings) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        topics = [t for t in await admin.list_topics() if t.startswith(settings.events_topic)]
        if topics:
            await admin.delete_topics(topics)
    finally:
        await admin.close()
    await clear_redis_view(settings)
    conn = await asyncpg.connect(settings.postgres_dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{settings.postgres_schema}" CASCADE')
    finally:
        await conn.close()


def stop_celery_run(procs: "list[subprocess.Popen[bytes] | None]", broker: str,
                    queue: str) -> None:
    """The end of a Celery benchmark run: stop its worker and processor, and delete the
    run's queue from the broker so that the next run's worker does not consume it."""
    for proc in procs:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=60)
    client = redis.Redis.from_url(broker)
    try:
        client.delete(queue, f"_kombu.binding.{queue}")
    finally:
        client.close()


def run(coro: "asyncio.Future[object] | object") -> None:
    asyncio.run(coro)  # type: ignore[arg-type]
