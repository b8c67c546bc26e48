"""StagedWriter's ordering law, whatever each stage's speed: each stage takes one
batch at a time in submission order, a batch's second stage follows its own first
stage and the previous batch's second stage, and no batch starts after a first stage
failed (its offsets would move past the failed batch)."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resultlog.processors.sink import Prepared, StagedWriter, SinkStats


def batch(i: int) -> Prepared:
    return Prepared(i, [], [], [], set(), [], [], {("t", 0): i + 1})


async def turns(n: int) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def run_stages(first_turns: list[int], second_turns: list[int], caller_turns: list[int]
                 ) -> list[tuple[str, str, int]]:
    log: list[tuple[str, str, int]] = []

    async def first(b: Prepared) -> SinkStats:
        log.append(("first", "begin", b.read))
        await turns(first_turns[b.read])
        log.append(("first", "end", b.read))
        return SinkStats(read=b.read)

    async def second(b: Prepared, stats: SinkStats) -> None:
        assert stats.read == b.read
        log.append(("second", "begin", b.read))
        await turns(second_turns[b.read])
        log.append(("second", "end", b.read))

    async def main() -> None:
        done: list[int] = []
        writer = StagedWriter(first, lambda s: done.append(s.read), second=second)
        for i in range(len(first_turns)):
            await turns(caller_turns[i])
            await writer.submit(batch(i))
        await writer.wait()
        assert done == list(range(len(first_turns)))
        assert writer.idle

    asyncio.run(main())
    return log


def stage(log: list[tuple[str, str, int]], name: str) -> list[tuple[str, int]]:
    return [(what, i) for s, what, i in log if s == name]


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 8).flatmap(lambda n: st.tuples(
    st.lists(st.integers(0, 5), min_size=n, max_size=n),
    st.lists(st.integers(0, 5), min_size=n, max_size=n),
    st.lists(st.integers(0, 3), min_size=n, max_size=n))))
def test_each_stage_writes_one_batch_at_a_time_in_order_and_the_second_after_the_first(
        turns_: tuple[list[int], list[int], list[int]]) -> None:
    first_turns, second_turns, caller_turns = turns_
    n = len(first_turns)
    log = run_stages(first_turns, second_turns, caller_turns)
    in_order = [x for i in range(n) for x in (("begin", i), ("end", i))]
    assert stage(log, "first") == in_order
    assert stage(log, "second") == in_order
    for i in range(n):
        assert log.index(("first", "end", i)) < log.index(("second", "begin", i))


def test_a_first_stage_failure_stops_every_later_batch_and_drop_forgets_them() -> None:
    started: list[int] = []

    async def first(b: Prepared) -> SinkStats:
        started.append(b.read)
        await asyncio.sleep(0)
        if b.read == 1:
            raise RuntimeError("history lost")
        return SinkStats(read=b.read)

    async def second(b: Prepared, stats: SinkStats) -> None:
        await asyncio.sleep(0)

    async def main() -> None:
        writer = StagedWriter(first, lambda s: None, second=second)
        await writer.submit(batch(0))
        await writer.submit(batch(1))
        with pytest.raises(RuntimeError, match="history lost"):
            await writer.submit(batch(2))
        assert started == [0, 1]  # batch 2 never reached the first stage
        failures = await writer.drop()
        assert [str(e) for e in failures] == ["history lost"]
        assert writer.idle and writer.ready
        await writer.submit(batch(2))  # after the drop the writer takes batches again
        await writer.wait()
        assert started == [0, 1, 2]

    asyncio.run(main())
