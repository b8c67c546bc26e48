"""The emitter against the real Kafka broker (one topic per test, from the ``settings`` fixture)."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # type: ignore[import-untyped]
from aiokafka.admin import AIOKafkaAdminClient  # type: ignore[import-untyped]
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType  # type: ignore[import-untyped]

from resultlog.errors import (
    BrokerUnavailable,
    BufferFull,
    DeliveryRefused,
    EmitterClosed,
    EventTooLarge,
    InvalidTaskId,
    ResultNotSerializable,
    UnknownState,
    ValidationError,
)
from resultlog.producers import Emitter, SyncEmitter, ensure_topics
from resultlog.producers.partitioner import partition_for
from resultlog.schemas.codec import Codec
from resultlog.schemas.event import TaskEvent
from resultlog.schemas.states import State
from resultlog.settings import Settings
from resultlog.devstack.process import free_port

pytestmark = pytest.mark.integration

N = 10_000
CODEC = Codec()


@dataclass(frozen=True)
class Consumed:
    partition: int
    offset: int
    key: bytes
    event: TaskEvent


async def consume(settings: Settings, expected: int, *, timeout_s: float = 60, settle_s: float = 0.0) -> list[Consumed]:
    """Everything in the events topic from the start, once ``expected`` records arrived.

    ``settle_s`` keeps reading that long after, to catch records that should not be there.
    """
    consumer = AIOKafkaConsumer(
        settings.events_topic,
        bootstrap_servers=settings.kafka_bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    out: list[Consumed] = []
    try:
        deadline = time.monotonic() + timeout_s
        while len(out) < expected and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for tp, records in batches.items():
                out.extend(Consumed(tp.partition, r.offset, r.key, CODEC.decode(r.value)) for r in records)
        settle_until = time.monotonic() + settle_s
        while time.monotonic() < settle_until:
            batches = await consumer.getmany(timeout_ms=200)
            for tp, records in batches.items():
                out.extend(Consumed(tp.partition, r.offset, r.key, CODEC.decode(r.value)) for r in records)
    finally:
        await consumer.stop()
    return out


def lifecycle_events(tasks: int, per_task: int = 5) -> list[TaskEvent]:
    """``per_task`` events for each of ``tasks`` tasks, interleaved across tasks."""
    ids = [uuid.uuid4().hex for _ in range(tasks)]
    states = [State.RECEIVED, State.STARTED, State.RETRY, State.STARTED, State.SUCCESS]
    out = []
    for step in range(per_task):
        state = states[step % len(states)]
        for n, task_id in enumerate(ids):
            attempt = 0 if step < 3 else 1
            out.append(TaskEvent.create(task_id, state, attempt=attempt, result={"n": n}, task_name="tests.add"))
    return out


def assert_delivered_in_order(emitted: Sequence[TaskEvent], consumed: list[Consumed], partitions: int) -> None:
    assert len(consumed) == len(emitted)
    # Decode equal, nothing extra, nothing lost (TaskEvent holds a dict: not hashable).
    assert {c.event.event_id: c.event for c in consumed} == {e.event_id: e for e in emitted}
    by_task: dict[str, list[Consumed]] = defaultdict(list)
    for c in sorted(consumed, key=lambda c: (c.partition, c.offset)):
        by_task[c.event.task_id].append(c)
    emitted_by_task: dict[str, list[TaskEvent]] = defaultdict(list)
    for e in emitted:
        emitted_by_task[e.task_id].append(e)
    for task_id, records in by_task.items():
        # One partition per task, the one Kafka's default partitioner picks...
        assert {r.partition for r in records} == {partition_for(task_id.encode(), partitions)}
        assert all(r.key == task_id.encode() for r in records)
        # ...and in that partition, emission order.
        assert [r.event for r in records] == emitted_by_task[task_id]


# -- round trips ---------------------------------------------------------------------


async def test_async_emitter_delivers_10k_events_in_per_task_order(settings: Settings) -> None:
    events = lifecycle_events(N // 5)
    async with Emitter(settings) as emitter:
        for event in events:
            await emitter.emit(event)
        await emitter.flush(timeout_s=60)
        assert emitter.pending == 0
    assert_delivered_in_order(events, await consume(settings, N), settings.topic_partitions)


async def test_sync_emitter_delivers_10k_events_from_threads_in_per_task_order(settings: Settings) -> None:
    events = lifecycle_events(N // 5)
    # Four threads, each owning a quarter of the tasks (a task runs in one thread).
    tasks = sorted({e.task_id for e in events})
    shards = [set(tasks[i::4]) for i in range(4)]
    with SyncEmitter(settings) as emitter:

        def work(shard: set[str]) -> None:
            for event in events:
                if event.task_id in shard:
                    emitter.emit(event)

        threads = [threading.Thread(target=work, args=(shard,)) for shard in shards]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        emitter.flush(timeout_s=60)
    assert_delivered_in_order(events, await consume(settings, N), settings.topic_partitions)


async def test_per_state_calls_carry_their_fields(settings: Settings) -> None:
    async with Emitter(settings, worker="w-1") as emitter:
        await emitter.received("t1", task_name="add", args=[1, 2], kwargs={"x": 1}, parent_id="p", root_id="r",
                               group_id="g", chord_id="c", chord_size=2, chord_index=1)
        await emitter.started("t1", task_name="add")
        await emitter.retry("t1", ValueError("flaky"), attempt=0, eta=1_900_000_000_000)
        await emitter.started("t1", attempt=1)
        await emitter.success("t1", {"sum": 3}, runtime=0.5, attempt=1, wait=True)
        await emitter.failure("t2", KeyError("k"), traceback="tb", runtime=1.0)
        await emitter.revoked("t3")
        await emitter.emit_state("t4", "started")
    got = {(c.event.task_id, c.event.state, c.event.attempt): c.event for c in await consume(settings, 8)}
    received = got[("t1", State.RECEIVED, 0)]
    assert (received.task_name, received.args, received.kwargs, received.worker) == ("add", "[1,2]", '{"x":1}', "w-1")
    assert (received.parent_id, received.root_id, received.group_id) == ("p", "r", "g")
    assert (received.chord_id, received.chord_size, received.chord_index) == ("c", 2, 1)
    retry = got[("t1", State.RETRY, 0)]
    assert retry.exception is not None and retry.exception.type == "ValueError" and retry.eta == 1_900_000_000_000
    success = got[("t1", State.SUCCESS, 1)]
    assert success.result_value() == {"sum": 3} and success.runtime == 0.5
    failure = got[("t2", State.FAILURE, 0)]
    assert failure.exception is not None and failure.exception.message == "'k'" and failure.traceback == "tb"
    assert ("t3", State.REVOKED, 0) in got and ("t4", State.STARTED, 0) in got


async def test_stop_delivers_everything_accepted(settings: Settings) -> None:
    emitter = Emitter(settings)
    events = lifecycle_events(1000, per_task=2)
    for event in events:
        await emitter.emit(event)
    await emitter.stop()  # no flush first
    assert len(await consume(settings, len(events))) == len(events)
    with pytest.raises(EmitterClosed):
        await emitter.started("late")


# -- track ---------------------------------------------------------------------------


async def test_track_success_and_failure(settings: Settings) -> None:
    async with Emitter(settings) as emitter:
        async with emitter.track("ok", task_name="add", args=[2, 2]) as tracked:
            await asyncio.sleep(0.01)
            tracked.result = 4
        with pytest.raises(ZeroDivisionError):
            async with emitter.track("boom", task_name="div"):
                1 / 0

        @emitter.track("decorated", task_name="mul")
        async def mul(a: int, b: int) -> int:
            return a * b

        assert await mul(3, 4) == 12

        @emitter.track("bad-result")
        async def unrecordable() -> object:
            return object()

        with pytest.raises(ResultNotSerializable):
            await unrecordable()
    events = {(c.event.task_id, c.event.state): c.event for c in await consume(settings, 8)}
    ok = events[("ok", State.SUCCESS)]
    assert ok.result_value() == 4 and ok.runtime is not None and ok.runtime >= 0.01 and ok.args == "[2,2]"
    assert ("ok", State.STARTED) in events
    boom = events[("boom", State.FAILURE)]
    assert boom.exception is not None
    assert (boom.exception.type, boom.exception.module) == ("ZeroDivisionError", "builtins")
    assert boom.exception.message == "division by zero"
    assert boom.traceback is not None and "1 / 0" in boom.traceback
    assert events[("decorated", State.SUCCESS)].result_value() == 12
    bad = events[("bad-result", State.FAILURE)]
    assert bad.exception is not None and bad.exception.type == "ResultNotSerializable"


async def test_sync_track_success_and_failure(settings: Settings) -> None:
    with SyncEmitter(settings) as emitter:
        with emitter.track("ok", task_name="add") as tracked:
            tracked.result = {"a": [1]}

        @emitter.track("boom")
        def fail() -> None:
            raise RuntimeError("nope")

        with pytest.raises(RuntimeError):
            fail()
    events = {(c.event.task_id, c.event.state): c.event for c in await consume(settings, 4)}
    assert events[("ok", State.SUCCESS)].result_value() == {"a": [1]}
    failure = events[("boom", State.FAILURE)]
    assert failure.exception is not None and failure.exception.message == "nope"
    assert {("ok", State.STARTED), ("boom", State.STARTED)} <= events.keys()


# -- bad input -----------------------------------------------------------------------


async def test_bad_input_raises_at_the_call_and_buffers_nothing(settings: Settings) -> None:
    small = settings.replace(max_event_bytes=2048)
    async with Emitter(small) as emitter:
        with pytest.raises(ResultNotSerializable):
            await emitter.success("t", object())
        with pytest.raises(EventTooLarge, match="RESULTLOG_MAX_EVENT_BYTES"):
            await emitter.success("t", "x" * 4096)
        with pytest.raises(InvalidTaskId):
            await emitter.started("")
        with pytest.raises(InvalidTaskId):
            await emitter.started(42)  # type: ignore[arg-type]
        with pytest.raises(UnknownState):
            await emitter.emit_state("t", "PENDING")
        for bad_wait in ("no", 0, None):
            with pytest.raises(ValidationError, match="wait must be True or False"):
                await emitter.started("t", wait=bad_wait)  # type: ignore[arg-type]
        for not_an_event in ({"task_id": "a1"}, None):
            with pytest.raises(ValidationError, match="emit\\(\\) takes a TaskEvent, got"):
                await emitter.emit(not_an_event)  # type: ignore[arg-type]
        assert emitter.pending == 0
        await emitter.started("good")
    consumed = await consume(settings, 1, settle_s=1.0)
    assert [c.event.task_id for c in consumed] == ["good"]


def test_sync_bad_input_raises_at_the_call(settings: Settings) -> None:
    with SyncEmitter(settings.replace(max_event_bytes=2048)) as emitter:
        with pytest.raises(ResultNotSerializable):
            emitter.success("t", {1, 2})
        with pytest.raises(EventTooLarge):
            emitter.success("t", "x" * 5000)
        with pytest.raises(InvalidTaskId):
            emitter.revoked("  ")
        with pytest.raises(UnknownState):
            emitter.emit_state("t", "DONE")
        with pytest.raises(ValidationError, match="wait must be True or False"):
            emitter.started("t", wait="yes")  # type: ignore[arg-type]
        with pytest.raises(ValidationError, match="emit\\(\\) takes a TaskEvent, got dict"):
            emitter.emit({"task_id": "a1"})  # type: ignore[arg-type]
        assert emitter.pending == 0
        # An outcome over the limit is cut to fit, never refused (producers/fitting.py).
        emitter.failure("t", ValueError("x" * 5000), wait=True)


async def test_a_timestamp_kafka_would_refuse_as_too_far_ahead_is_refused_at_the_call(
        settings: Settings) -> None:
    """Kafka 4.0 refuses a record more than an hour ahead of its clock: that was a
    retriable BrokerUnavailable, raised again by stop(), for an event that can never be
    delivered. Up to an hour ahead is taken (and delivered)."""
    ahead = int(time.time() * 1000) + 2 * 3_600_000
    event = TaskEvent.create("t", State.STARTED, timestamp=ahead)
    async with Emitter(settings) as emitter:
        with pytest.raises(ValidationError, match="^the event's timestamp .* of 't' is 7[12][0-9][0-9] s ahead"):
            await emitter.emit(event, wait=True)
        assert emitter.pending == 0
        await emitter.emit(TaskEvent.create("soon", State.STARTED,
                                            timestamp=ahead - 3_600_000 - 60_000), wait=True)
    with SyncEmitter(settings) as sync:
        with pytest.raises(ValidationError, match="^the event's timestamp .* ahead"):
            sync.emit(event)
    consumed = await consume(settings, 1, settle_s=1.0)
    assert [c.event.task_id for c in consumed] == ["soon"]


BAD_TIMEOUTS: list[object] = ["x", "30", True, float("nan"), -1, -0.5]


async def test_a_bad_timeout_is_refused_before_the_sync_emitter_closes_anything(settings: Settings) -> None:
    emitter = SyncEmitter(settings)
    for n in range(20_000):
        emitter.started(f"t{n % 500}")
    # Refused before anything is done: nothing closed, nothing dropped as timed out.
    for bad in BAD_TIMEOUTS:
        with pytest.raises(ValidationError, match="^timeout_s must be None or a number of seconds"):
            emitter.close(bad)  # type: ignore[arg-type]
        with pytest.raises(ValidationError, match="^timeout_s must be None or a number of seconds"):
            emitter.flush(bad)  # type: ignore[arg-type]
    emitter.started("after")  # still usable
    emitter.close()
    assert len(await consume(settings, 20_001, settle_s=1.0)) == 20_001


async def test_a_bad_timeout_is_refused_before_the_emitter_stops(settings: Settings) -> None:
    emitter = Emitter(settings)
    for n in range(5_000):
        await emitter.started(f"t{n % 500}")
    for bad in BAD_TIMEOUTS:
        with pytest.raises(ValidationError, match="^timeout_s must be None or a number of seconds"):
            await emitter.stop(bad)  # type: ignore[arg-type]
        with pytest.raises(ValidationError, match="^timeout_s must be None or a number of seconds"):
            await emitter.flush(bad)  # type: ignore[arg-type]
    await emitter.started("after")
    await emitter.flush(float("inf"))  # no limit, as get(timeout=inf)
    await emitter.stop()
    assert len(await consume(settings, 5_001, settle_s=1.0)) == 5_001


async def test_broker_unavailable_is_fast_and_says_what_to_change(settings: Settings) -> None:
    nowhere = settings.replace(kafka_bootstrap_servers=f"127.0.0.1:{free_port()}", kafka_timeout_s=1.0)
    emitter = Emitter(nowhere)
    with pytest.raises(BrokerUnavailable) as raised:
        await emitter.started("t")
    assert nowhere.kafka_bootstrap_servers in str(raised.value)
    assert "RESULTLOG_KAFKA_BOOTSTRAP_SERVERS" in str(raised.value)
    assert emitter.pending == 0
    await emitter.stop()

    sync = SyncEmitter(nowhere)
    with pytest.raises(BrokerUnavailable, match="RESULTLOG_KAFKA_BOOTSTRAP_SERVERS"):
        sync.started("t")
    sync.close()


# -- delivery failures, back-pressure ------------------------------------------------


async def test_rejected_batch_surfaces_and_the_emitter_recovers(settings: Settings) -> None:
    # The broker refuses records over 2 KB on this topic; the emitter allows 1 MB.
    await ensure_topics(settings, settings.events_topic, configs={"max.message.bytes": "2048"})
    # create_topics=False: with it the emitter would refuse this topic at start, as
    # too small for its limit; here the broker's refusal is the point.
    async with Emitter(settings, create_topics=False) as emitter:
        await emitter.started("ok-1")
        await emitter.flush()
        # Random text: compressed (zstd by default) it stays over 2 KB.
        await emitter.success("too-big", secrets.token_urlsafe(4000))
        # Refused, each time: sending them again would not help (not retriable), and
        # the message names the broker's answer.
        with pytest.raises(DeliveryRefused, match="1 event.*MessageSizeTooLarge") as told:
            await emitter.flush(timeout_s=30)
        assert not told.value.retriable
        with pytest.raises(DeliveryRefused, match="1 earlier event"):
            await emitter.started("refused")  # told once, and this one is not accepted
        with pytest.raises(DeliveryRefused, match="not delivered"):
            await emitter.success("too-big-waited", secrets.token_urlsafe(4000), wait=True)
        await emitter.started("ok-2")  # the waiting caller was told: callers hear nothing more...
        with pytest.raises(DeliveryRefused, match="1 event"):
            await emitter.flush(timeout_s=30)  # ...but flush reports all losses since the last flush
    consumed = await consume(settings, 2, settle_s=1.0)
    assert sorted(c.event.task_id for c in consumed) == ["ok-1", "ok-2"]


async def test_buffer_full_names_the_timeout(settings: Settings) -> None:
    async with Emitter(settings, max_buffered_events=5, buffer_timeout_s=0) as emitter:
        with pytest.raises(BufferFull, match=r"0 s \(buffer_timeout_s\)"):
            for i in range(10_000):
                await emitter.started(f"t{i}")
        accepted = emitter.pending
        assert accepted <= 5


# -- processes -----------------------------------------------------------------------


async def test_sync_emitter_in_a_forked_child_starts_fresh(settings: Settings) -> None:
    emitter = SyncEmitter(settings)
    emitter.started("parent-before")
    emitter.flush()
    pid = os.fork()
    if pid == 0:  # the child: must not reuse the parent's loop thread or sockets
        code = 1
        try:
            emitter.started("child")
            emitter.close()
            code = 0
        finally:
            os._exit(code)
    emitter.started("parent-after")
    _, status = await asyncio.to_thread(os.waitpid, pid, 0)
    emitter.close()
    assert os.waitstatus_to_exitcode(status) == 0
    consumed = await consume(settings, 3, settle_s=0.5)
    assert sorted(c.event.task_id for c in consumed) == ["child", "parent-after", "parent-before"]
    workers = {c.event.task_id: c.event.worker for c in consumed}
    assert workers["child"] != workers["parent-after"]


async def test_sync_emitter_left_open_is_flushed_at_exit(settings: Settings) -> None:
    script = (
        "import gc\n"
        "from resultlog.producers.sync import SyncEmitter\n"
        "kept = SyncEmitter()\n"
        "def work():\n"
        "    dropped = SyncEmitter()\n"
        "    for i in range(1000):\n"
        "        dropped.started(f'd{i}')\n"
        "work()\n"
        "gc.collect()\n"
        "for i in range(1000):\n"
        "    kept.started(f'k{i}')\n"
        "# no close(): the atexit hook must deliver both emitters' events\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESULTLOG_")}
    env.update(RESULTLOG_KAFKA_BOOTSTRAP_SERVERS=settings.kafka_bootstrap_servers,
               RESULTLOG_EVENTS_TOPIC=settings.events_topic)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", script, cwd=root, env=env)
    assert await asyncio.wait_for(proc.wait(), 60) == 0
    assert len(await consume(settings, 2000, settle_s=0.5)) == 2000


# -- topics --------------------------------------------------------------------------


async def test_ensure_topics_creates_once_with_partitions_and_retention(settings: Settings) -> None:
    topic = settings.events_topic
    results = await asyncio.gather(*(ensure_topics(settings, topic, retention_ms=3_600_000) for _ in range(3)))
    assert sum(len(r) for r in results) <= 1  # concurrent creators: one wins, none fails
    assert await ensure_topics(settings, topic) == []
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        [described] = await admin.describe_topics([topic])
        assert len(described["partitions"]) == settings.topic_partitions
        response = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
        configs = {entry[0]: entry[1] for entry in response[0].resources[0][4]}
        assert configs["retention.ms"] == "3600000"
    finally:
        await admin.close()


async def test_a_created_topic_takes_a_write_on_every_partition_at_once(
        settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    """ensure_topics returns once each new partition's leader answers for it: the first
    produce to every partition is not refused as "not leader" (aiokafka would retry it
    after its backoff, with a warning)."""
    topic = settings.events_topic
    assert await ensure_topics(settings, topic) == [topic]
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers,
                                acks="all", enable_idempotence=True)
    await producer.start()
    try:
        with caplog.at_level(logging.WARNING, logger="aiokafka"):
            sent = [await producer.send(topic, b"x", partition=p)
                    for p in range(settings.topic_partitions)]
            await asyncio.gather(*sent)
    finally:
        await producer.stop()
    refused = [r.getMessage() for r in caplog.records if "NotLeader" in r.getMessage()]
    assert refused == []
