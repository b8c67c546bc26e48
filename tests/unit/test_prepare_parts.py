"""The engine decodes records as they are fetched, into the next batch
(``FoldSink.prepare_yielding(..., into=...)``): a batch prepared in parts must be the
batch prepared at once, whatever the parts."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings, strategies as st

from resultlog.processors.sink import FoldSink, Prepared, RawRecord
from resultlog.schemas.codec import Codec
from resultlog.schemas.event import TaskEvent
from resultlog.schemas.states import State
from resultlog.schemas.workers import WorkerHeartbeat
from resultlog.settings import Settings

_CODEC = Codec()
_STATES = [State.RECEIVED, State.STARTED, State.SUCCESS, State.FAILURE]


def _record(i: int, kind: int) -> RawRecord:
    """Record ``i`` of partition ``i % 3``: a task event, a heartbeat or an undecodable value."""
    if kind == 0:
        value = _CODEC.encode(TaskEvent.create(f"t-{i % 5}", _STATES[i % 4], worker="w1"))
    elif kind == 1:
        value = WorkerHeartbeat.create(f"w-{i}", ttl_s=30, source="celery", hostname="h", pid=1,
                                       queue="default", concurrency=2, started_at=1).encode(_CODEC)
    else:
        value = b"not avro"
    return RawRecord("events", i % 3, 100 + i, f"k-{i}".encode(), value)


def _laid_out(batch: Prepared) -> tuple[object, ...]:
    return (batch.read, batch.rows, batch.view_tasks, batch.view_rows, batch.days,
            [(d.partition, d.offset, d.reason) for d in batch.bad], batch.chord_traffic,
            batch.offsets, batch.heartbeats)


@settings(max_examples=60, deadline=None)
@given(kinds=st.lists(st.integers(0, 2), min_size=1, max_size=40),
       cuts=st.lists(st.integers(0, 40), max_size=6))
def test_a_batch_prepared_in_parts_is_the_batch_prepared_at_once(
        kinds: list[int], cuts: list[int]) -> None:
    records = [_record(i, k) for i, k in enumerate(kinds)]
    sink = FoldSink(Settings.from_env({}), "group")
    bounds = sorted({0, len(records), *(c for c in cuts if c < len(records))})

    async def in_parts() -> Prepared:
        batch: Prepared | None = None
        for lo, hi in zip(bounds, bounds[1:]):
            batch = await sink.prepare_yielding(records[lo:hi], chunk=7, into=batch)
        assert batch is not None
        return batch

    assert _laid_out(asyncio.run(in_parts())) == _laid_out(sink.prepare(records))
