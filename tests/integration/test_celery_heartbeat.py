"""A Celery worker on the resultlog backend sends worker heartbeats through the log:
the workers view lists it while it runs, and its last heartbeat says it stopped."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import asyncpg  # type: ignore[import-untyped]
import pytest
import redis
import redis.asyncio

from resultlog import names
from resultlog.settings import Settings
from resultlog.views.workers import WorkersView
from tests.integration.processes import ProcessorProcess

pytest.importorskip("celery")

from tests.integration.test_celery_backend import BROKER_DB, Worker  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.slow]
WAIT_S = 60.0


@pytest.fixture
def processor(settings: Settings) -> Iterator[ProcessorProcess]:
    with ProcessorProcess(settings) as processor:
        yield processor


async def test_a_celery_worker_is_in_both_workers_views(
        settings: Settings, processor: ProcessorProcess, pg_pool: asyncpg.Pool,
        redis_client: redis.asyncio.Redis) -> None:
    queue = f"rl-hb-{uuid.uuid4().hex[:10]}"
    broker = settings.redis_url.rsplit("/", 1)[0] + f"/{BROKER_DB}"
    worker = Worker(settings, broker, queue, "resultlog://?worker_heartbeat_s=0.5")
    view = WorkersView(settings, redis_client)
    loop = asyncio.get_running_loop()
    try:
        deadline = loop.time() + WAIT_S
        ours: list[str] = []
        while not ours and loop.time() < deadline:
            ours = [hb.worker_id for hb in await view.live()
                    if hb.source == "celery" and hb.worker_id.startswith(f"{queue}@")]
            await asyncio.sleep(0.1)
        assert ours, worker.output()[-5000:]
        hb = await view.get(ours[0])
        assert hb is not None and hb.queue == queue and hb.concurrency == 2 and hb.ttl_s == 2
    finally:
        worker.stop()
        broker_client = redis.Redis.from_url(broker)
        try:
            broker_client.delete(queue, f"_kombu.binding.{queue}")
        finally:
            broker_client.close()
    table = f'"{settings.postgres_schema}".{names.WORKER_HEARTBEATS_TABLE}'
    deadline = loop.time() + WAIT_S
    stopped = None
    while stopped is None and loop.time() < deadline:
        stopped = await pg_pool.fetchval(
            f"SELECT count(*) FROM {table} WHERE worker_id = $1 AND NOT is_running", ours[0]) or None
        await asyncio.sleep(0.1)
    assert stopped == 1, worker.output()[-5000:]
