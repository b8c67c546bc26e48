"""The fold engine: the events topic read in large batches with aiokafka's ``getmany``,
as a task of the faust worker, in the consumer group ``settings.consumer_group``.

docs/processor.md explains it: "Why the fold is not a faust agent"; "Where a partition
resumes" (from the stores, never from Kafka's committed offsets, which are written for
lag tools only; a lost view is claimed and rebuilt); "Asynchronous history commits"
(``_held``, and the re-read on :class:`~resultlog.errors.HistoryRewound`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any, Final

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition  # type: ignore[import-untyped]
from aiokafka.errors import CommitFailedError, KafkaError  # type: ignore[import-untyped]

from resultlog.backoff import Backoff
from resultlog.background import stop_if_cancelled
from resultlog.errors import BrokerUnavailable, HistoryRewound, ResultlogError, ViewLost
from resultlog.processors.fetchcursor import FetchCursor
from resultlog.processors.foldstatus import FoldStatus, LogEnds, PartitionProgress
from resultlog.processors.metrics import ProcessorMetrics
from resultlog.processors.rebuild import ViewRebuilder
from resultlog.producers.kafka import started
from resultlog.processors.sink import FoldSink, StagedWriter, Prepared, SinkStats
from resultlog.connections import kafka_client_args
from resultlog.settings import Settings
from resultlog.views.coverage import Claim, ViewCoverage

log = logging.getLogger("resultlog.processor")

BATCH_MAX: Final = 5000
#: Kafka's committed offsets (for lag tools) are written this often, under any load.
COMMIT_INTERVAL_S: Final = 1.0
#: How often the view's positions are checked while no write would notice a loss.
VIEW_CHECK_INTERVAL_S: Final = 1.0
#: With a processor linger, a fetch is answered early once this much (of record
#: batches, as stored: compressed) has arrived, so a backlog is read without waiting.
LINGER_FETCH_BYTES: Final = 512 * 1024


#: How long the broker holds a fetch that finds nothing to read (Kafka's default). With
#: ``fetch_min_bytes`` 1 it answers as soon as one record arrives, so this bounds only
#: an idle consumer's polling: at 5 ms an idle processor spent 15% of a core on empty
#: fetches, at 500 ms 2% (docs/processor.md, "Processor linger").
EMPTY_FETCH_WAIT_MS: Final = 500


def fetch_wait(linger_ms: int) -> dict[str, int]:
    """The consumer's fetch settings for a processor linger (docs/processor.md, "Processor
    linger"): without one, the broker answers as soon as one record is there."""
    if linger_ms == 0:
        return {"fetch_max_wait_ms": EMPTY_FETCH_WAIT_MS, "fetch_min_bytes": 1}
    return {"fetch_max_wait_ms": linger_ms, "fetch_min_bytes": LINGER_FETCH_BYTES}


class _Positioning(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, engine: BatchFoldEngine) -> None:
        self.engine = engine

    async def on_partitions_revoked(self, revoked: Any) -> None:
        # The batch in flight finishes in the fold loop; its writes are idempotent and
        # its offsets only move forward (GREATEST), so a new owner may safely overlap.
        self.engine.revoked({tp.partition for tp in revoked})

    async def on_partitions_assigned(self, assigned: Any) -> None:
        await self.engine.assigned(set(assigned))


