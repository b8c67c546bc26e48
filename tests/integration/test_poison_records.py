"""Records a producer may write that the stores could not hold as they are, through a
real processor: each is folded (a runtime that is not a finite number) or sent to the
dead letters (a name longer than its index can hold, a heartbeat time past PostgreSQL's
timestamps), and the fold goes on past it; `verify` then finds both stores equal to the
log. Before, each of these stopped the processor at every start (a crash loop): nothing
emitted after it became visible."""

from __future__ import annotations

import asyncio
import math

import pytest

from aiokafka import AIOKafkaConsumer  # type: ignore[import-untyped]

from resultlog.errors import CorruptResult
from resultlog.processors.deadletter import REASON_HEADER, VALUE_BYTES_HEADER
from resultlog.processors.verify import verify
from resultlog.producers import Emitter
from resultlog.producers.topics import ensure_topics, max_message_bytes
from resultlog.schemas.codec import Codec
from resultlog.schemas.event import TaskEvent, new_event_id, now_ms
from resultlog.schemas.states import State
from resultlog.schemas.workers import WorkerHeartbeat
from resultlog.settings import Settings
from resultlog.views import ResultBackend
from tests.integration.processes import ProcessorProcess
from tests.integration.test_pipeline import first_dead_letter, produce_raw

#: 1,200 CJK characters in an order that compresses poorly, 3 UTF-8 bytes each: ~3.6 KB,
#: past a btree index row's 2,704 bytes even as PostgreSQL compresses it.
LONG = "".join(chr(0x4E00 + (i * 7919) % 0x5000) for i in range(1200))


def bypassing_checks(event: TaskEvent, **fields: object) -> TaskEvent:
    """``event`` with ``fields`` set past the model's checks: what another producer's
    record may hold (the reader checks it again)."""
    for name, value in fields.items():
        object.__setattr__(event, name, value)
    return event


