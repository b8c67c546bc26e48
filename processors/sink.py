"""One batch of raw Kafka records -> both views, exactly once in the history.

The live processor and replay feed batches through :class:`FoldSink`, so there is one
write path to get right. In this order, which is the crash-safety argument
(docs/processor.md, "What happens to a batch"): 1. decode, sending bad records to the
dead-letter topic and chord traffic to the chords topic (both awaited); 2. the history
rows and the consumed offsets in ONE Postgres transaction; 3. the fold into Redis,
recording the same offsets in the same atomic script call. Each store records what it
holds atomically with it, so a partition resumes at the smaller position
(:meth:`FoldSink.resume_offsets`): a crash between 2 and 3 re-reads the batch, which
both writes take idempotently.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, Final, Protocol

from resultlog.chords.entries import failing_too_large
from resultlog.errors import CodecError, ValidationError
from resultlog.processors.deadletter import DeadLetter, DeadLetterWriter, TopicWriter
from resultlog.schemas.codec import CHORD_RECORDS, WORKER_HEARTBEAT, Codec
from resultlog.producers.topics import event_batch_bytes
from resultlog.schemas.event import TaskEvent
from resultlog.schemas.taskrows import history_row, read_rows, view_row
from resultlog.schemas.workers import WorkerHeartbeat
from resultlog.settings import Settings
from resultlog.views.history import HistoryStore
from resultlog.views.partitions import DAY_MS
from resultlog.views.redis_view import RedisView
from resultlog.views.workers import WorkersHistory, WorkersView

log = logging.getLogger("resultlog.processor")

#: What a record batch of one record adds to its key and value, at most (a batch header
#: of 61 bytes, the record's own lengths and offsets), with room to spare.
FORWARD_FRAMING_BYTES: Final = 1024


class Record(Protocol):
    """What the sink needs of a Kafka record: aiokafka's ConsumerRecord has it, so
    readers pass theirs as they are (no copy per record)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...