class BatchFoldEngine:
    def __init__(self, settings: Settings, sink: FoldSink,
                 metrics: ProcessorMetrics | None = None) -> None:
        self.settings = settings
        self.sink = sink
        self.metrics = metrics
        self.consumer: AIOKafkaConsumer | None = None
        self.coverage: ViewCoverage | None = None
        self.rebuilder: ViewRebuilder | None = None
        # Per partition positioned from the stores since its assignment: the offset the
        # next fetched batch starts at. Records of any other partition are dropped: the
        # consumer may fetch a newly assigned partition from Kafka's committed offsets
        # while the rebalance listener is still positioning it (or failed to); and a
        # fetch begun before a seek is never taken (processors/fetchcursor.py).
        self._cursor = FetchCursor()
        # Per partition: the next offset both stores hold (written batches): what Kafka
        # is told at the next commit.
        self._written: dict[int, int] = {}
        # Per partition: the next offset the history holds by this processor's own
        # account (its positions at assignment, then every batch written). With
        # asynchronous commits a PostgreSQL crash can take it back: see the docstring.
        self._held: dict[int, int] = {}
        # A failure aiokafka's rebalance listener would swallow; the fold loop raises it.
        self._failure: BaseException | None = None
        # For status(): per positioned partition, the next offset both stores hold; and
        # whether the current assignment has been positioned.
        self._stored: dict[int, int] = {}
        self._assigned = False
        self._log_ends: LogEnds | None = None
        self._stopped_on_error = False

    # -- positions --------------------------------------------------------------------

    async def assigned(self, assigned: set[TopicPartition]) -> None:
        """Position every assigned partition from the stores (see the module docstring).

        Never raises: aiokafka logs and drops a listener's exception, and the consumer
        would then read from Kafka's committed offsets. A store that does not answer is
        retried for ``settings.assign_timeout_s``; after that, or on any other error, the failure is
        kept for the fold loop, which stops the processor with it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.assign_timeout_s
        backoff = Backoff()
        while True:
            try:
                await self._position(assigned)
                self._assigned = True
                return
            except Exception as exc:
                # A KafkaError here is the broker not answering a metadata request;
                # anything else (a bug) stops the processor, as aiokafka would swallow it.
                retriable = exc.retriable if isinstance(exc, ResultlogError) else \
                    isinstance(exc, KafkaError)
                if not retriable or loop.time() + backoff.delay > deadline:
                    log.critical("cannot position partitions %s from the stores: %s; stopping",
                                 sorted(tp.partition for tp in assigned), exc)
                    self._failure = exc
                    return
                log.warning("positioning partitions %s failed (%s); retrying in %.1fs",
                            sorted(tp.partition for tp in assigned), exc, backoff.delay)
                await backoff.wait()

    def revoked(self, partitions: set[int]) -> None:
        self._assigned = False
        self._cursor.drop(partitions)
        for p in partitions:
            self._held.pop(p, None)
            self._stored.pop(p, None)

    async def _position(self, assigned: set[TopicPartition]) -> None:
        consumer, coverage = self.consumer, self.coverage
        assert consumer is not None and coverage is not None
        if not assigned:
            return
        begin, history = await self._claim({tp.partition: -1 for tp in assigned})
        positions = (await coverage.read()).positions
        resume = {}
        for tp in assigned:
            p = tp.partition
            start = max(begin[p], min(history.get(p, begin[p]), positions.get(p, begin[p])))
            consumer.seek(tp, start)
            resume[p] = self._stored[p] = start
            if p in history:
                self._held[p] = history[p]
        self._cursor.seek(resume)
        log.info("assigned %s; resuming at %s (from the stores' positions)",
                 sorted(resume), dict(sorted(resume.items())))

    async def _claim(self, known: dict[int, int]) -> tuple[dict[int, int], dict[int, int]]:
        """Claim the partitions of ``known`` the view lost (``known``: partition -> the
        position this processor saw the view reach, -1 if none) and queue their rebuild,
        the chord views' too while the offsets hash holds the chords mark (set by the
        claim that found the view's whole record gone: ``views/coverage.py``). Returns,
        per partition, where the log begins and the history's position."""
        assert self.consumer is not None and self.coverage is not None
        assert self.sink.history is not None and self.rebuilder is not None
        topic = self.settings.events_topic
        try:
            begin = {tp.partition: o for tp, o in (await self.consumer.beginning_offsets(
                [TopicPartition(topic, p) for p in known])).items()}
        except KafkaError as exc:
            raise BrokerUnavailable(f"cannot read where the log begins: {exc!r}") from exc
        history = await self.sink.history.committed_offsets(self.settings.consumer_group, topic)
        before = await self.coverage.read()
        claimed = await self.coverage.claim(
            {p: Claim(b, history.get(p, b), known[p]) for p, b in begin.items()})
        gaps = claimed.gaps
        lost = {p: g for p, g in gaps.items() if p not in before.gaps or before.gaps[p] != g}
        if lost:
            log.warning("the Redis view lacks events the log holds: %s",
                        ", ".join(f"partition {p} [{a}, {b})" for p, (a, b) in sorted(lost.items())))
        self.rebuilder.add(gaps, chords_lost=claimed.chords_lost)
        return begin, history

    async def _check_view(self) -> None:
        """A loss no write would notice (no events flowing): any assigned partition
        whose position is gone is claimed now."""
        assert self.coverage is not None
        missing = await self.coverage.missing(set(self._cursor.next))
        if missing:
            await self._claim({p: -1 for p in missing})

    # -- writing ----------------------------------------------------------------------

    async def _write_history(self, prepared: Prepared) -> SinkStats:
        """Write a batch's history (the first stage), retrying while a store or the
        broker is unavailable: writes are idempotent, and the batch must land before any
        later one does. :class:`HistoryRewound` is not retried: the fold loop rewinds."""
        backoff = Backoff()
        while True:
            if self._failure is not None:
                raise self._failure
            try:
                stats = await self.sink.store_history(prepared)
                for (_, p), o in prepared.offsets.items():
                    if o > self._held.get(p, -1):
                        self._held[p] = o
                return stats
            except ResultlogError as exc:
                await self._back_off(exc, "writing a batch's history", backoff)

    async def _write_view(self, prepared: Prepared, stats: SinkStats) -> None:
        """Write a batch into the Redis view (the second stage, after its history),
        retrying while Redis is unavailable. A view that lost what it held is claimed
        and rebuilt, and the batch written again."""
        backoff = Backoff()
        while True:
            if self._failure is not None:
                raise self._failure
            try:
                await self.sink.store_view(prepared, stats)
                for (_, p), o in prepared.offsets.items():
                    if o > self._written.get(p, -1):
                        self._written[p] = o
                    if p in self._cursor.next and o > self._stored.get(p, -1):
                        self._stored[p] = o
                if self.metrics is not None:
                    self.metrics.batch_written(prepared.rows, stats.history_s, stats.redis_s,
                                               stats.dead_letters)
                return
            except ViewLost as exc:
                assert prepared.starts is not None
                log.warning("%s; claiming and rebuilding it", exc)
                try:
                    await self._claim({p: o for (_, p), o in prepared.starts.items()})
                    if self.metrics is not None:
                        self.metrics.write_retried("fold")
                    continue
                except ResultlogError as heal_exc:
                    await self._back_off(heal_exc, "claiming the view", backoff)
            except ResultlogError as exc:
                await self._back_off(exc, "writing a batch into the view", backoff)

    async def _back_off(self, exc: ResultlogError, what: str, backoff: Backoff) -> None:
        """Raise ``exc`` unless it is retriable; else log it, count a retry and wait
        ``backoff``'s next delay."""
        if not exc.retriable:
            raise exc
        log.warning("%s failed (%s); retrying in %.1fs", what, exc, backoff.delay)
        if self.metrics is not None:
            self.metrics.write_retried("fold")
        await backoff.wait()

    def _verify_history(self, held_by_history: dict[tuple[str, str, int], int]) -> None:
        """Raise :class:`HistoryRewound` if the history lost commits this processor made
        (shown on each new connection of the history's pool: a crash breaks them all)."""
        group, topic = self.settings.consumer_group, self.settings.events_topic
        holds = {p: o for (g, t, p), o in held_by_history.items() if g == group and t == topic}
        lost = {p: (holds.get(p, -1), o) for p, o in self._held.items() if holds.get(p, -1) < o}
        if not lost:
            return
        # Every partition goes back, not only the lost ones: the batches in hand (the one
        # failing, the next one prepared) are dropped, and they may hold any partition.
        positions = {}
        for p in self._cursor.next:
            if p in holds and p in self._held:
                positions[p] = min(holds[p], self._held[p])
            else:
                positions[p] = holds.get(p, -1)  # -1: from where the log begins
        raise HistoryRewound(
            "the history lost commits this processor made (a PostgreSQL crash with "
            "asynchronous commits): " + ", ".join(
                f"partition {p} holds up to {h} of {o}" for p, (h, o) in sorted(lost.items())),
            positions)

    async def _rewind(self, consumer: AIOKafkaConsumer, positions: dict[int, int]) -> None:
        """Seek back to where the history is whole; what it lost is read again."""
        topic = self.settings.events_topic
        backoff = Backoff()
        while True:
            try:
                begin = {tp.partition: o for tp, o in (await consumer.beginning_offsets(
                    [TopicPartition(topic, p) for p in positions])).items()}
                break
            except KafkaError as exc:
                log.warning("reading where the log begins failed (%r); retrying in %.1fs", exc,
                            backoff.delay)
                await backoff.wait()
        sought = {}
        for p, o in positions.items():
            if p not in self._cursor.next:
                continue  # revoked meanwhile: its next owner positions it from the stores
            o = sought[p] = self._stored[p] = max(o, begin[p])
            consumer.seek(TopicPartition(topic, p), o)
            self._held.pop(p, None)
            self._written.pop(p, None)
        self._cursor.seek(sought)
        log.warning("reading the log again from %s (what the history holds)", dict(sorted(sought.items())))

    def _account(self, stats: SinkStats) -> None:
        if stats.dead_letters:
            log.warning("%d record(s) sent to dead letters (%s)",
                        stats.dead_letters, self.settings.dead_letter_topic)

    async def _commit(self, consumer: AIOKafkaConsumer) -> None:
        topic = self.settings.events_topic
        owned = {tp.partition for tp in consumer.assignment()}
        offsets = {TopicPartition(topic, p): o for p, o in self._written.items() if p in owned}
        self._written.clear()
        if offsets:
            try:
                await consumer.commit(offsets)
            except (CommitFailedError, KafkaError) as exc:
                log.info("Kafka offset commit skipped (lag tools only): %r", exc)

    # -- status (health endpoint, metrics) ----------------------------------------------

    def status(self) -> FoldStatus:
        consumer, ends = self.consumer, self._log_ends
        owned = consumer.assignment() if consumer is not None else set()
        topic = self.settings.events_topic
        partitions = {}
        for p, position in list(self._stored.items()):
            tp = TopicPartition(topic, p)
            known = [position]  # the stores hold it, so the log reaches at least there
            if ends is not None and p in ends.ends:
                known.append(ends.ends[p])
            highwater = consumer.highwater(tp) if consumer is not None and tp in owned else None
            if highwater is not None:
                known.append(highwater)
            log_end = max(known) if len(known) > 1 else None
            partitions[p] = PartitionProgress(position, log_end)
        rebuilder = self.rebuilder
        return FoldStatus(
            assigned=self._assigned, partitions=partitions,
            log_end_age_s=None if ends is None else ends.age_s(),
            failed=self._stopped_on_error,
            rebuilding=rebuilder is not None and rebuilder.rebuilding,
            rebuilt_events=0 if rebuilder is None else rebuilder.rebuilt)

    # -- the loop ---------------------------------------------------------------------

    async def _start_sink(self) -> None:
        """Open the stores, waiting out an outage for ``settings.assign_timeout_s`` as
        positioning does: a processor (re)started while PostgreSQL restarts stopped at
        once, and a worker stopping so acks what its chord hooks' agent was waiting to
        claim (docs/chords.md, "Once")."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.assign_timeout_s
        backoff = Backoff()
        while True:
            try:
                await self.sink.start()
                return
            except ResultlogError as exc:
                if not exc.retriable or loop.time() + backoff.delay > deadline:
                    raise
                log.warning("opening the stores failed (%s); retrying in %.1fs", exc, backoff.delay)
                await backoff.wait()

    async def run(self) -> None:
        s = self.settings
        await self._start_sink()
        assert self.sink.redis is not None, "the live fold writes the Redis view"
        assert self.sink.history is not None
        self.sink.history.verify_positions = self._verify_history
        self.coverage = ViewCoverage(s, self.sink.redis.client, s.consumer_group)
        self.rebuilder = ViewRebuilder(s, self.coverage, self.sink.redis)
        consumer = AIOKafkaConsumer(
            **kafka_client_args(s),
            group_id=s.consumer_group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=4 * 1024 * 1024,
            **fetch_wait(s.processor_linger_ms),
        )
        consumer.subscribe([s.events_topic], listener=_Positioning(self))
        # Set before it starts: the group may assign partitions (and so call the
        # listener, which needs it) before start() returns.
        self.consumer = consumer
        await started(consumer, s)
        self._log_ends = LogEnds(consumer, s.events_topic, lambda: list(self._stored), s.kafka_timeout_s)
        self._log_ends.start()
        writer = StagedWriter(self._write_history, self._account, second=self._write_view)
        loop = asyncio.get_running_loop()
        last_commit = last_check = loop.time()
        # Fetching never waits for a write: records fetched while the history is busy
        # are gathered into the next batch (up to BATCH_MAX), so aiokafka's buffer is
        # drained at once and its next fetch is already parked at the broker when an
        # event arrives (it sends none while fetched records wait to be taken). They
        # are decoded as they arrive, so that this process's CPU for the next batch
        # overlaps PostgreSQL's for the batch in hand instead of following it; the
        # batch is still everything gathered while the history was busy.
        fetch: asyncio.Task[dict[TopicPartition, list[Any]]] | None = None
        fetch_begun = self._cursor.begin()
        gathered: Prepared | None = None  # the next batch, decoded
        starts: dict[tuple[str, int], int] = {}
        try:
            while True:
                stop_if_cancelled()
                held = 0 if gathered is None else gathered.read
                if fetch is None and held < BATCH_MAX:
                    fetch = asyncio.ensure_future(
                        consumer.getmany(timeout_ms=100, max_records=BATCH_MAX - held))
                    fetch_begun = self._cursor.begin()
                waits: list[asyncio.Future[Any]] = [] if fetch is None else [fetch]
                if gathered is not None:
                    waits += writer.in_flight()
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                more: list[Any] = []
                if fetch is not None and fetch.done():
                    fetched, fetch = fetch.result(), None
                    if self._failure is not None:
                        raise self._failure
                    # Before decoding: a rebalance during its yields re-positions.
                    taken = self._cursor.take(fetched, fetch_begun)
                    for p, o in taken.seek.items():
                        consumer.seek(TopicPartition(s.events_topic, p), o)
                    more = taken.records
                    for tp, start in taken.starts.items():
                        starts.setdefault(tp, start)
                try:
                    writer.check()
                    if more:
                        gathered = await self.sink.prepare_yielding(more, into=gathered)
                    if gathered is not None and writer.ready:
                        batch, batch_starts, gathered, starts = gathered, starts, None, {}
                        writer.start(dataclasses.replace(batch, starts=batch_starts))
                except HistoryRewound as exc:
                    log.warning("%s", exc)
                    # Drop every batch in hand (the ones in flight end first) and any
                    # fetch under way: all of it is read again from where the history
                    # is whole.
                    gathered, starts = None, {}
                    if fetch is not None:
                        fetch.cancel()
                        await asyncio.wait([fetch])
                        fetch = None
                    for error in await writer.drop():
                        if not isinstance(error, HistoryRewound):
                            raise error
                    await self._rewind(consumer, exc.positions)
                    continue
                now = loop.time()
                if now - last_commit >= COMMIT_INTERVAL_S:
                    last_commit = now
                    await self._commit(consumer)
                if now - last_check >= VIEW_CHECK_INTERVAL_S:
                    last_check = now
                    try:
                        await self._check_view()
                    except ResultlogError as exc:
                        # Redis, or the broker (the claim asks where the log begins),
                        # unavailable: check again next time, as a write would retry.
                        if not exc.retriable:
                            raise
                        log.warning("checking the view's positions failed: %s", exc)
        except Exception:
            self._stopped_on_error = True
            raise
        finally:
            if fetch is not None:
                fetch.cancel()
                await asyncio.wait([fetch])
            await self._log_ends.close()
            try:
                await writer.settle()
            except HistoryRewound:
                pass  # stopping anyway: the next start positions from the stores
            await self.rebuilder.close()
            self.consumer = None
            await consumer.stop()
            await self.sink.close()
