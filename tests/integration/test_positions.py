"""Where the processor reads from, and what it tells Kafka: offsets and rebalances that
cannot go silently wrong."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from resultlog.producers import Emitter
from resultlog.settings import Settings
from resultlog.views import HistoryStore
from resultlog.devstack.process import free_port
from tests.integration.processes import ProcessorProcess
from tests.integration.test_pipeline import eventually

pytestmark = pytest.mark.integration


async def committed(settings: Settings) -> int:
    """The sum of the processor group's offsets committed in Kafka."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(settings.consumer_group)
    finally:
        await admin.close()
    return sum(max(0, meta.offset) for meta in offsets.values())


async def test_kafka_offsets_are_committed_while_events_keep_coming(settings: Settings) -> None:
    """Lag tools read Kafka's committed offsets: they must move under continuous load,
    not only when the processor is idle."""
    stop = asyncio.Event()

    async def stream() -> int:
        n = 0
        async with Emitter(settings) as em:
            while not stop.is_set():
                for _ in range(50):
                    await em.success(f"load-{n}", n)
                    n += 1
                await asyncio.sleep(0.01)  # a steady stream, never idle for long
        return n

    with ProcessorProcess(settings) as proc:
        producing = asyncio.create_task(stream())
        try:
            async def first_commit() -> bool:
                return await committed(settings) > 0
            await eventually(first_commit, f"a commit under load\n{proc.output()[-3000:]}")
            seen = await committed(settings)

            async def moved_on() -> bool:
                return await committed(settings) > seen
            await eventually(moved_on, "a later commit, still under load")
            assert not producing.done()  # the load never stopped meanwhile
        finally:
            stop.set()
            await producing


async def test_a_store_that_does_not_answer_at_assignment_stops_the_processor(
        settings: Settings) -> None:
    """Positioning partitions needs the stores; one that does not answer is retried
    until RESULTLOG_ASSIGN_TIMEOUT_S (redis-py's own reconnects count within it, so how
    many tries fit depends on the machine: not asserted), then the processor stops
    naming it, rather than reading from Kafka's committed offsets as if nothing
    happened."""
    async with Emitter(settings) as em:
        await em.success("before", 1)
    bad = settings.replace(redis_url=f"redis://127.0.0.1:{free_port()}/0", assign_timeout_s=3.0)
    proc = ProcessorProcess(bad).start()
    try:
        assert proc.proc is not None
        code = await asyncio.to_thread(proc.proc.wait, 120)
        output = proc.output()
        assert code != 0, output[-3000:]
        assert "cannot position partitions" in output and "Redis" in output, output[-3000:]
        assert "writing a batch" not in output, output[-3000:]
    finally:
        proc.stop()
        proc.log.unlink(missing_ok=True)
    async with HistoryStore(settings) as store:
        await store.migrate()
        assert await store.count() == 0  # nothing was folded from an unknown position
