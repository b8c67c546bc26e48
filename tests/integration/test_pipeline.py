"""End to end on the real stack: emitter -> Kafka -> processor -> Redis + Postgres -> AsyncResult."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from hypothesis import HealthCheck, given, settings as hsettings
from hypothesis import strategies as st

from resultlog.processors.deadletter import REASON_HEADER
from resultlog.processors.sink import FoldSink, RawRecord
from resultlog.producers import Emitter
from resultlog.producers.topics import ensure_topics
from resultlog.schemas.codec import Codec
from resultlog.schemas.event import TaskEvent
from resultlog.schemas.fold import fold
from resultlog.schemas.states import State
from resultlog.settings import Settings
from resultlog.views import HistoryStore, RedisView, ResultBackend
from tests.integration.processes import ProcessorProcess
from tests.unit.strategies import task_events

pytestmark = pytest.mark.integration


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 90.0) -> None:
    """Wait for a condition of the real system; fail naming it (a deadline, not a timing claim)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"gave up waiting for: {what}")
        await asyncio.sleep(0.1)


async def produce_raw(settings: Settings, records: list[tuple[bytes | None, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers,
                                acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for key, value in records:
            await producer.send(settings.events_topic, value=value, key=key)
        await producer.flush()
    finally:
        await producer.stop()


async def snapshot(settings: Settings, task_ids: set[str]) -> tuple[dict[str, object], list[tuple[object, ...]]]:
    """Both views, comparable: Redis views by task, history rows minus Kafka provenance."""
    async with RedisView(settings) as view:
        redis_side = {t: (v.public() if (v := await view.get(t)) else None) for t in sorted(task_ids)}
    async with HistoryStore(settings) as store:
        rows = sorted(((e.event_id, e) for e in [x async for x in store.all_events()]), key=lambda p: p[0])
    return redis_side, [r[1] for r in rows]  # type: ignore[misc]


async def test_a_worker_emits_the_processor_folds_and_get_returns(settings: Settings) -> None:
    async with Emitter(settings) as emitter:
        await emitter.received("ok-1", task_name="add", args=[2, 3])
        await emitter.started("ok-1")
        await emitter.success("ok-1", 5, runtime=0.01)
        try:
            {}["missing"]
        except KeyError as exc:
            await emitter.failure("bad-1", exc)
        await emitter.flush()
    with ProcessorProcess(settings) as proc:
        async with ResultBackend(settings) as backend:
            ok = backend.AioAsyncResult("ok-1")
            assert await ok.get(timeout=90) == 5, proc.output()[-3000:]
            assert (ok.state, ok.name, ok.args) == ("SUCCESS", "add", [2, 3])
            bad = backend.AioAsyncResult("bad-1")
            with pytest.raises(KeyError, match="missing"):
                await bad.get(timeout=30)
            assert bad.state == "FAILURE"
            # get() woke on the Redis write, which follows the history commit.
            assert [e.state for e in await ok.history()][-1] is State.SUCCESS
            unknown = await backend.AioAsyncResult("never-emitted").refresh()
            assert unknown.state == "PENDING" and not await unknown.exists()


@hsettings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=st.lists(task_events(), min_size=1, max_size=40), data=st.data())
async def test_duplicated_and_shuffled_streams_fold_to_the_in_order_views(
    base_settings: Settings, events: list[TaskEvent], data: st.DataObject
) -> None:
    """Through the processor's write path (FoldSink) into real Redis and Postgres."""
    dupes = data.draw(st.lists(st.sampled_from(events), max_size=20))
    messy = events + dupes
    data.draw(st.randoms(use_true_random=False)).shuffle(messy)
    sizes = data.draw(st.integers(1, 7))
    tag = uuid.uuid4().hex[:10]
    results = []
    from tests.conftest import cleanup
    for label, stream in (("ordered", events), ("messy", messy)):
        s = base_settings.replace(events_topic=f"h.{tag}.{label}", redis_prefix=f"h{tag}{label}:",
                                  postgres_schema=f"h_{tag}_{label}", result_ttl_s=0)
        sink = FoldSink(s, consumer_group="g")
        await sink.start()
        try:
            codec = Codec()
            records = [RawRecord(s.events_topic, 0, i, e.task_id.encode(), codec.encode(e))
                       for i, e in enumerate(stream)]
            for i in range(0, len(records), sizes):
                await sink.handle(records[i:i + sizes])
        finally:
            await sink.close()
        redis_side, rows = await snapshot(s, {e.task_id for e in events})
        results.append((redis_side, rows))
        await cleanup(s)
    assert results[0] == results[1]
    want = {t: v.public() for t, v in fold(events).items()}
    assert results[0][0] == want
    assert len(results[0][1]) == len({e.event_id for e in events})


async def test_the_real_processor_folds_a_shuffled_duplicated_stream_like_the_ordered_one(
    base_settings: Settings,
) -> None:
    rnd = random.Random(7)
    states = [State.RECEIVED, State.STARTED, State.RETRY, State.STARTED, State.SUCCESS]
    events: list[TaskEvent] = []
    for n in range(200):
        attempt = 0
        for i, state in enumerate(states if n % 3 else states[:2] + [State.FAILURE]):
            if i == 3:
                attempt = 1
            events.append(TaskEvent.create(f"task-{n}", state, attempt=attempt, result=n,
                                           timestamp=1_800_000_000_000 + i, task_name="demo"))
    messy = events + rnd.sample(events, 300)
    rnd.shuffle(messy)
    tag = uuid.uuid4().hex[:10]
    from tests.conftest import cleanup
    snaps = []
    for label, stream in (("ordered", events), ("messy", messy)):
        s = base_settings.replace(events_topic=f"p.{tag}.{label}", consumer_group=f"p.{tag}.{label}",
                                  redis_prefix=f"p{tag}{label}:", postgres_schema=f"p_{tag}_{label}",
                                  result_ttl_s=0)
        await ensure_topics(s, s.events_topic)
        await produce_raw(s, [(e.task_id.encode(), Codec().encode(e)) for e in stream])
        with ProcessorProcess(s) as proc:
            async def all_in() -> bool:
                async with HistoryStore(s) as store:
                    try:
                        return await store.count() == len(events)
                    except Exception:
                        return False
            await eventually(all_in, f"{label}: all {len(events)} events in the history\n{proc.output()[-2000:]}")
            # Redis is written right after the history commit of the same batch: once
            # the view's offsets reach the history's, it holds every batch.
            async def redis_done() -> bool:
                async with RedisView(s) as view, HistoryStore(s) as store:
                    redis_at = await view.committed_offsets(s.consumer_group, s.events_topic)
                    pg_at = await store.committed_offsets(s.consumer_group, s.events_topic)
                return bool(pg_at) and all(redis_at.get(p, -1) >= o for p, o in pg_at.items())
            await eventually(redis_done, "Redis caught up with the history")
        snaps.append(await snapshot(s, {e.task_id for e in events}))
        await cleanup(s)
    (redis_a, rows_a), (redis_b, rows_b) = snaps
    assert redis_a == redis_b == {t: v.public() for t, v in fold(events).items()}
    assert rows_a == rows_b


async def test_sigkill_mid_stream_loses_nothing_and_duplicates_nothing(settings: Settings) -> None:
    settings = settings.replace(result_ttl_s=0)
    n_tasks = 4000
    events = []
    for n in range(n_tasks):
        events.append(TaskEvent.create(f"k{n}", State.STARTED, timestamp=1_800_000_000_000))
        events.append(TaskEvent.create(f"k{n}", State.SUCCESS, result=n, timestamp=1_800_000_000_001))
    await ensure_topics(settings, settings.events_topic)
    await produce_raw(settings, [(e.task_id.encode(), Codec().encode(e)) for e in events])

    async def history_count() -> int:
        async with HistoryStore(settings) as store:
            try:
                return await store.count()
            except Exception:
                return 0

    first = ProcessorProcess(settings).start()
    try:
        async def some_written() -> bool:
            return await history_count() > 0
        await eventually(some_written, "the first processor wrote something")
        seen_views: dict[str, str] = {}
        async with RedisView(settings) as view:
            for t in ("k0", "k1", "k2"):
                if (v := await view.get(t)) is not None:
                    seen_views[t] = v.token
    finally:
        first.kill()
    killed_at = await history_count()
    with ProcessorProcess(settings) as second:
        async def all_written() -> bool:
            return await history_count() == len(events)
        await eventually(all_written, f"all {len(events)} events after restart\n{second.output()[-2000:]}")
        async def redis_done() -> bool:
            async with RedisView(settings) as view:
                views = await view.get_many([f"k{n}" for n in range(n_tasks)])
                return all(v is not None and v.state is State.SUCCESS for v in views)
        await eventually(redis_done, "every task SUCCESS in Redis")
    async with HistoryStore(settings) as store:
        stored = [e async for e in store.all_events()]
    assert sorted(e.event_id for e in stored) == sorted(e.event_id for e in events)  # each exactly once
    async with RedisView(settings) as view:
        for t, token in seen_views.items():
            after = await view.get(t)
            assert after is not None and after.token >= token  # never regressed
    assert killed_at <= len(events)


async def first_dead_letter(settings: Settings) -> Any:
    """The first record of the dead-letter topic (waited for)."""
    consumer = AIOKafkaConsumer(settings.dead_letter_topic, bootstrap_servers=settings.kafka_bootstrap_servers,
                                auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    try:
        return await asyncio.wait_for(consumer.getone(), timeout=30)
    finally:
        await consumer.stop()


async def test_a_poison_message_goes_to_the_dead_letters_and_the_stream_goes_on(settings: Settings) -> None:
    await ensure_topics(settings, settings.events_topic, settings.dead_letter_topic)
    good = TaskEvent.create("after-poison", State.SUCCESS, result="fine")
    await produce_raw(settings, [(b"poison", b"\x00not an event"), (b"after-poison", Codec().encode(good))])
    with ProcessorProcess(settings):
        async with ResultBackend(settings) as backend:
            assert await backend.AioAsyncResult("after-poison").get(timeout=90) == "fine"
    message = await first_dead_letter(settings)
    assert message.value == b"\x00not an event" and message.key == b"poison"
    reason = dict(message.headers)[REASON_HEADER].decode()
    assert "CodecError" in reason and "single-object" in reason
