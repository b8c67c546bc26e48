"""The chord aggregator: chord completion detected from the log, by a stateful faust agent.

Data flow. The fold (:class:`~resultlog.processors.sink.FoldSink`) forwards every
``ChordDeclared`` record and every chord member's ready event (SUCCESS, FAILURE,
REVOKED), with its original bytes, to the chords topic keyed by chord id, so all of a
chord's traffic lands in one partition and is seen by one agent, in order. The agent
(concurrency 1, faust-streaming #606) folds it into a changelog-backed faust table and,
once a chord is complete, writes its outcome to the Redis chord view
(:mod:`resultlog.views.chords`) and one ``ChordCompleted`` record to the
chord-completions topic. A second agent follows that topic and runs the hooks.

State (:class:`~resultlog.processors.chordfold.ChordFold`): one table, two kinds of keys, so that both kinds share one
changelog partition (faust writes a change to the partition of the event being
processed) and reach it in the order they were made:

- ``m:<chord_id>:<index>`` -> ``[state, task_id, result, exc_type, exc_module,
  exc_message, timestamp]``: a member's outcome, recorded once (the first ready
  event for that index wins; duplicates change nothing). One small value per member:
  a value holding every member, rewritten per update, would make the changelog
  quadratic in the chord's size.
- ``c:<chord_id>`` -> a small summary: size, counts, smallest failed index, the
  declaration's callback, and ``completed`` once the outcome is out.

Crash safety (faust flushes its producer before committing offsets, so a committed
offset implies its table writes are in the changelog; what may be lost is the tail of
uncommitted work, which is processed again):

- a member's entry is written before the summary that counts it; after a crash the
  entry may be in the changelog without the count. The re-read member then looks like
  a duplicate, so the first duplicate of a chord seen by this process recounts the
  chord from its entries (once per chord per process: cheap, and enough);
- the completion is published (Redis, then the completions topic, both awaited)
  before the summary is marked completed, and members' entries are deleted only after
  that mark; a crash in between re-publishes the same completion (same event_id)
  rather than losing it: the completions topic is at-least-once, its consumers dedupe
  by event_id, and so do the hooks (see :meth:`ChordAggregator._run_hooks`).
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any, Final, TypeVar, cast

from aiokafka.errors import KafkaError  # type: ignore[import-untyped]

from resultlog import names
from resultlog.errors import (
    CodecError,
    ConfigurationError,
    EventTooLarge,
    ResultlogError,
    ValidationError,
)
from resultlog.processors.chordfold import ChordFold
from resultlog.processors.chordretention import SummaryRetention
from resultlog.processors.deadletter import DeadLetter, DeadLetterWriter, TopicWriter
from resultlog.processors.logreader import LogReader
from resultlog.producers.topics import KAFKA_DEFAULT_MAX_MESSAGE_BYTES
from resultlog.schemas.chords import ChordCompleted, FailedMember
from resultlog.schemas.codec import Codec
from resultlog.schemas.event import ExceptionInfo
from resultlog.settings import Settings
from resultlog.views._redis import async_client, translated
from resultlog.views.chords import ChordStore, Progress

if TYPE_CHECKING:
    import redis.asyncio

    from resultlog.processors.app import Processor

log = logging.getLogger("resultlog.chords")

T = TypeVar("T")
#: A hook: called once per completed chord, with its completion; sync or async.
Hook = Callable[[ChordCompleted], "Awaitable[None] | None"]

# Progress reaches Redis at most this often per agent (completions are written at once).
PROGRESS_INTERVAL_S: Final = 0.05
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


async def _retrying(what: str, op: Callable[[], Awaitable[T]]) -> T:
    """``op()``, retried while Redis or Kafka is unavailable: the chord cannot move on."""
    delay = 0.1
    while True:
        try:
            return await op()
        except (ResultlogError, KafkaError) as exc:
            if isinstance(exc, ResultlogError) and not exc.retriable:
                raise
            log.warning("%s failed (%r); retrying in %.1fs", what, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


def state_record_bytes(settings: Settings) -> int:
    """The largest record the aggregator's table may write to its changelog.

    A member's entry holds its result's JSON text as a JSON string, written by faust's
    JSON (the standard library's, escaping non-ASCII): a 2-byte character becomes a
    6-byte ``\\uXXXX``, so an entry is at most 3 times the event it came from.
    """
    return max(KAFKA_DEFAULT_MAX_MESSAGE_BYTES, 3 * settings.max_event_bytes + 16 * 1024)


def _raw_topic(app: Any, name: str, partitions: int) -> Any:
    return app.topic(name, key_type=bytes, value_type=bytes, key_serializer="raw",
                     value_serializer="raw", partitions=partitions)


class ChordAggregator:
    """The aggregator's faust agents and table, added to a :class:`Processor`'s app."""

    def __init__(self, processor: Processor) -> None:
        s = self.settings = processor.settings
        self.app = app = processor.app
        self.codec = Codec(max_bytes=s.max_event_bytes)
        self.hooks: list[Hook] = []
        self.chords_topic = _raw_topic(app, s.chords_topic, s.topic_partitions)
        self.completions_topic = _raw_topic(app, s.chord_completions_topic, s.topic_partitions)
        # As faust would make it, but named from the consumer group (names.py says why).
        changelog = app.topic(
            names.chord_state_changelog_topic(s.consumer_group),
            key_serializer="json", value_serializer="json", partitions=s.topic_partitions,
            compacting=True, acks=False, internal=True, maxsize=131_072, allow_empty=True,
            config={"max.message.bytes": str(state_record_bytes(s))},
        )
        self.table: MutableMapping[str, Any] = app.Table(
            names.CHORD_STATE_TABLE, partitions=s.topic_partitions, changelog_topic=changelog,
            help="chord aggregator state: c:<chord> summaries and m:<chord>:<index> members",
        )
        self.fold = ChordFold(self.table)
        self.retention = SummaryRetention(self.table, s.result_ttl_s * 1000, s.topic_partitions)
        self.writer = TopicWriter(s, s.chord_completions_topic)
        self._dirty: dict[str, Progress] = {}
        self._dirty_event = asyncio.Event()
        self._hooks_agent = False
        self._claimant = f"{socket.gethostname()}:{os.getpid()}"
        app.agent(self.chords_topic, name="chords", concurrency=1)(self._aggregate)
        app.on_partitions_assigned.connect(cast(Any, self._on_assigned))  # faust types it narrower
        if s.chord_hook:
            self.on_complete(load_hook(s.chord_hook))

    def on_complete(self, hook: Hook) -> Hook:
        """Run ``hook(completion)`` once per completed chord (register before the app starts).

        Usable as a decorator. Hooks run in the processor, from the completions topic;
        a sync hook runs in a thread. See :meth:`_run_hooks` for "once".
        """
        self.hooks.append(hook)
        if not self._hooks_agent:
            self._hooks_agent = True
            self.app.agent(self.completions_topic, name="chord-hooks", concurrency=1)(self._run_hooks)
        return hook

    async def _on_assigned(self, sender: Any, *args: Any, **kwargs: Any) -> None:
        self.fold.forget_verified()
        self.retention.reset()

    # The aggregating agent -------------------------------------------------------------
    async def _aggregate(self, stream: Any) -> None:
        client = async_client(self.settings)
        store = ChordStore(self.settings, client)
        dead_letters = DeadLetterWriter(self.settings)
        flusher = asyncio.get_running_loop().create_task(self._flush_progress(store))
        try:
            async for event in stream.events():
                msg = event.message
                try:
                    name, record = self.codec.decode_record(msg.value)
                    step = self.fold.apply(name, record)
                except (CodecError, ValidationError) as exc:
                    # The fold forwards only records it decoded: this one came from elsewhere.
                    letter = DeadLetter(msg.key, msg.value, f"{type(exc).__name__}: {exc}",
                                        msg.topic, msg.partition, msg.offset)
                    await _retrying("sending a dead letter", lambda: dead_letters.send([letter]))
                    continue
                if step is not None and step.completion is not None:
                    await self._publish(store, step.completion)
                    self.fold.completed(step.completion)
                    self.retention.completed(step.chord_id, step.completion.timestamp)
                    self._dirty.pop(step.chord_id, None)
                elif step is not None and step.progress is not None:
                    self._dirty[step.chord_id] = step.progress
                    self._dirty_event.set()
                # Here, while this record's partition is the one faust writes to.
                for chord_id in self.retention.sweep(msg.partition, int(time.time() * 1000)):
                    self._dirty.pop(chord_id, None)
        finally:
            flusher.cancel()
            await asyncio.gather(flusher, return_exceptions=True)
            try:
                await store.progress(self._dirty)
            except ResultlogError as exc:
                log.warning("chord progress not written at stop: %s", exc)
            self._dirty.clear()
            await self.writer.close()
            await dead_letters.close()
            await client.aclose()

    async def _publish(self, store: ChordStore, completion: ChordCompleted) -> None:
        """The outcome to Redis (readers first), then to the completions topic."""
        await _retrying("writing a chord completion to Redis", lambda: store.complete(completion))
        data = self._encode(completion)
        key = completion.chord_id.encode()
        await _retrying("sending a chord completion", lambda: self.writer.send([(key, data)]))
        log.info("chord %s completed: %s (%d of %d members, %d failed)", completion.chord_id,
                 completion.state.value, completion.done, completion.size, completion.failed)

    def _encode(self, completion: ChordCompleted) -> bytes:
        try:
            return completion.encode(self.codec)
        except EventTooLarge:
            pass
        # The results stay readable in the Redis view; the record says where they went.
        smaller = completion.without_results()
        m = smaller.failed_member
        if m is not None and m.exception is not None and len(m.exception.message) > _MAX_MESSAGE:
            exc = ExceptionInfo(m.exception.type, m.exception.module, m.exception.message[:_MAX_MESSAGE] + "...")
            smaller = ChordCompleted(
                smaller.event_id, smaller.chord_id, smaller.state, smaller.size, smaller.done,
                smaller.failed, smaller.timestamp, None, True,
                FailedMember(m.task_id, m.index, m.state, exc), smaller.callback, smaller.callback_kwargs)
        return smaller.encode(self.codec)

    async def _flush_progress(self, store: ChordStore) -> None:
        # Coalesces: a 10,000-member chord costs about 20 progress writes a second.
        while True:
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
    async def _run_hooks(self, stream: Any) -> None:
        """Run the hooks for each completion on the completions topic, once per chord.

        "Once" is at-most-once, by an atomic claim: ``SET NX`` of a key derived from the
        completion's event_id, taken before the hooks run. A completion re-emitted after
        a crash (same event_id), or re-read after this agent's crash, finds the claim
        and is skipped. The price: if the processor dies while a hook runs, that hook is
        not run again. We chose that over at-least-once because a chord callback
        typically starts work (``send_task``) that is not idempotent, and a callback
        sent twice is worse than one to re-send by hand; the completions topic itself
        is at-least-once, for consumers that want to decide otherwise.
        """
        client = async_client(self.settings)
        ttl_ms = self.settings.result_ttl_s * 1000 or None
        try:
            async for value in stream:
                try:
                    completion = ChordCompleted.decode(self.codec, value)
                except (CodecError, ValidationError) as exc:
                    log.error("undecodable record in %s skipped: %s", self.settings.chord_completions_topic, exc)
                    continue
                if await self._claim(client, completion, ttl_ms):
                    await self._call_hooks(completion)
                else:
                    log.info("chord %s: hooks already ran (completion %s seen again)",
                             completion.chord_id, completion.event_id)
        finally:
            await client.aclose()

    async def _claim(self, client: redis.asyncio.Redis, completion: ChordCompleted, ttl_ms: int | None) -> bool:
        key = names.chord_hook_claim_key(self.settings.redis_prefix, completion.event_id)

        async def claim() -> bool:
            with translated("claiming a chord hook run"):
                return bool(await client.set(key, self._claimant, nx=True, px=ttl_ms))

        return await _retrying("claiming a chord hook run", claim)

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


def install(processor: Processor) -> ChordAggregator:
    """Add the chord aggregator to ``processor`` and make its fold forward chord traffic."""
    processor.sink.chord_forwarder = TopicWriter(processor.settings, processor.settings.chords_topic)
    return ChordAggregator(processor)


async def rebuild_chord_views(settings: Settings) -> int:
    """Fold the whole chords topic again and write every chord's view; returns how many.

    The chords topic is the chord aggregator's input, in the order it folded it, so
    folding it again gives the same outcomes (fail-fast counts included). Completions
    are written, not published to the completions topic: hooks ran with the live
    processor and are not run again.
    """
    fold = ChordFold({})
    last: dict[str, Progress] = {}
    client = async_client(settings)
    store = ChordStore(settings, client)
    codec = Codec(max_bytes=settings.max_event_bytes)
    seen: set[str] = set()
    try:
        async with LogReader(settings, settings.chords_topic) as reader:
            try:
                plan = await reader.plan()
            except ValidationError:
                return 0  # no chords topic: no chord was ever declared or forwarded
            async for batch in reader.read(plan):
                for rec in batch:
                    try:
                        step = fold.apply(*codec.decode_record(rec.value or b""))
                    except (CodecError, ValidationError):
                        continue  # the live aggregator sent these to dead letters
                    if step is None:
                        continue
                    seen.add(step.chord_id)
                    if step.completion is not None:
                        await store.complete(step.completion)
                        fold.completed(step.completion)
                        last.pop(step.chord_id, None)
                    elif step.progress is not None:
                        last[step.chord_id] = step.progress
        await store.progress(last)
    finally:
        await client.aclose()
    return len(seen)
