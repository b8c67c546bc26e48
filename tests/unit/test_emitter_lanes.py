"""Per-partition batch assembly: order, splitting when full, pending bookkeeping."""

from __future__ import annotations

from collections import deque

from aiokafka.producer.message_accumulator import BatchBuilder  # type: ignore[import-untyped]
from aiokafka.record.default_records import DefaultRecordBatch  # type: ignore[import-untyped]

from resultlog.producers.buffer import Item
from resultlog.producers.lanes import Lanes
from resultlog.producers.partitioner import partition_for


def items(keys: list[bytes], size: int = 10) -> deque[Item]:
    return deque(Item(seq, key, b"v%d" % seq + b"x" * size, 1_700_000_000_000 + seq, None) for seq, key in enumerate(keys, 1))


def records(batch_builder: BatchBuilder) -> list[tuple[bytes, bytes]]:
    return [(r.key, r.value) for r in DefaultRecordBatch(bytes(batch_builder._build()))]


def test_events_go_to_their_partitions_in_order() -> None:
    lanes = Lanes()
    keys = [f"task-{i % 7}".encode() for i in range(100)]
    queued = items(keys)
    lanes.add(queued, 4, lambda: BatchBuilder(1 << 20, 0), now=0.0)
    seen = 0
    for lane in lanes:
        [batch] = lane.batches
        got = records(batch.builder)
        expected = [(i.key, i.value) for i in queued if partition_for(i.key, 4) == lane.partition]
        assert got == expected
        assert batch.count == len(expected) and batch.first_seq == min(i.seq for i in queued if partition_for(i.key, 4) == lane.partition)
        seen += batch.count
    assert seen == 100


def test_a_full_batch_is_closed_and_a_new_one_opened() -> None:
    lanes = Lanes()
    lanes.add(items([b"k"] * 50, size=200), 1, lambda: BatchBuilder(2048, 0), now=0.0)
    [lane] = list(lanes)
    assert len(lane.batches) > 1
    assert all(not b.open for b in list(lane.batches)[:-1]) and lane.batches[-1].open
    assert sum(b.count for b in lane.batches) == 50
    assert [r for b in lane.batches for r in records(b.builder)] == [(b"k", i.value) for i in items([b"k"] * 50, size=200)]


def test_oldest_seq_and_take_unfinished() -> None:
    lanes = Lanes()
    assert lanes.oldest_seq() is None and not lanes.any_outstanding()
    lanes.add(items([b"a", b"b", b"c"]), 2, lambda: BatchBuilder(1 << 20, 0), now=0.0)
    assert lanes.oldest_seq() == 1
    lane = next(iter(lanes))
    lane.outstanding = lane.batches.popleft()
    assert lanes.any_outstanding()
    taken = lanes.take_unfinished()
    assert sum(b.count for b in taken) == 3 and all(b.finished for b in taken)
    assert lanes.oldest_seq() is None and lanes.take_unfinished() == []
