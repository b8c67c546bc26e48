"""The emitter's engine: accepted events → per-partition record batches → Kafka.

One pipeline per emitter. Callers encode events and put them in the bounded
:class:`~.buffer.Outbox`; a single pump task on the event loop takes them out in order,
appends them to one aiokafka record batch per partition, and submits batches with
``send_batch``: ``send()`` per event would cost a coroutine, a future, a partitioner
call and a metadata check each (docs/emitter.md, "Performance").

Ordering. All events of a task share the key ``task_id`` and so one partition
(:mod:`.partitioner` reproduces Kafka's default partitioner). Per partition the pump
keeps at most one batch submitted and unacknowledged, and submits the next only after
the previous one is acknowledged, so batches of a partition reach the log in the order
the events were accepted; within a batch order is append order. The idempotent producer
(acks=all) makes aiokafka's own retries of a batch duplicate-free. One outstanding batch
per partition costs nothing: aiokafka sends one request per broker at a time, and that
request carries one batch per partition anyway. While it is in flight the next batches
fill up, so batch size adapts to load; ``linger_ms`` only bounds how long they wait
for an acknowledgement, and an idle emitter sends at once.

Failures (what callers are told: docs/emitter.md, "Guarantees"). A batch aiokafka gives
up on (a non-retriable broker answer such as a record too large for the topic) is
counted in :class:`Failures`. Its sequence numbers leave a gap the idempotent producer
cannot recover from, so the pump then waits for in-flight batches, replaces the producer
(new producer id) and carries on with the events queued behind it. Retriable trouble
(broker down) is retried by aiokafka forever: the buffer fills, callers get ``BufferFull``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Future as ThreadFuture
from functools import partial
from typing import Any

from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]

from resultlog.backoff import Backoff
from resultlog.background import cancel_and_wait, stop_if_cancelled
from resultlog.errors import (BrokerUnavailable, DeliveryRefused, EmitterClosed, NotYetAcknowledged,
                              ValidationError)
from resultlog.producers.buffer import Item, Outbox, resolve
from resultlog.producers.failures import Failures
from resultlog.producers.fitting import fit_within_limit
from resultlog.producers.kafka import (abort_pending, check_not_ahead, close_producer,
                                       error_cause, not_delivered, start_producer)
from resultlog.producers.lanes import Batch, Lane, Lanes
from resultlog.producers.options import PipelineOptions
from resultlog.producers.topics import ensure_topics
from resultlog.producers.viewfold import AckedFold
from resultlog.schemas.codec import Codec
from resultlog.schemas.event import TaskEvent
from resultlog.schemas.states import State
from resultlog.schemas.taskcodec import EventEncoder
from resultlog.settings import Settings
from resultlog.timeouts import checked_timeout

log = logging.getLogger("resultlog.producers")

# An emitting coroutine yields to the event loop after this many events in a row.
_YIELD_EVERY = 128


class Pipeline:
    """Accepts encoded events from callers and delivers them; see the module docstring."""

    def __init__(self, settings: Settings, options: PipelineOptions) -> None:
        self.settings = settings
        self.options = options
        self.topic = settings.events_topic
        self.encoder = EventEncoder(Codec(max_bytes=settings.max_event_bytes))
        self.failures = Failures(self.topic)
        self._outbox = Outbox(options.max_buffered_events, options.max_buffered_bytes)
        self._lanes = Lanes()
        self._num_partitions = 0
        self._producer: AIOKafkaProducer | None = None
        self._restart_needed = False
        self._flush_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._state = "new"  # new → running → stopping → stopped
        self._since_yield = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._work = asyncio.Event()
        self._pump_task: asyncio.Task[None] | None = None
        # Read-your-writes: acknowledged batches go through here before they are released.
        self._acked_fold = AckedFold(settings, self._release) if options.read_your_writes else None
        #: The expiry an event carries when its caller gave none (:meth:`encode_recorded`
        #: says why): this emitter's ``result_ttl_s`` if it folds the view itself, else None.
        self.default_result_ttl_ms = settings.result_ttl_s * 1000 if options.read_your_writes else None

    # Lifecycle (event loop) ---------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._state == "running"

    async def start(self) -> None:
        if self._state == "running":
            return
        if self._state != "new":
            raise EmitterClosed("this emitter was stopped; create a new one")
        if self.options.create_topics:
            await ensure_topics(self.settings, self.topic)
        self._producer, self._num_partitions = await start_producer(
            self.settings, self.options.producer, self.topic
        )
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._state = "running"
        self._pump_task = asyncio.create_task(self._pump(), name=f"resultlog-emitter-pump[{self.topic}]")
        self._pump_task.add_done_callback(self._pump_done)

    async def flush(self, timeout_s: float | None = None) -> None:
        """Wait until every event accepted before this call is acknowledged (or failed)."""
        timeout_s = checked_timeout(timeout_s, "timeout_s")
        if self._state in ("running", "stopping"):
            target = self._outbox.last_seq
            if self._low_watermark() <= target:
                assert self._loop is not None
                done: asyncio.Future[None] = self._loop.create_future()
                self._flush_waiters.append((target, done))
                self._work.set()
                try:
                    async with asyncio.timeout(timeout_s):
                        await done
                except TimeoutError:
                    raise NotYetAcknowledged(
                        f"flush timed out after {timeout_s:g} s with {self._outbox.unacked_events} "
                        f"event(s) not yet acknowledged by Kafka at {self.settings.kafka_bootstrap_servers}; "
                        "they stay buffered and are still being retried"
                    ) from None
                finally:
                    if not done.done():
                        done.cancel()
                    self._flush_waiters = [w for w in self._flush_waiters if w[1] is not done]
        self.failures.raise_for_flush()

    async def stop(self, timeout_s: float | None = None) -> None:
        """Refuse new events, deliver the accepted ones (up to the timeout), close.

        Raises :class:`BrokerUnavailable` if any accepted event could not be delivered
        (since the last flush), after everything is closed.
        """
        # Before anything changes: a bad timeout found half-way would leave the emitter
        # stopping, with its accepted events neither delivered nor counted.
        timeout_s = checked_timeout(timeout_s, "timeout_s")
        if self._state in ("stopping", "stopped"):
            return
        if self._state == "new":
            self._state = "stopped"
            self._outbox.close("the emitter is stopped")
            return
        self._state = "stopping"
        timeout_s = self.options.close_timeout_s if timeout_s is None else timeout_s
        self._outbox.close("the emitter is stopping")
        flush_error: BrokerUnavailable | None = None
        try:
            await self.flush(timeout_s)
        except BrokerUnavailable as exc:
            # flush() has consumed the failures it reports: keep its error, raise it
            # after closing unless the shutdown itself lost more (then report that).
            flush_error = exc
        finally:
            await self._shutdown(timeout_s)
        try:
            self.failures.raise_for_flush()
        except BrokerUnavailable as exc:
            if flush_error is not None:
                both_refused = isinstance(flush_error, DeliveryRefused) and isinstance(exc, DeliveryRefused)
                kind = DeliveryRefused if both_refused else BrokerUnavailable
                raise kind(f"{flush_error}; and then: {exc}") from exc
            raise
        if flush_error is not None:
            raise flush_error

    async def _shutdown(self, timeout_s: float) -> None:
        self._state = "stopped"
        await cancel_and_wait(self._pump_task)
        if self._acked_fold is not None:
            await self._acked_fold.close()
        producer, self._producer = self._producer, None
        if producer is not None:
            if self._outbox.unacked_events:
                # Gave up: resolve whatever aiokafka still retries, then count the rest.
                abort_pending(producer, BrokerUnavailable(f"not acknowledged within {timeout_s:g} s of stop()"))
                await asyncio.sleep(0)  # let the batch callbacks run
            await close_producer(producer, self.settings.kafka_timeout_s)
        self._fail_unsent("the emitter stopped before they were acknowledged")

    # Accepting (callers) -------------------------------------------------------------
    def encode_recorded(self, event: TaskEvent) -> tuple[TaskEvent, bytes, bytes]:
        """The event as recorded, its key and value; raises (EventTooLarge, ...) before
        anything is buffered. An outcome over the size limit is cut to fit: :mod:`.fitting`."""
        if not isinstance(event, TaskEvent):
            raise ValidationError(
                f"emit() takes a TaskEvent, got {type(event).__name__}: {event!r:.60}; build one "
                "with TaskEvent.create(task_id, state, ...), or use the per-state calls "
                "(started, success, ...); the event was not emitted")
        ttl_ms = self.default_result_ttl_ms
        if ttl_ms is not None and event.result_ttl_ms is None and event.state is not State.FORGOTTEN:
            # This emitter folds the view itself (read-your-writes), with its own
            # result_ttl_s; the processor and a replay would use theirs, and fold.lua
            # leaves an expiry alone when the winner does not move: so the event carries
            # the expiry this writer gives it, and every folder gives the same. (A
            # FORGOTTEN event deletes the task's key: it has no expiry to carry.) The
            # per-state calls give it when they make the event (EmittingCalls): a copy
            # here validates the whole event again, as much CPU as making it.
            event = dataclasses.replace(event, result_ttl_ms=ttl_ms)
        recorded, value = fit_within_limit(event, self.encoder.encode)
        return recorded, event.task_id.encode(), value

    def check(self) -> None:
        """Raise what an emitting call must see first: closed, or an undelivered earlier event."""
        if self._state != "running":
            raise EmitterClosed(f"this emitter is {self._state}")
        if self.failures.pending_for_callers:
            self.failures.raise_for_callers()

    async def accept(self, event: TaskEvent, *, wait: bool = False) -> TaskEvent:
        """From the event loop: buffer ``event`` (waiting for room); with ``wait``, until
        acknowledged. Returns the event as recorded (cut to fit, if it had to be)."""
        self.check()
        recorded, key, value = self.encode_recorded(event)  # first: refuses a non-TaskEvent
        check_not_ahead(event.timestamp, "the event's timestamp", event.task_id)
        await self._accept(key, value, event.timestamp, wait, recorded if self._acked_fold is not None else None)
        return recorded

    async def accept_record(self, name: str, key: str, record: Mapping[str, Any], timestamp: int,
                            *, wait: bool = False) -> None:
        """:meth:`accept` for a record of another type sharing the events topic (the
        schema ``name``, e.g. a worker heartbeat), keyed by ``key``; encoded with this
        pipeline's codec, so the same size limit applies."""
        self.check()
        check_not_ahead(timestamp, f"the {name} record's timestamp", key)
        value = self.encoder.codec.encode_record(name, record)
        await self._accept(key.encode(), value, timestamp, wait)

    async def _accept(self, key: bytes, value: bytes, timestamp: int, wait: bool,
                      event: TaskEvent | None = None) -> None:
        if wait is True:
            await self._accept_and_wait(key, value, timestamp, event)
        elif wait is not False:
            raise _bad_wait(wait)
        elif not self._outbox.offer(key, value, timestamp, event):
            await self._outbox.put(key, value, timestamp, None, self.options.buffer_timeout_s, event)
        self._since_yield += 1
        if self._since_yield >= _YIELD_EVERY:
            # A caller emitting in a tight loop never suspends (there is room), which
            # would starve the pump and every other task: let them run now and then.
            self._since_yield = 0
            await asyncio.sleep(0)

    async def _accept_and_wait(self, key: bytes, value: bytes, ts: int, event: TaskEvent | None) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self._outbox.put(key, value, ts, waiter, self.options.buffer_timeout_s, event)
        try:
            async with asyncio.timeout(self.settings.kafka_timeout_s):
                await asyncio.shield(waiter)
        except TimeoutError:
            async def wait_more(timeout_s: float | None) -> None:
                async with asyncio.timeout(timeout_s):
                    await asyncio.shield(waiter)
            raise self._no_ack(wait_more) from None
        finally:
            # Nobody awaits it any more: keep asyncio from logging its outcome as unseen.
            waiter.add_done_callback(_consume)

    def accept_blocking(self, event: TaskEvent, *, wait: bool = False) -> TaskEvent:
        """From any other thread: same as :meth:`accept`, blocking that thread. Returns
        the event as recorded (cut to fit within the size limit, if it had to be)."""
        self.check()
        recorded, key, value = self.encode_recorded(event)  # first: refuses a non-TaskEvent
        check_not_ahead(event.timestamp, "the event's timestamp", event.task_id)
        self._accept_blocking(key, value, event.timestamp, wait, recorded if self._acked_fold is not None else None)
        return recorded

    def accept_record_blocking(self, name: str, key: str, record: Mapping[str, Any],
                               timestamp: int, *, wait: bool = False) -> None:
        """:meth:`accept_record` from any other thread, blocking that thread."""
        self.check()
        check_not_ahead(timestamp, f"the {name} record's timestamp", key)
        value = self.encoder.codec.encode_record(name, record)
        self._accept_blocking(key.encode(), value, timestamp, wait)

    def _accept_blocking(self, key: bytes, value: bytes, timestamp: int, wait: bool,
                         event: TaskEvent | None = None) -> None:
        if wait is not True:
            if wait is not False:
                raise _bad_wait(wait)
            if not self._outbox.offer(key, value, timestamp, event):
                self._outbox.put_blocking(key, value, timestamp, None, self.options.buffer_timeout_s,
                                          event)
            return
        waiter: ThreadFuture[None] = ThreadFuture()
        self._outbox.put_blocking(key, value, timestamp, waiter, self.options.buffer_timeout_s, event)
        try:
            waiter.result(timeout=self.settings.kafka_timeout_s)
        except TimeoutError:
            async def wait_more(timeout_s: float | None) -> None:  # on the pipeline's loop
                async with asyncio.timeout(timeout_s):
                    await asyncio.shield(asyncio.wrap_future(waiter))
            raise self._no_ack(wait_more) from None

    def _no_ack(self, wait: Callable[[float | None], Awaitable[None]]) -> NotYetAcknowledged:
        return NotYetAcknowledged(
            f"Kafka at {self.settings.kafka_bootstrap_servers} did not acknowledge the event "
            f"within {self.settings.kafka_timeout_s:g} s (RESULTLOG_KAFKA_TIMEOUT_S); it stays "
            "buffered and is still being retried", wait)

    @property
    def unacked_events(self) -> int:
        return self._outbox.unacked_events

    # The pump (event loop) -----------------------------------------------------------
    def _wake(self) -> None:
        assert self._loop is not None
        if threading.get_ident() == self._loop_thread:
            self._work.set()
        else:
            self._loop.call_soon_threadsafe(self._work.set)

    async def _pump(self) -> None:
        assert self._loop is not None
        work, loop = self._work, self._loop
        timer: asyncio.TimerHandle | None = None
        while True:
            stop_if_cancelled()  # stop() cancels the pump and waits for it
            work.clear()
            deadline = None
            if self._restart_needed:
                if not self._lanes.any_outstanding():
                    await self._restart()
                    continue
            else:
                self._distribute(self._outbox.take())
                # A flush (or stop) wants everything out now, lingering or not.
                deadline = await self._submit(force=bool(self._flush_waiters))
            self._wake_flushers()
            if timer is not None:
                timer.cancel()
                timer = None
            if deadline is not None:
                timer = loop.call_at(deadline, work.set)
            # A put needs to wake us only when nothing else will: no batch in flight
            # (its acknowledgement wakes us) and no batch lingering (its timer does).
            # Under load callers therefore never pay for a cross-thread wake-up.
            idle = deadline is None and not self._restart_needed and not self._lanes.any_outstanding()
            if idle and not self._outbox.arm(self._wake):
                continue  # events arrived meanwhile
            await work.wait()
            self._outbox.disarm()

    def _pump_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:  # a bug: never leave callers waiting on a dead pump
            log.error("resultlog emitter pump crashed", exc_info=exc)
            self._outbox.close(f"the emitter's pump crashed: {exc!r}")
            self._fail_unsent(f"the emitter's pump crashed: {exc!r}")

    def _distribute(self, items: deque[Item]) -> None:
        if not items:
            return
        assert self._producer is not None and self._loop is not None
        partitions = self._producer.client.cluster.partitions_for_topic(self.topic)
        if partitions:
            self._num_partitions = len(partitions)
        self._lanes.add(items, self._num_partitions, self._producer.create_batch, self._loop.time())

    async def _submit(self, *, force: bool) -> float | None:
        """Submit each idle partition's oldest batch if it is full, old enough or forced.

        Returns when the next lingering batch will be due (loop time), or None. A batch
        lingers (at most ``linger_ms``) only while an earlier batch is in flight, whose
        acknowledgement wakes the pump and sends them together: an idle producer has
        nothing to wait for, and a lone event would otherwise pay the whole linger.
        """
        producer = self._producer
        assert producer is not None and self._loop is not None
        now = self._loop.time()
        linger = self.options.linger_s
        # Decided once, before this pass submits anything: batches submitted together
        # travel in one request.
        busy = self._lanes.any_outstanding()
        due: float | None = None
        for lane in self._lanes:
            if lane.outstanding is not None or not lane.batches:
                continue
            batch = lane.batches[0]
            # A caller awaiting an acknowledgement (wait=True) is not kept lingering.
            if busy and batch.open and not force and not batch.waiters and now < batch.created + linger:
                when = batch.created + linger
                due = when if due is None or when < due else due
                continue
            lane.batches.popleft()
            batch.open = False
            batch.builder.close()
            # Outstanding from here on, so a cancellation mid-call cannot lose track of it.
            lane.outstanding = batch
            try:
                delivered = await producer.send_batch(batch.builder, self.topic, partition=lane.partition)
            except Exception as exc:  # KafkaError, ProducerClosed, ...: this batch failed
                self._done(lane, batch, exc)
                continue
            delivered.add_done_callback(partial(self._delivered, lane, batch))
        return due

    def _delivered(self, lane: Lane, batch: Batch, fut: asyncio.Future[Any]) -> None:
        exc: BaseException | None
        if fut.cancelled():
            exc = BrokerUnavailable("the batch's delivery was cancelled")
        else:
            exc = fut.exception()
        self._done(lane, batch, exc)

    def _done(self, lane: Lane, batch: Batch, exc: BaseException | None) -> None:
        if batch.finished:
            return  # already counted (e.g. as unsent at stop)
        batch.finished = True
        if lane.outstanding is batch:
            lane.outstanding = None
        if exc is None and batch.events and self._acked_fold is not None:
            # In the log: fold it into the view before its waiters and room are
            # released; the lane may send its next batch meanwhile.
            self._acked_fold.add(batch)
            self._work.set()
            return
        error = None
        if exc is not None:
            cause = error_cause(exc)
            log.error(
                "resultlog: %d event(s) not delivered to %s[%d]: %s",
                batch.count, self.topic, lane.partition, cause,
            )
            error = not_delivered(exc, "the event was", self.topic)
            self.failures.add(batch.count, batch.count - len(batch.waiters), cause,
                              isinstance(error, DeliveryRefused))
            # The producer's sequence numbers now have a gap: replace it before sending more.
            self._restart_needed = True
        self._release(batch, error)

    def _release(self, batch: Batch, error: BaseException | None = None) -> None:
        """Resolve ``batch``'s waiters (with ``error`` if it failed) and give its room back;
        read-your-writes' fold calls this once an acknowledged batch is folded."""
        for waiter in batch.waiters:
            resolve(waiter, error)
        self._outbox.release(batch.count, batch.nbytes)
        self._work.set()

    async def _restart(self) -> None:
        old, self._producer = self._producer, None
        if old is not None:
            await close_producer(old, self.settings.kafka_timeout_s)
        backoff = Backoff()
        while True:
            try:
                self._producer, self._num_partitions = await start_producer(
                    self.settings, self.options.producer, self.topic
                )
                break
            except BrokerUnavailable as exc:
                log.warning("resultlog: cannot restart the Kafka producer yet: %s", exc)
                await backoff.wait()
        # Batches built by the old producer are plain record builders: they carry no
        # producer id until submitted, so the new producer sends them as they are.
        self._restart_needed = False

    def _fail_unsent(self, cause: str) -> None:
        """Count everything still queued, batched or unresolved as not delivered; then
        every flush waiting returns (and reports it): nothing will be delivered any more."""
        batches = self._lanes.take_unfinished()
        items = self._outbox.take()
        events = sum(b.count for b in batches) + len(items)
        if events:
            waiters = [w for b in batches for w in b.waiters]
            waiters += [i.waiter for i in items if i.waiter is not None]
            error = BrokerUnavailable(f"the event was not delivered to Kafka topic {self.topic!r}: {cause}")
            for waiter in waiters:
                resolve(waiter, error)
            self.failures.add(events, events - len(waiters), cause, refused=False)
            nbytes = sum(b.nbytes for b in batches) + sum(len(i.value) for i in items)
            self._outbox.release(events, nbytes)
        for _, done in self._flush_waiters:
            if not done.done():
                done.set_result(None)

    # Flush bookkeeping ----------------------------------------------------------------
    def _low_watermark(self) -> int:
        """The oldest sequence number not yet acknowledged or failed (last + 1 if none)."""
        folding = self._acked_fold.oldest_seq() if self._acked_fold is not None else None
        seqs = [seq for seq in (self._outbox.head_seq(), self._lanes.oldest_seq(), folding)
                if seq is not None]
        return min(seqs) if seqs else self._outbox.last_seq + 1

    def _wake_flushers(self) -> None:
        if not self._flush_waiters:
            return
        low = self._low_watermark()
        for target, done in self._flush_waiters:
            if low > target and not done.done():
                done.set_result(None)


def _bad_wait(wait: object) -> ValidationError:
    # Refused, not taken for its truth: wait="no" would otherwise wait.
    return ValidationError(f"wait must be True or False, got {type(wait).__name__}: {wait!r:.40}"
                           "; the event was not emitted")


def _consume(fut: asyncio.Future[None]) -> None:
    if not fut.cancelled():
        fut.exception()
