"""Per-partition record batches: where accepted events wait for their turn to be sent.

Each partition has a lane: the batches not yet submitted, oldest first (only the last
one may still take events), and at most one batch submitted and not yet acknowledged.
The pipeline decides when a lane's oldest batch goes out; this module only assembles
batches, in acceptance order, and answers questions about what is pending.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator

from aiokafka.producer.message_accumulator import BatchBuilder  # type: ignore[import-untyped]

from resultlog.producers.buffer import Item, Waiter
from resultlog.producers.partitioner import KeyHashes
from resultlog.schemas.event import TaskEvent


class Batch:
    """One aiokafka record batch and what the pipeline must know about its events."""

    __slots__ = ("builder", "open", "finished", "count", "nbytes", "first_seq", "created", "waiters",
                 "events")

    def __init__(self, builder: BatchBuilder, first_seq: int, created: float) -> None:
        self.builder = builder
        self.created = created  # loop time: when it may stop lingering
        self.open = True  # still takes events
        self.finished = False  # acknowledged or counted as failed: never count it twice
        self.count = 0
        self.nbytes = 0
        self.first_seq = first_seq
        self.waiters: list[Waiter] = []
        self.events: list[TaskEvent] = []  # read-your-writes only (see .viewfold)


class Lane:
    """One partition."""

    __slots__ = ("partition", "batches", "outstanding")

    def __init__(self, partition: int) -> None:
        self.partition = partition
        self.batches: deque[Batch] = deque()
        self.outstanding: Batch | None = None


class Lanes:
    """All partitions' lanes, created as events for them arrive."""

    def __init__(self) -> None:
        self._lanes: dict[int, Lane] = {}
        self._hashes = KeyHashes()

    def __iter__(self) -> Iterator[Lane]:
        return iter(list(self._lanes.values()))

    def add(self, items: deque[Item], partitions: int, new_builder: Callable[[], BatchBuilder], now: float) -> None:
        """Append ``items`` (in order) to their partitions' open batches, opening new ones as needed."""
        hashes, lanes = self._hashes, self._lanes
        for item in items:
            p = hashes(item.key) % partitions
            lane = lanes.get(p)
            if lane is None:
                lane = lanes[p] = Lane(p)
            batch = lane.batches[-1] if lane.batches and lane.batches[-1].open else None
            if batch is None or batch.builder.append(
                timestamp=item.timestamp_ms, key=item.key, value=item.value, headers=[]
            ) is None:
                if batch is not None:
                    batch.open = False  # full
                batch = Batch(new_builder(), item.seq, now)
                lane.batches.append(batch)
                # The first record always fits a fresh batch, whatever its size.
                batch.builder.append(timestamp=item.timestamp_ms, key=item.key, value=item.value, headers=[])
            batch.count += 1
            batch.nbytes += len(item.value)
            if item.waiter is not None:
                batch.waiters.append(item.waiter)
            if item.event is not None:
                batch.events.append(item.event)

    def any_outstanding(self) -> bool:
        return any(lane.outstanding is not None for lane in self._lanes.values())

    def oldest_seq(self) -> int | None:
        """The smallest sequence number batched or in flight, if any."""
        seqs = [lane.outstanding.first_seq for lane in self._lanes.values() if lane.outstanding is not None]
        seqs += [lane.batches[0].first_seq for lane in self._lanes.values() if lane.batches]
        return min(seqs) if seqs else None

    def take_unfinished(self) -> list[Batch]:
        """Empty every lane; the batches (queued or in flight) not yet acknowledged or failed."""
        batches: list[Batch] = []
        for lane in self._lanes.values():
            batches.extend(lane.batches)
            lane.batches.clear()
            if lane.outstanding is not None:
                batches.append(lane.outstanding)
                lane.outstanding = None
        unfinished = [b for b in batches if not b.finished]
        for b in unfinished:
            b.finished = True
        return unfinished