async def test_records_the_stores_cannot_hold_are_folded_or_dead_lettered_and_the_fold_goes_on(
        settings: Settings) -> None:
    await ensure_topics(settings, settings.events_topic, settings.dead_letter_topic)
    codec = Codec()
    long_name = bypassing_checks(TaskEvent.create("long-name", State.SUCCESS, result=1), task_name=LONG)
    long_worker = bypassing_checks(TaskEvent.create("long-worker", State.SUCCESS, result=1), worker=LONG)
    beat = WorkerHeartbeat.create("w-far", ttl_s=60, source="test", hostname="h", pid=1, queue="q",
                                  concurrency=1, started_at=now_ms())
    object.__setattr__(beat, "started_at", 2**63 - 1)
    # Year 33658: the history stored it, and every reader of a time failed on it.
    far = bypassing_checks(TaskEvent.create("far-future", State.SUCCESS, result=1),
                           timestamp=10**15 - 1)
    await produce_raw(settings, [
        (b"long-name", codec.encode(long_name)), (b"long-worker", codec.encode(long_worker)),
        (b"w-far", beat.encode(codec)), (b"far-future", codec.encode(far))])

    def event(task_id: str, state: State, runtime: float, **fields: object) -> TaskEvent:
        # Made directly: the contract's runtime is any double (TaskEvent.create refuses these).
        return TaskEvent(event_id=new_event_id(), task_id=task_id, state=state, timestamp=now_ms(),
                         runtime=runtime, task_name="poison.runtime", **fields)  # type: ignore[arg-type]

    processor = ProcessorProcess(settings).start()
    try:
        async with Emitter(settings) as em:
            await em.emit(event("runtime-inf", State.SUCCESS, math.inf, result="1"))
            await em.emit(event("runtime-nan", State.FAILURE, math.nan))
            await em.emit(event("runtime-nan-started", State.STARTED, math.nan))
            await em.emit(event("runtime-negative-inf", State.SUCCESS, -math.inf, result="2"))
            await em.success("after-the-pills", "fine")  # visible only if the fold went on
        async with ResultBackend(settings) as backend:
            assert await backend.AioAsyncResult("after-the-pills").get(timeout=60) == "fine", \
                processor.log.read_text()[-5000:]
            assert await backend.AioAsyncResult("runtime-inf").get(timeout=10) == 1
            assert await backend.AioAsyncResult("runtime-negative-inf").get(timeout=10) == 2
            assert (await backend.AioAsyncResult("runtime-nan").refresh()).state == "FAILURE"
            assert (await backend.AioAsyncResult("runtime-nan-started").refresh()).state == "STARTED"
    finally:
        processor.stop()
    # The four records the reader refuses, in the dead letters, with the reason.
    consumer = AIOKafkaConsumer(settings.dead_letter_topic, bootstrap_servers=settings.kafka_bootstrap_servers,
                                auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    try:
        letters = [await asyncio.wait_for(consumer.getone(), timeout=30) for _ in range(4)]
    finally:
        await consumer.stop()
    reasons = {m.key: dict(m.headers)[REASON_HEADER].decode() for m in letters}
    assert set(reasons) == {b"long-name", b"long-worker", b"w-far", b"far-future"}, reasons
    assert "task_name must be a str of at most 255 characters" in reasons[b"long-name"]
    assert "worker must be a str of at most 255 characters" in reasons[b"long-worker"]
    assert "started_at must be an int in 0..253402300799999" in reasons[b"w-far"]
    assert "0 to 253402300799999 (9999-12-31T23:59:59.999Z)" in reasons[b"far-future"]
    # Both stores as a fold of the log has them, the NaN runtimes included.
    report = await verify(settings)
    assert report.ok, report.differences
    assert report.events == 5 and report.undecodable == 3  # the 3 events the reader refuses


async def test_a_result_that_is_not_json_is_named_by_every_reader(settings: Settings) -> None:
    # Another producer's SUCCESS whose result is not one JSON value: stored as it is,
    # and each reader says what is wrong instead of raising json's or Python's errors.
    await ensure_topics(settings, settings.events_topic)
    codec = Codec()
    bad = {"not-json": "1,2", "too-deep": "[" * 100_000 + "]" * 100_000, "too-long": "9" * 5000}
    await produce_raw(settings, [
        (task_id.encode(), codec.encode(bypassing_checks(
            TaskEvent.create(task_id, State.SUCCESS, result=1), result=text)))
        for task_id, text in bad.items()])
    async with Emitter(settings) as em:
        await em.success("fine", [1])
    with ProcessorProcess(settings):
        async with ResultBackend(settings) as backend:
            assert await backend.AioAsyncResult("fine").get(timeout=60) == [1]
            for task_id in bad:
                with pytest.raises(CorruptResult, match=f"the result of task {task_id!r} is not JSON"):
                    await backend.AioAsyncResult(task_id).get(timeout=10)
            with pytest.raises(CorruptResult, match="the result of task 'not-json'"):
                await backend.AioGroupResult("g", ["fine", "not-json"]).join(timeout=10)
            [event] = await backend.AioAsyncResult("not-json").history()
            with pytest.raises(CorruptResult):
                event.result_value()


async def test_an_undecodable_record_at_the_topics_limit_is_dead_lettered_cut_and_the_fold_goes_on(
        settings: Settings) -> None:
    """Another producer's record that just fits the events topic: its dead letter, the
    same bytes and the reason's headers, did not fit the dead-letter topic (which takes
    what the events topic takes), and the broker's refusal stopped the processor at
    every start: nothing emitted after it became visible."""
    await ensure_topics(settings, settings.events_topic, settings.dead_letter_topic)
    size = max_message_bytes(settings) - 188  # the batch's framing takes the rest
    value = b"\x00" + bytes(i % 251 for i in range(size - 1))  # 0x00: no schema's marker
    await produce_raw(settings, [(b"big", value)])
    async with Emitter(settings) as em:
        await em.success("after-the-big-one", "fine")
    processor = ProcessorProcess(settings).start()
    try:
        async with ResultBackend(settings) as backend:
            assert await backend.AioAsyncResult("after-the-big-one").get(timeout=60) == "fine", \
                processor.output()[-5000:]
        assert processor.alive(), processor.output()[-5000:]
    finally:
        processor.stop()
    letter = await first_dead_letter(settings)
    headers = dict(letter.headers)
    assert letter.key == b"big" and value.startswith(letter.value)
    assert len(letter.key) + len(letter.value) == settings.max_event_bytes
    assert headers[VALUE_BYTES_HEADER] == str(size).encode()
    assert f"is cut to its first {settings.max_event_bytes}" in headers[REASON_HEADER].decode()
