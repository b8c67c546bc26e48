"""The chord aggregator: chord completion detected from the log.

How it works and why (the chords topic, the table per partition in a changelog topic,
the hooks' agent): docs/chords.md, "How it works" and "Once". Crash safety rests on the
order of writes: a batch's table writes are acknowledged in the changelog before its
offsets are committed; a member's entry is written before the summary that counts it
(the first duplicate of a chord after a crash recounts it from its entries); a
completion is published (Redis, then the topic) before the summary is marked completed,
and entries are deleted only after that mark (a crash in between re-publishes the same
completion, same event_id, which consumers and hooks dedupe).
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Final, TypeVar

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition  # type: ignore[import-untyped]
from aiokafka.errors import KafkaError  # type: ignore[import-untyped]

from resultlog import names
from resultlog.backoff import Backoff
from resultlog.background import cancel_and_wait, sent_a_cancellation, stop_if_cancelled
from resultlog.errors import (
    CodecError,
    ConfigurationError,
    EventTooLarge,
    ResultlogError,
    ValidationError,
)
from resultlog.chords.fold import ChordFold
from resultlog.chords.hookclaims import HookClaims
from resultlog.chords.retention import SummaryRetention
from resultlog.chords.changelog import ChangelogTables, max_value_bytes, state_record_bytes
from resultlog.processors.deadletter import DeadLetter, DeadLetterWriter, TopicWriter
from resultlog.processors.engine import fetch_wait
from resultlog.chords.records import ChordCompleted, ChordProgress
from resultlog.schemas.codec import Codec
from resultlog.producers.kafka import refused_by_broker
from resultlog.producers.topics import ensure_topics
from resultlog.connections import kafka_client_args
from resultlog.settings import Settings
from resultlog.redis_access import async_client
from resultlog.chords.store import ChordStore

if TYPE_CHECKING:
    from resultlog.chords.fire import BodyFirer
    from resultlog.processors.metrics import ProcessorMetrics

log = logging.getLogger("resultlog.chords")

T = TypeVar("T")
#: A hook: called once per completed chord, with its completion; sync or async.
Hook = Callable[[ChordCompleted], "Awaitable[None] | None"]

# Progress reaches Redis at most this often per agent (completions are written at once).
PROGRESS_INTERVAL_S: Final = 0.05
# Records per batch: the changelog is flushed and the offsets committed once per batch.
BATCH_MAX: Final = 2000
# An exception message longer than this is cut if the completion would not fit a record.
_MAX_MESSAGE: Final = 2000

def load_hook(spec: str) -> Hook:
    """The callable named ``package.module:function`` (ConfigurationError if there is none)."""
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
        hook = getattr(module, attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigurationError(f"chord hook {spec!r} cannot be loaded: {exc} (RESULTLOG_CHORD_HOOK)") from exc
    if not callable(hook):
        raise ConfigurationError(f"chord hook {spec!r} is not callable (RESULTLOG_CHORD_HOOK)")
    return hook  # type: ignore[no-any-return]


async def _retrying(what: str, op: Callable[[], Awaitable[T]],
                    on_retry: Callable[[], None] | None = None) -> T:
    """``op()``, retried while Redis or Kafka is unavailable: the chord cannot move on.
    What retrying cannot help (a broker's refusal: no write permission, a record over a
    topic's limit) is raised: the aggregator stops the worker, naming it (it retried
    such a refusal for good, each chord after it held up, until 1 Dec 2026)."""
    backoff = Backoff()
    while True:
        try:
            return await op()
        except (ResultlogError, KafkaError) as exc:
            if refused_by_broker(exc) or isinstance(exc, ResultlogError) and not exc.retriable:
                raise
            log.warning("%s failed (%r); retrying in %.1fs", what, exc, backoff.delay)
            if on_retry is not None:
                on_retry()
            await backoff.wait()


class _Partition:
    """What the aggregator holds for one partition of the chords topic it owns."""

    def __init__(self, table: MutableMapping[str, Any], settings: Settings) -> None:
        self.fold = ChordFold(table, max_value_bytes(settings))
        self.retention = SummaryRetention(table, settings.result_ttl_s * 1000, settings.topic_partitions)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, aggregator: ChordAggregator) -> None:
        self.aggregator = aggregator

    async def on_partitions_revoked(self, revoked: Any) -> None:
        # The batch in flight finishes (changelog flushed, offsets committed) first.
        async with self.aggregator.lock:
            pass

    async def on_partitions_assigned(self, assigned: Any) -> None:
        await self.aggregator.load({tp.partition for tp in assigned})


class ChordAggregator:
    """The aggregator (a task of a :class:`Processor`'s app) and its hooks' faust agent."""

    def __init__(self, settings: Settings, app: Any, metrics: ProcessorMetrics,
                 *, firer: BodyFirer | None = None) -> None:
        """Register the aggregator as a task of faust ``app``; ``metrics`` counts its
        completions and retries; ``firer`` fires Celery chords' bodies
        (``resultlog process --celery-app``). The fold must forward chord traffic to the
        chords topic (``FoldSink(chord_forwarder=...)``), as the processor's does."""
        s = self.settings = settings
        self.app = app
        self.metrics = metrics
        self.codec = Codec(max_bytes=s.max_event_bytes)
        self.hooks: list[Hook] = []
        self.completions_topic = app.topic(
            s.chord_completions_topic, key_type=bytes, value_type=bytes, key_serializer="raw",
            value_serializer="raw", partitions=s.topic_partitions)
        self.state = ChangelogTables(s, names.chord_state_changelog_topic(s.consumer_group))
        self.partitions: dict[int, _Partition] = {}
        self.lock = asyncio.Lock()  # one batch, or one (re)load, at a time
        self.writer = TopicWriter(s, s.chord_completions_topic)
        self._dirty: dict[str, ChordProgress] = {}
        self._dirty_event = asyncio.Event()
        self._hooks_agent = False
        self._claimant = f"{socket.gethostname()}:{os.getpid()}"
        self.firer = firer
        app.task(self._run)
        if s.chord_hook:
            self.on_complete(load_hook(s.chord_hook))

    def on_complete(self, hook: Hook) -> Hook:
        """Run ``hook(completion)`` once per completed chord (register before the app starts).

        Usable as a decorator. Hooks run in the processor, from the completions topic;
        a sync hook runs in a thread. See :meth:`run_hooks` for "once".
        """
        self.hooks.append(hook)
        if not self._hooks_agent:
            self._hooks_agent = True
            self.app.agent(self.completions_topic, name="chord-hooks", concurrency=1)(self.run_hooks)
        return hook

    def _retried(self) -> None:
        self.metrics.write_retried("chords")

    async def load(self, partitions: set[int]) -> None:
        """Own ``partitions``: their tables, read from the changelog.

        No seek: aiokafka starts every newly assigned partition at the group's committed
        offset (or the earliest), and records it fetched from there while this ran
        are folded once it returns. A seek here would fetch those again, and a chord
        whose summary expired in between would complete a second time.
        """
        async with self.lock:
            await _retrying("loading the chord state", lambda: self.state.load(partitions),
                            self._retried)
            self.partitions = {p: _Partition(table, self.settings)
                               for p, table in self.state.tables.items()}
            log.info("chord aggregator: partitions %s loaded (%d keys)", sorted(partitions),
                     sum(len(t) for t in self.state.tables.values()))

    # The aggregating loop ------------------------------------------------------------
    async def _run(self) -> None:
        try:
            await self._aggregate()
        except asyncio.CancelledError as exc:
            if sent_a_cancellation():
                raise  # the worker is stopping and cancelled this task
            # One this task was never sent (resultlog.background.sent_a_cancellation):
            # seen with the broker gone for ~40 s. Stop, as below.
            log.critical("the chord aggregator stopped: %r; stopping the worker", exc, exc_info=True)
            await self.app.crash(RuntimeError("the chord aggregator stopped on a cancellation it was not sent"))
        except Exception as exc:
            # As for the fold engine: a live-looking processor whose chords never
            # complete is the worst outcome; stop, and let the supervisor restart it.
            log.critical("the chord aggregator failed: %r; stopping the worker", exc, exc_info=True)
            await self.app.crash(exc)

    async def _aggregate(self) -> None:
        s = self.settings
        await ensure_topics(s, self.state.topic, configs={
            "cleanup.policy": "compact", "max.message.bytes": str(state_record_bytes(s))})
        client = async_client(s)
        store = ChordStore(s, client)
        dead_letters = DeadLetterWriter(s)
        await self.state.start()
        consumer = AIOKafkaConsumer(
            **kafka_client_args(s),
            group_id=names.chord_group(s.consumer_group),
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            **fetch_wait(0),  # no linger: a chord's completion waits on this consumer
        )
        consumer.subscribe([s.chords_topic], listener=_Rebalance(self))
        flusher = asyncio.get_running_loop().create_task(self._flush_progress(store))
        try:
            if self.firer is not None:
                await _retrying("opening the chord bodies' fire marks", self.firer.start,
                                self._retried)
            await consumer.start()
            while True:
                stop_if_cancelled()
                fetched = await consumer.getmany(timeout_ms=100, max_records=BATCH_MAX)
                if fetched:
                    async with self.lock:
                        await self._batch(consumer, store, dead_letters, fetched)
        finally:
            await cancel_and_wait(flusher)
            try:
                await store.progress(self._dirty)
            except ResultlogError as exc:
                log.warning("chord progress not written at stop: %s", exc)
            self._dirty.clear()
            await consumer.stop()
            await self.state.close()
            await self.writer.close()
            await dead_letters.close()
            if self.firer is not None:
                await self.firer.close()
            await client.aclose()

    async def _batch(self, consumer: AIOKafkaConsumer, store: ChordStore, dead_letters: DeadLetterWriter,
                     fetched: dict[TopicPartition, list[Any]]) -> None:
        """Fold a batch, write its table changes to the changelog, then commit its offsets."""
        offsets: dict[TopicPartition, int] = {}
        for tp, records in fetched.items():
            part = self.partitions.get(tp.partition)
            if part is None:
                continue  # revoked since it was fetched: its new owner reads it
            for rec in records:
                await self._record(part, rec, store, dead_letters)
            offsets[tp] = records[-1].offset + 1
        await _retrying("writing the chord state changelog", self.state.flush, self._retried)
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
        except KafkaError as exc:
            # A rebalance took the partitions: their new owner reloads the changelog
            # (written above) and reads this batch again, which changes nothing twice.
            log.info("chord offsets not committed: %r", exc)

    async def _record(self, part: _Partition, rec: Any, store: ChordStore, dead_letters: DeadLetterWriter) -> None:
        try:
            name, record = self.codec.decode_record(rec.value)
            step = part.fold.apply(name, record)
        except (CodecError, ValidationError) as exc:
            # The fold forwards only records it decoded: this one came from elsewhere.
            letter = DeadLetter(rec.key, rec.value, f"{type(exc).__name__}: {exc}",
                                rec.topic, rec.partition, rec.offset)
            await _retrying("sending a dead letter", lambda: dead_letters.send([letter]), self._retried)
            self.metrics.dead_lettered("chords")
            return
        if step is not None and step.completion is not None:
            if step.body is not None:
                # First: a Celery body waits on nothing else (latency), and both are
                # done before the completed mark, so neither is lost to a crash.
                await self._fire(step.completion, step.body, step.parent)
            await self._publish(store, step.completion)
            part.fold.completed(step.completion)
            part.retention.completed(step.chord_id, step.completion.timestamp)
            self._dirty.pop(step.chord_id, None)
        elif step is not None and step.progress is not None:
            self._dirty[step.chord_id] = step.progress
            self._dirty_event.set()
        for chord_id in part.retention.sweep(rec.partition, int(time.time() * 1000)):
            self._dirty.pop(chord_id, None)

    async def _publish(self, store: ChordStore, completion: ChordCompleted) -> None:
        """The outcome to Redis (readers first), then to the completions topic."""
        await _retrying("writing a chord completion to Redis", lambda: store.complete(completion),
                       self._retried)
        data = self._encode(completion)
        key = completion.chord_id.encode()
        await _retrying("sending a chord completion", lambda: self.writer.send([(key, data)]),
                        self._retried)
        self.metrics.chord_completed(completion.state.value)
        log.info("chord %s completed: %s (%d of %d members, %d failed)", completion.chord_id,
                 completion.state.value, completion.done, completion.size, completion.failed)

    async def _fire(self, completion: ChordCompleted, body: str, parent: str | None) -> None:
        """A Celery chord's body, fired before the chord is marked completed (so a crash
        in between fires it again: see resultlog/chords/fire.py for "once")."""
        if self.firer is None:
            log.error("Celery chord %s completed, but this processor has no Celery app to "
                      "fire its body with: start processors with --celery-app module:app",
                      completion.chord_id)
            return
        firer = self.firer
        await _retrying("firing a Celery chord's body", lambda: firer.fire(completion, body, parent))

    def _encode(self, completion: ChordCompleted) -> bytes:
        try:
            return completion.encode(self.codec)
        except EventTooLarge:
            pass
        # The results stay readable in the Redis view; the record says where they went.
        smaller = completion.without_results()
        m = smaller.failed_member
        if m is not None and m.exception is not None and len(m.exception.message) > _MAX_MESSAGE:
            exc = replace(m.exception, message=m.exception.message[:_MAX_MESSAGE] + "...")
            smaller = replace(smaller, failed_member=replace(m, exception=exc))
        return smaller.encode(self.codec)

    async def _flush_progress(self, store: ChordStore) -> None:
        # Coalesces: a 10,000-member chord costs about 20 progress writes a second.
        while True:
            # Else a cancellation lost in the write below would leave this waiting for
            # progress that never comes, and the aggregator's stop waiting for it.
            stop_if_cancelled()
            await self._dirty_event.wait()
            self._dirty_event.clear()
            batch, self._dirty = self._dirty, {}
            try:
                await store.progress(batch)
            except Exception as exc:  # never die: progress would silently stop
                log.warning("chord progress not written (%r); trying again", exc)
                for chord_id, progress in batch.items():
                    self._dirty.setdefault(chord_id, progress)  # a newer one supersedes it
                self._dirty_event.set()
                await asyncio.sleep(1.0)
            await asyncio.sleep(PROGRESS_INTERVAL_S)

    # The hooks agent ---------------------------------------------------------------------
    async def run_hooks(self, stream: Any) -> None:
        """The hooks' agent: ``stream`` yields the completions topic's records.

        Runs the hooks for each completion at most once per chord: a claim keyed by the
        completion's event_id is committed to PostgreSQL before they run, and a
        completion seen again finds it (resultlog/chords/hookclaims.py says why not
        Redis). Why at-most-once: docs/chords.md, "Once"."""
        claims = HookClaims(self.settings)
        ttl_s = self.settings.result_ttl_s or None
        try:
            await _retrying("opening the chord hooks' claims", claims.start, self._retried)
            async for value in stream:
                try:
                    completion = ChordCompleted.decode(self.codec, value)
                except (CodecError, ValidationError) as exc:
                    log.error("undecodable record in %s skipped: %s", self.settings.chord_completions_topic, exc)
                    continue
                try:
                    claimed = await self._claim(claims, completion, ttl_s)
                except asyncio.CancelledError:
                    await self._put_back(completion, value)
                    raise
                if claimed:
                    await self._call_hooks(completion)
                else:
                    log.info("chord %s: hooks already ran (completion %s seen again)",
                             completion.chord_id, completion.event_id)
                await claims.sweep_now_and_then()
        finally:
            await claims.close()

    async def _claim(self, claims: HookClaims, completion: ChordCompleted, ttl_s: int | None) -> bool:
        # One token for every attempt: a retry after a commit whose answer was lost
        # recognizes the claim as its own.
        token = f"{self._claimant}:{uuid.uuid4().hex[:12]}"
        return await _retrying(
            "claiming a chord hook run",
            lambda: claims.claim(completion.event_id, completion.chord_id, token, ttl_s),
            self._retried)

    async def _put_back(self, completion: ChordCompleted, value: bytes) -> None:
        """The completion again at the end of its partition, for the next processor.

        For an agent stopped while it waited to claim (PostgreSQL down or slow): faust
        acks the record an agent is cancelled on and commits it at the stop, so the next
        processor would never read it and the hooks would never run (a fault audit,
        docs/chords.md). The same record (same ``event_id``: the topic's consumers
        dedupe on it) is sent again, on a writer of its own: the aggregator's may be
        closing."""
        writer = TopicWriter(self.settings, self.settings.chord_completions_topic)
        try:
            async with asyncio.timeout(self.settings.kafka_timeout_s):
                await writer.send([(completion.chord_id.encode(), value)])
            log.warning("chord %s: stopped before its hooks could be claimed; its completion "
                        "is put back on %s for the next processor", completion.chord_id,
                        self.settings.chord_completions_topic)
        except Exception as exc:  # noqa: BLE001 -- stopping anyway: say what is lost
            log.error("chord %s: stopped before its hooks could be claimed, and its completion "
                      "could not be put back on %s (%r): its hooks will not run unless it is "
                      "sent again", completion.chord_id, self.settings.chord_completions_topic, exc)
        finally:
            await writer.close()

    async def _call_hooks(self, completion: ChordCompleted) -> None:
        for hook in self.hooks:
            try:
                if inspect.iscoroutinefunction(hook):
                    await hook(completion)
                else:
                    outcome = await asyncio.to_thread(hook, completion)
                    if inspect.isawaitable(outcome):
                        await outcome
            except Exception:
                # A hook's failure is the hook's: the chord's outcome stands.
                log.exception("chord hook %r failed for chord %s", hook, completion.chord_id)
