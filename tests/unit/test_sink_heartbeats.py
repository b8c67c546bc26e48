"""The fold sink sorts worker heartbeats out of a batch, and dead-letters a bad one."""

from __future__ import annotations

from resultlog.processors.sink import FoldSink, RawRecord
from resultlog.schemas.codec import WORKER_HEARTBEAT, Codec
from resultlog.schemas.event import TaskEvent
from resultlog.schemas.workers import WorkerHeartbeat
from resultlog.settings import Settings

codec = Codec()


def beat() -> WorkerHeartbeat:
    return WorkerHeartbeat.create("w-1", ttl_s=30, source="chicory", hostname="h", pid=1,
                                  queue="default", concurrency=2, started_at=1)


def test_heartbeats_are_prepared_for_the_workers_views_and_tasks_for_the_task_views() -> None:
    hb = beat()
    event = TaskEvent.create("t-1", "SUCCESS", result=1)
    sink = FoldSink(Settings.from_env({}), "group")
    prepared = sink.prepare([RawRecord("topic", 0, 0, b"w-1", hb.encode(codec)),
                             RawRecord("topic", 0, 1, b"t-1", codec.encode(event))])
    assert prepared.heartbeats == [hb]
    assert prepared.view_tasks == ["t-1"] and len(prepared.rows) == 1
    assert prepared.offsets == {("topic", 0): 2} and not prepared.bad


def test_a_heartbeat_that_breaks_the_records_rules_is_dead_lettered_with_the_reason() -> None:
    record = beat().to_record() | {"ttl_s": 0}  # encodable, but not a valid heartbeat
    value = codec.encode_record(WORKER_HEARTBEAT, record)
    prepared = FoldSink(Settings.from_env({}), "group").prepare(
        [RawRecord("topic", 0, 0, b"w-1", value)])
    assert not prepared.heartbeats
    assert len(prepared.bad) == 1 and "ttl_s" in prepared.bad[0].reason