@dataclass(frozen=True, slots=True)
class RawRecord:
    """A :class:`Record` made by hand (tests)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass(slots=True)
class SinkStats:
    read: int = 0
    inserted: int = 0  # history rows that were new
    duplicates: int = 0  # history rows already present
    dead_letters: int = 0
    redis_changed: int = 0
    heartbeats: int = 0
    # Seconds spent writing each store (the metrics' write latency per store).
    history_s: float = 0.0
    redis_s: float = 0.0

    def add(self, other: SinkStats) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


@dataclass(frozen=True, slots=True)
class Prepared:
    """A decoded batch, laid out for the stores: one history row and one view row per
    good event (``view_tasks[i]`` is the task of ``view_rows[i]``)."""

    read: int
    rows: list[tuple[Any, ...]]
    view_tasks: list[str]
    view_rows: list[list[Any]]
    days: set[int]
    bad: list[DeadLetter]
    chord_traffic: list[tuple[bytes, bytes]]
    offsets: dict[tuple[str, int], int]
    # The live fold only: where the batch begins in each partition. The Redis view must
    # already cover these starts, else the write raises ViewLost (views/coverage.py).
    starts: dict[tuple[str, int], int] | None = None
    # Worker heartbeats (schemas/workers.py), for the workers views.
    heartbeats: list[WorkerHeartbeat] = field(default_factory=list)


def _empty(read: int) -> Prepared:
    return Prepared(read, [], [], [], set(), [], [], {})


@dataclass(slots=True)
class FoldSink:
    settings: Settings
    consumer_group: str
    write_redis: bool = True
    write_history: bool = True
    # False: the history commits asynchronously (HistoryStore(durable_commits=False));
    # only for a caller that re-reads what a PostgreSQL crash lost (the live engine).
    durable_history: bool = True
    codec: Codec = field(default_factory=Codec)
    redis: RedisView | None = None
    history: HistoryStore | None = None
    dead_letters: DeadLetterWriter | None = None
    # Where chord declarations and members' outcomes go (the chord aggregator's topic).
    chord_forwarder: TopicWriter | None = None
    workers: WorkersView | None = None
    workers_history: WorkersHistory | None = None

    async def start(self) -> None:
        if self.redis is None and self.write_redis:
            self.redis = RedisView(self.settings)
            # A refusal (wrong password, untrusted certificate) stops the start here,
            # naming the setting; an outage is waited out while positioning.
            await self.redis.check_access()
        if self.history is None:
            # The history store also holds the offsets, so it is always opened.
            self.history = HistoryStore(self.settings, durable_commits=self.durable_history)
        # Both idempotent, so start() can be called again after PostgreSQL did not answer.
        await self.history.start()
        await self.history.migrate()
        if self.workers is None and self.redis is not None:
            self.workers = WorkersView(self.settings, self.redis.client)
        if self.workers_history is None:
            self.workers_history = WorkersHistory(self.settings, self.history.pool)
        if self.dead_letters is None:
            self.dead_letters = DeadLetterWriter(self.settings)

    async def close(self) -> None:
        if self.redis is not None:
            await self.redis.close()
        if self.history is not None:
            await self.history.close()
        if self.dead_letters is not None:
            await self.dead_letters.close()
        if self.chord_forwarder is not None:
            await self.chord_forwarder.close()

    async def resume_offsets(self, topic: str) -> dict[int, int]:
        """Per partition, the offset from which every store this sink writes is complete:
        the minimum of what each recorded. A partition some store has no record of is
        left out (the caller decides where to start it)."""
        assert self.history is not None, "FoldSink.start() first"
        sources = [await self.history.committed_offsets(self.consumer_group, topic)]
        if self.write_redis and self.redis is not None:
            sources.append(await self.redis.committed_offsets(self.consumer_group, topic))
        common = set.intersection(*(set(s) for s in sources))
        return {p: min(s[p] for s in sources) for p in common}

    def prepare(self, records: Sequence[Record]) -> Prepared:
        """Decode and sort a batch (CPU only, no I/O): what :meth:`write` then stores.

        Each record takes the fast route (``taskrows.read_rows``: bytes -> rows) when it can, else
        the canonical one (decode to a :class:`TaskEvent`, then build the rows), which
        also names what is wrong with a record that cannot be stored."""
        batch = _empty(len(records))
        self._prepare_into(batch, records)
        return batch

    async def prepare_yielding(self, records: Sequence[Record], chunk: int = 100,
                               into: Prepared | None = None) -> Prepared:
        """:meth:`prepare`, giving the event loop a turn every ``chunk`` records, so
        that the previous batch's writes (many short round trips) progress meanwhile.

        Each answer of those round trips waits for the chunk in hand: 500 records
        (~3.4 ms) held the history's six round trips of a batch ~21 ms beyond their
        statements, and the history's stage is what bounds the fold; 100 (~0.7 ms)
        folded ~6% faster, 50 slower again (docs/benchmarks.md, "The history's round
        trips waited for decoding").

        ``into``: a batch prepared earlier that ``records`` follow in the log; the
        result is that batch with them added (its lists are extended in place)."""
        batch = _empty(len(records)) if into is None else replace(
            into, read=into.read + len(records))
        for i in range(0, len(records), chunk):
            if i:
                await asyncio.sleep(0)
            self._prepare_into(batch, records[i:i + chunk])
        return batch

    def _prepare_into(self, batch: Prepared, records: Sequence[Record]) -> None:
        rows, view_tasks, view_rows = batch.rows, batch.view_tasks, batch.view_rows
        days, bad, heartbeats = batch.days, batch.bad, batch.heartbeats
        chord_traffic, offsets = batch.chord_traffic, batch.offsets
        decode_any = self.codec.decode_any
        forward = self.chord_forwarder is not None
        ttl_ms = self.settings.result_ttl_s * 1000
        forward_bytes = self._forward_bytes()  # once a call: off the per-record path
        for rec in records:
            tp = (rec.topic, rec.partition)
            if rec.offset + 1 > offsets.get(tp, -1):
                offsets[tp] = rec.offset + 1
            value = rec.value
            fast = None if value is None else read_rows(
                value, rec.topic, rec.partition, rec.offset, ttl_ms)
            if fast is not None:
                row, task_id, view, timestamp, chord_id, ready = fast
            else:
                try:
                    if value is None:
                        raise CodecError("record has no value (a tombstone?)")
                    decoded = decode_any(value)
                    if not isinstance(decoded, TaskEvent):
                        name, record = decoded
                        if name == WORKER_HEARTBEAT:
                            heartbeats.append(WorkerHeartbeat.from_record(record))
                            continue
                        if name not in CHORD_RECORDS:
                            raise CodecError(f"unexpected record type {name} in the events topic")
                        if forward:
                            chord_key = str(record["chord_id"]).encode()
                            if len(chord_key) + len(value) > forward_bytes:
                                raise ValidationError(
                                    f"chord {record['chord_id']}: its {name.rsplit('.', 1)[-1]} "
                                    f"record takes {len(chord_key) + len(value)} bytes with its "
                                    f"chord id as the key, over the {forward_bytes} the "
                                    "chords topic is sure to take (RESULTLOG_MAX_EVENT_BYTES)")
                            chord_traffic.append((chord_key, value))
                        continue
                    event = decoded
                    row = history_row(event, rec.topic, rec.partition, rec.offset)
                    task_id, view = event.task_id, view_row(event, ttl_ms)
                    timestamp, chord_id, ready = event.timestamp, event.chord_id, event.state.ready
                except (CodecError, ValidationError) as exc:
                    bad.append(DeadLetter(rec.key, value, f"{type(exc).__name__}: {exc}",
                                          rec.topic, rec.partition, rec.offset))
                    continue
            rows.append(row)
            view_tasks.append(task_id)
            view_rows.append(view)
            days.add(timestamp // DAY_MS)
            if forward and chord_id is not None and ready:
                chord_key = chord_id.encode()
                if len(chord_key) + len(value) > forward_bytes:  # type: ignore[arg-type]
                    value = self._too_large_to_forward(value, len(chord_key), forward_bytes)  # type: ignore[arg-type]
                chord_traffic.append((chord_key, value))  # type: ignore[arg-type]

    def _forward_bytes(self) -> int:
        """The most a chord record may take, its chord id as the key included, to be
        forwarded to the chords topic: what every topic resultlog checks at start takes
        (producers/topics.event_batch_bytes), less a record batch's framing. The
        emitters' records, at most RESULTLOG_MAX_EVENT_BYTES, always fit; another
        producer's near the events topic's limit may not, keyed by a longer chord id,
        and the broker's refusal stopped the processor at every start (until 1 Dec 2026)."""
        return event_batch_bytes(self.settings) - FORWARD_FRAMING_BYTES

    def _too_large_to_forward(self, value: bytes, key_bytes: int, forward_bytes: int) -> bytes:
        """A chord member's outcome too large to forward, as the member failing with
        ``EventTooLarge`` (what the aggregator records for an entry it cannot cut,
        resultlog/chords/entries.py): its chord fails naming it rather than the processor
        stopping. Its own task view and history keep the outcome whole."""
        event = self.codec.decode(value)
        state, too_large = failing_too_large(
            event.state, event.task_id,
            f"{key_bytes + len(value)} bytes forwarded to its chord, over the {forward_bytes} "
            "the chords topic is sure to take (RESULTLOG_MAX_EVENT_BYTES); another producer "
            "wrote it")
        log.warning("chord member %s of chord %s: %s; forwarded as failing with EventTooLarge",
                    event.task_id, event.chord_id, too_large.message)
        failed = replace(event, state=state, result=None, exception=too_large, traceback=None,
                         args=None, kwargs=None, meta={})
        return self.codec.encode(failed)

    async def handle(self, records: Sequence[Record]) -> SinkStats:
        return await self.write(self.prepare(records))

    async def write(self, batch: Prepared) -> SinkStats:
        """Store a prepared batch; see the module docstring for why in this order."""
        stats = await self.store_history(batch)
        await self.store_view(batch, stats)
        return stats

    async def store_history(self, batch: Prepared) -> SinkStats:
        """Steps 1 and 2 of the module docstring: everything but the Redis view. A
        staged caller (:class:`StagedWriter`) writes the next batch's history
        while this one's view is written."""
        assert self.history is not None and self.dead_letters is not None, "FoldSink.start() first"
        stats = SinkStats(read=batch.read)
        bad, chord_traffic, offsets = batch.bad, batch.chord_traffic, batch.offsets
        await self.dead_letters.send(bad)
        stats.dead_letters = len(bad)
        if chord_traffic and self.chord_forwarder is not None:
            # Repartition by chord id for the aggregator; awaited before the offsets
            # move, so a member's outcome is never lost between the two topics.
            await self.chord_forwarder.send(chord_traffic)
        # Heartbeats before the offsets move: both writes are idempotent, so a batch
        # re-read after a crash between here and the offsets adds nothing.
        stats.heartbeats = len(batch.heartbeats)
        if batch.heartbeats:
            if self.write_history and self.workers_history is not None:
                await self.workers_history.write(batch.heartbeats)
            if self.write_redis and self.workers is not None:
                await self.workers.apply(batch.heartbeats)
        # Without the history (a Redis-only replay) the offsets still record progress.
        began = time.perf_counter()
        if self.write_history:
            stats.inserted = await self.history.write_rows(
                batch.rows, batch.days, offsets, consumer_group=self.consumer_group)
            stats.duplicates = len(batch.rows) - stats.inserted
        else:
            await self.history.write_rows([], set(), offsets, consumer_group=self.consumer_group)
        stats.history_s = time.perf_counter() - began
        return stats

    async def store_view(self, batch: Prepared, stats: SinkStats) -> None:
        """Step 3 of the module docstring, after :meth:`store_history` of the same batch
        (``stats`` is what that returned; the view's counts are added to it)."""
        if self.write_redis and self.redis is not None:
            began = time.perf_counter()
            stats.redis_changed = await self.redis.apply_rows(
                batch.view_tasks, batch.view_rows, batch.offsets,
                consumer_group=self.consumer_group, starts=batch.starts)
            stats.redis_s = time.perf_counter() - began


class StagedWriter:
    """Writes batches strictly in order, in one or two stages, while the caller
    prepares the next batch.

    Each stage writes one batch at a time, in submission order, and batch N enters the
    second stage only once its first stage is done and batch N-1 has left the second.
    So each store's offsets only ever move forward, a batch reaches the second store
    only after the first holds it, and what overlaps is this process decoding batch
    N+2, the first stage writing N+1 and the second writing N. A failure of batch N
    fails every later batch in flight with it (none passes a batch that failed).
    """

    def __init__(self, write: Callable[[Prepared], Awaitable[SinkStats]],
                 on_done: Callable[[SinkStats], None],
                 second: Callable[[Prepared, SinkStats], Awaitable[None]] | None = None) -> None:
        self._write = write
        self._second = second
        self._on_done = on_done
        self._first: asyncio.Task[SinkStats] | None = None  # the batch in the first stage
        self._batches: list[asyncio.Task[None]] = []  # every batch in flight, oldest first

    @property
    def idle(self) -> bool:
        return not self._batches

    @property
    def ready(self) -> bool:
        """Whether a batch can start now (the first stage is free)."""
        return self._first is None or self._first.done()

    def in_flight(self) -> list[asyncio.Task[Any]]:
        """What to wait on to see the writer move: the first stage and every batch."""
        return ([] if self.ready or self._first is None else [self._first]) + self._batches

    def start(self, batch: Prepared) -> None:
        """Start writing ``batch`` (only when :attr:`ready`); raises the failure of a
        batch that has ended since the last call."""
        assert self.ready, "StagedWriter.start() while the first stage is busy"
        self.check()
        first = asyncio.ensure_future(self._write(batch))
        previous = self._batches[-1] if self._batches else None
        self._first = first
        self._batches.append(asyncio.ensure_future(self._through(batch, first, previous)))

    async def _through(self, batch: Prepared, first: asyncio.Task[SinkStats],
                       previous: asyncio.Task[None] | None) -> None:
        stats = await first
        if previous is not None:
            await previous  # its failure is this batch's too: the order must hold
        if self._second is not None:
            await self._second(batch, stats)
        self._on_done(stats)

    def check(self) -> None:
        """Forget the batches that have ended, oldest first; raise the first failure."""
        first = self._first
        if first is not None and first.done() and not first.cancelled():
            # Raised before any later batch starts: its first stage would move that
            # store's offsets past the batch that failed.
            error = first.exception()
            if error is not None:
                raise error
        while self._batches and self._batches[0].done():
            self._batches.pop(0).result()

    async def submit(self, batch: Prepared) -> None:
        """Start ``batch`` once the first stage is free."""
        if not self.ready:
            assert self._first is not None
            await asyncio.wait([self._first])
        self.start(batch)

    async def wait(self) -> None:
        """Until every batch in flight is written; raises the first failure."""
        while self._batches:
            await asyncio.wait([self._batches[0]])
            self.check()

    async def drop(self) -> list[BaseException]:
        """Let every batch in flight end, written or failed, and forget them: for a
        caller that will read what they held again. Returns their failures."""
        batches, self._batches, self._first = self._batches, [], None
        ended = await asyncio.gather(*batches, return_exceptions=True)
        return [e for e in ended if isinstance(e, BaseException)]

    async def settle(self) -> None:
        """On the way out: let the writes in flight land (their offsets are recorded
        with them); raises the first failure."""
        for error in await asyncio.shield(self.drop()):
            raise error
