"""The emitter's ``read_your_writes`` option against the real Kafka and Redis, with no
processor running: whatever becomes readable was folded by the emitter itself."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import Sequence
from typing import Any

import pytest
import redis.asyncio
from aiokafka.producer.message_accumulator import BatchBuilder  # type: ignore[import-untyped]

from resultlog import names
from resultlog.errors import ConfigurationError
from resultlog.producers import Emitter, SyncEmitter
from resultlog.producers.lanes import Batch
from resultlog.producers.viewfold import AckedFold
from resultlog.schemas.event import TaskEvent
from resultlog.schemas.fold import expire_at, fold
from resultlog.schemas.states import State
from resultlog.settings import Settings
from resultlog.views import RedisView, ResultBackend
from resultlog.devstack.process import free_port
from tests.integration.test_emitter import consume
from tests.integration.test_results import subscribed

pytestmark = pytest.mark.integration


async def test_a_waiting_client_wakes_without_a_processor(settings: Settings) -> None:
    async with ResultBackend(settings) as backend, Emitter(settings, read_your_writes=True) as emitter:
        waiter = asyncio.create_task(backend.AioAsyncResult("ryw-1").get(timeout=60))
        await subscribed(settings, "ryw-1")
        await emitter.started("ryw-1", task_name="add")
        await emitter.success("ryw-1", {"sum": 3})  # buffered: returns before Kafka's ack
        assert await waiter == {"sum": 3}
        view = await backend.aio().view.get("ryw-1")
        assert view is not None and view.state is State.SUCCESS and view.task_name == "add"


async def test_wait_and_flush_return_once_the_events_are_readable(settings: Settings) -> None:
    async with RedisView(settings) as view, Emitter(settings, read_your_writes=True) as emitter:
        await emitter.success("ryw-waited", 1, wait=True)
        waited = await view.get("ryw-waited")
        assert waited is not None and waited.result is not None and json.loads(waited.result) == 1
        ids = [f"ryw-{i}" for i in range(3_000)]  # more than one fold call
        for i, task_id in enumerate(ids):
            await emitter.started(task_id)
            await emitter.success(task_id, i)
        await emitter.flush()
        views = await view.get_many(ids)
        assert [json.loads(v.result) if v is not None and v.result else None for v in views] == list(range(3_000))
        assert all(v is not None and v.state is State.SUCCESS for v in views)


def test_the_sync_emitter_reads_its_writes(settings: Settings) -> None:
    backend = ResultBackend(settings)
    emitter = SyncEmitter(settings, read_your_writes=True)
    try:
        emitter.failure("ryw-sync", ValueError("no"), wait=True)
        assert backend.AsyncResult("ryw-sync").state == "FAILURE"
        emitter.success("ryw-sync-2", [1, 2])
        emitter.flush()
        assert backend.AsyncResult("ryw-sync-2").get(timeout=0) == [1, 2]
    finally:
        emitter.close()
        backend.close()


async def test_the_expiry_it_gives_is_the_one_the_log_gives(
        settings: Settings, redis_client: redis.asyncio.Redis) -> None:
    """An event without a TTL of its own carries the emitter's: the emitter folds the
    view itself, and a processor (or replay) with another RESULTLOG_RESULT_TTL_S folding
    the same event later leaves the expiry alone (the winner does not move). Before, the
    log's event carried none: results a worker wrote expired after the worker's default
    day where the processors kept them for ever (a fault audit: 20 of 20 read PENDING)."""
    worker = settings.replace(result_ttl_s=4000)
    async with Emitter(worker, read_your_writes=True) as emitter:
        plain = await emitter.emit(TaskEvent.create("ryw-ttl", State.SUCCESS, result=1), wait=True)
        own = await emitter.emit(TaskEvent.create("ryw-ttl-own", State.SUCCESS, result=2,
                                                  result_ttl=0), wait=True)
    assert plain.result_ttl_ms == 4_000_000 and own.result_ttl_ms == 0
    logged = {c.event.task_id: c.event for c in await consume(settings, 2)}
    assert logged == {"ryw-ttl": plain, "ryw-ttl-own": own}
    # The processor's fold of what the log holds, with its own setting (keep for ever).
    async with RedisView(settings.replace(result_ttl_s=0)) as processor_view:
        await processor_view.apply(list(logged.values()))
    prefix = settings.redis_prefix
    for task_id, event in logged.items():
        want = expire_at(fold([event])[task_id], 0)
        got = await redis_client.pexpiretime(names.task_key(prefix, task_id))
        assert got == (-1 if want is None else want), task_id


async def test_without_the_option_only_the_processor_writes_the_view(settings: Settings) -> None:
    async with RedisView(settings) as view, Emitter(settings) as emitter:
        await emitter.success("ryw-off", 1, wait=True)
        await emitter.flush()
        assert await view.get("ryw-off") is None
    assert len(await consume(settings, 1)) == 1


async def test_an_unreachable_redis_fails_no_emit_and_is_logged_once(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    gone = dataclasses.replace(settings, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    caplog.set_level(logging.WARNING, logger="resultlog.producers")
    async with Emitter(gone, read_your_writes=True) as emitter:
        for i in range(3):
            await emitter.success(f"ryw-gone-{i}", i, wait=True)
    # Every event is in the log, for the processor to fold; one warning for the outage.
    assert len(await consume(settings, 3)) == 3
    warnings = [r for r in caplog.records if "read-your-writes could not fold" in r.getMessage()]
    assert len(warnings) == 1
    assert "the processor will fold them" in warnings[0].getMessage()


def test_the_option_must_be_a_bool(settings: Settings) -> None:
    with pytest.raises(ConfigurationError, match="read_your_writes must be True or False"):
        Emitter(settings, read_your_writes="yes")  # type: ignore[typeddict-item]


async def test_batches_acknowledged_in_one_loop_turn_are_folded_in_one_call(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One produce response acknowledges a batch per partition, each in its own callback,
    # all queued in the same loop turn (Pipeline._delivered): one fold call for them all,
    # not a Redis round trip and script call each (docs/benchmarks.md, 1 Dec 2026).
    calls: list[int] = []
    apply = RedisView.apply

    async def counted(view: RedisView, events: Sequence[TaskEvent], *args: Any, **kwargs: Any) -> Any:
        calls.append(len(events))
        return await apply(view, events, *args, **kwargs)

    monkeypatch.setattr(RedisView, "apply", counted)
    released: list[Batch] = []
    all_released = asyncio.Event()

    def release(batch: Batch) -> None:
        released.append(batch)
        if len(released) == 8:
            all_released.set()

    folds = AckedFold(settings, release)
    batches = []
    for partition in range(8):
        batch = Batch(BatchBuilder(16_384, 0), first_seq=partition, created=0.0)
        batch.events.append(TaskEvent.create(f"ryw-turn-{partition}", State.SUCCESS, result=partition))
        batches.append(batch)
    try:
        for batch in batches:
            folds.add(batch)
        await asyncio.wait_for(all_released.wait(), 30)
    finally:
        await folds.close()
    assert calls == [8]
    async with RedisView(settings) as view:
        views = await view.get_many([f"ryw-turn-{p}" for p in range(8)])
    assert [v.state if v is not None else None for v in views] == [State.SUCCESS] * 8
