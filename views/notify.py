"""Wake-ups by push: one pub/sub connection multiplexing every waiter of a backend.

A waiter enters :meth:`Notifier.watch` (SUBSCRIBE, live once a ``PING <token>`` sent
after it on the same connection is answered), then reads the task, then waits; why that
is race-free, and why a reconnect wakes everyone: docs/results.md, "How the wake-up works".
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio
from redis.asyncio.client import PubSub
from redis.asyncio.connection import Connection

from resultlog.background import cancel_and_wait
from resultlog.errors import StoreUnavailable
from resultlog.redis_access import UNAVAILABLE, text, translated

log = logging.getLogger(__name__)

_BARRIER_PREFIX = "resultlog-barrier-"
CLOSED = "the result backend is closed"
# How long a subscription barrier waits for its pong before sending another PING.
BARRIER_PATIENCE_S = 5.0


class Watch:
    """One waiter's interest in one channel."""

    __slots__ = ("channel", "_payloads", "_event", "_error")

    def __init__(self, channel: str) -> None:
        self.channel = channel
        # Every wake-up since the last take, in order: a message's data, or None (a
        # reconnect's: re-read). All of them, not the last: a waiter behind by two
        # pushes still hands each state on (Celery's get(on_message=...)).
        self._payloads: list[str | None] = []
        self._event = asyncio.Event()
        self._error: BaseException | None = None

    def clear(self) -> None:
        """Forget earlier wake-ups: call before each read of the task."""
        self.take()

    def take(self) -> list[str | None]:
        """The wake-ups since the last take or clear, oldest first; forgets them."""
        payloads, self._payloads = self._payloads, []
        self._event.clear()
        return payloads

    async def wait(self) -> None:
        """Wait for a wake-up (the caller bounds the wait, e.g. ``asyncio.timeout``)."""
        await self._event.wait()
        if self._error is not None:
            raise self._error

    def _wake(self, error: BaseException | None = None, payload: str | None = None) -> None:
        if error is not None:
            self._error = error
        self._payloads.append(payload)
        self._event.set()


class _Channel:
    __slots__ = ("watches", "subscribed")

    def __init__(self, subscribed: asyncio.Future[None]) -> None:
        self.watches: set[Watch] = set()
        self.subscribed = subscribed  # done once the SUBSCRIBE has taken effect


class _Barrier:
    __slots__ = ("future", "generation", "resync")

    def __init__(self, future: asyncio.Future[None], resync: int | None = None) -> None:
        self.future = future
        self.generation: int | None = None  # connection generation its PING went out in
        self.resync = resync  # for a reconnect's barrier: the generation it resyncs


class Notifier:
    """Many waiters, one pub/sub connection (bound to the event loop that first uses it)."""

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self._client = client
        self._pubsub: PubSub | None = None
        self._connection: Connection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._channels: dict[str, _Channel] = {}
        self._barriers: dict[str, _Barrier] = {}
        self._tokens = itertools.count(1)
        # Bumped on every reconnect: a barrier whose PING went out on an older
        # connection may never be answered, and the reconnect's own barrier releases it.
        self._generation = 0
        self._start_lock = asyncio.Lock()
        # Held from a subscription decision to its command being written, so an
        # UNSUBSCRIBE can never slip in after a SUBSCRIBE of the same channel.
        self._command_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    @asynccontextmanager
    async def watch(self, channel: str) -> AsyncIterator[Watch]:
        """Subscribed to ``channel`` for the duration; the subscription is live on entry."""
        if self._closed:
            raise RuntimeError(CLOSED)
        w = Watch(channel)
        entry = self._channels.get(channel)
        if entry is None:
            entry = _Channel(asyncio.get_running_loop().create_future())
            self._channels[channel] = entry
            # The notifier, not the first waiter, owns the subscription: a cancelled
            # waiter must not cancel it under the others.
            self._spawn(self._subscribe(channel, entry))
        entry.watches.add(w)
        try:
            await asyncio.shield(entry.subscribed)
            yield w
        finally:
            self._leave(w)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _subscribe(self, channel: str, entry: _Channel) -> None:
        try:
            with translated("subscribing for a wake-up"):
                pubsub = await self._ensure_started()
                async with self._command_lock:
                    await pubsub.subscribe(channel)
                await self._barrier(pubsub)
        except BaseException as exc:
            if self._channels.get(channel) is entry:
                del self._channels[channel]  # the next waiter tries afresh
            if isinstance(exc, Exception):
                _fail(entry.subscribed, exc)
                return
            # Cancelled: only aclose() cancels this task. Waiters must see an error,
            # not a cancellation of their own.
            _fail(entry.subscribed, RuntimeError(CLOSED))
            raise
        if not entry.subscribed.done():
            entry.subscribed.set_result(None)

    def _leave(self, w: Watch) -> None:
        entry = self._channels.get(w.channel)
        if entry is None or w not in entry.watches:
            return
        entry.watches.discard(w)
        if not entry.watches:
            del self._channels[w.channel]
            if self._pubsub is not None and not self._closed:
                self._spawn(self._unsubscribe(self._pubsub, w.channel))

    async def _unsubscribe(self, pubsub: PubSub, channel: str) -> None:
        async with self._command_lock:
            if channel in self._channels or pubsub is not self._pubsub:
                return  # someone came back for it meanwhile, or the connection is gone
            try:
                # redis-py keeps a later re-subscribe that overtakes this one's reply.
                await pubsub.unsubscribe(channel)
            except UNAVAILABLE:
                pass  # the reader notices a dead connection on its own

    def _check_open(self) -> None:
        # The notifier's own tasks call this after awaiting redis-py: aclose() cancels
        # them, but on Python 3.11 a cancellation can be lost there (redis-py sends
        # through asyncio.wait_for, which returns the result of a send that finished
        # as the cancellation arrived: CPython gh-86296, fixed in 3.12). A subscription
        # going on after aclose() would PING a connection whose reader is gone and wait
        # for its answer for ever, and aclose() with it.
        if self._closed:
            raise RuntimeError(CLOSED)

    async def _ensure_started(self) -> PubSub:
        async with self._start_lock:
            self._check_open()
            if self._pubsub is None:
                pubsub = self._client.pubsub()
                try:
                    await pubsub.connect()  # type: ignore[no-untyped-call]
                    self._check_open()
                except BaseException:
                    await self._discard(pubsub)
                    raise
                assert pubsub.connection is not None
                # After redis-py's own callback (which re-subscribes), ours sends the
                # resync barrier; both run on every reconnect of this connection.
                self._connection = pubsub.connection
                self._connection.register_connect_callback(self._on_reconnect)
                self._pubsub = pubsub
                self._reader = asyncio.get_running_loop().create_task(
                    self._read(pubsub), name="resultlog-notifier"
                )
            return self._pubsub

    async def _barrier(self, pubsub: PubSub) -> None:
        while True:
            self._check_open()
            token = f"{_BARRIER_PREFIX}{next(self._tokens)}"
            barrier = _Barrier(asyncio.get_running_loop().create_future())
            self._barriers[token] = barrier
            try:
                await pubsub.ping(token)
                self._check_open()
                # Read after the send: a reconnect inside it re-sent the PING on the
                # new connection, whose pong will come.
                barrier.generation = self._generation
                try:
                    async with asyncio.timeout(BARRIER_PATIENCE_S):
                        await barrier.future
                    return
                except TimeoutError:
                    # A PING written to a connection as it died (while another task
                    # was reconnecting it) is never answered: ask again.
                    log.warning("resultlog: no answer on the pub/sub connection; asking again")
            finally:
                self._barriers.pop(token, None)

    async def _on_reconnect(self, connection: Connection) -> None:
        self._generation += 1
        if not self._channels:
            return  # nobody to resync
        token = f"{_BARRIER_PREFIX}{next(self._tokens)}"
        self._barriers[token] = _Barrier(
            asyncio.get_running_loop().create_future(), resync=self._generation
        )
        # Every channel a waiter needs, whatever redis-py re-subscribed: a SUBSCRIBE
        # written to the old connection as it died is not in redis-py's list yet.
        # Subscribing twice is harmless.
        await connection.send_command("SUBSCRIBE", *self._channels, check_health=False)
        await connection.send_command("PING", token, check_health=False)

    async def _read(self, pubsub: PubSub) -> None:
        try:
            while True:
                response = await pubsub.parse_response(block=True)
                if response is None:
                    continue
                # A barrier's answer: a bare string under RESP3 (and RESP2 outside
                # subscribed mode), ["pong", token] under RESP2 in subscribed mode.
                if isinstance(response, (str, bytes)):
                    self._pong(text(response))
                    continue
                kind = text(response[0])
                if kind == "message":  # the hot path: straight to the waiters
                    self._wake(text(response[1]), text(response[2]))
                elif kind == "pong":
                    self._pong(text(response[1]))
                else:
                    # (un)subscribe confirmations: redis-py's handling keeps its
                    # subscription bookkeeping right.
                    await pubsub.handle_message(response)  # type: ignore[no-untyped-call]
        except asyncio.CancelledError:
            raise
        except UNAVAILABLE as exc:
            log.warning("resultlog: pub/sub connection lost: %s", exc)
            self._fail_all(StoreUnavailable(f"Redis pub/sub connection lost: {exc}"))
        except Exception as exc:  # never die silently: waiters would hang
            log.exception("resultlog: pub/sub reader failed")
            self._fail_all(StoreUnavailable(f"Redis pub/sub reader failed: {exc!r}"))

    def _wake(self, channel: str, payload: str) -> None:
        entry = self._channels.get(channel)
        if entry is not None:
            for w in entry.watches:
                w._wake(payload=payload)

    def _pong(self, token: str) -> None:
        barrier = self._barriers.pop(token, None)
        if barrier is None:
            return
        if barrier.resync is not None:
            self._resync(barrier.resync)
        if not barrier.future.done():
            barrier.future.set_result(None)

    def _resync(self, generation: int) -> None:
        # The connection came back and everything sent before it is re-subscribed:
        # release barriers whose PING was lost with the old connection, and wake every
        # waiter to re-read (a publish may have been missed while disconnected).
        for barrier in list(self._barriers.values()):
            if (barrier.generation is not None and barrier.generation < generation
                    and not barrier.future.done()):
                barrier.future.set_result(None)
        for entry in self._channels.values():
            for w in entry.watches:
                w._wake()

    def _fail_all(self, error: StoreUnavailable) -> None:
        # Start afresh on the next watch; everyone waiting now gets the error.
        pubsub, self._pubsub, self._reader = self._pubsub, None, None
        self._release(error)
        if pubsub is not None:
            self._forget_connection()
            self._spawn(self._discard(pubsub))

    def _forget_connection(self) -> None:
        # Synchronously, before a new connection can be set up in its place.
        if self._connection is not None:
            self._connection.deregister_connect_callback(  # type: ignore[no-untyped-call]
                self._on_reconnect
            )
            self._connection = None

    async def _discard(self, pubsub: PubSub) -> None:
        try:
            await pubsub.aclose()  # type: ignore[no-untyped-call]
        except UNAVAILABLE:
            pass

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        tasks = [t for t in (self._reader, *self._tasks) if t is not None]
        self._reader = None
        await cancel_and_wait(*tasks)
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            self._forget_connection()
            await self._discard(pubsub)
        self._release(RuntimeError(CLOSED))

    def _release(self, error: BaseException) -> None:
        """Fail every barrier, subscription and waiter with ``error``; forget them."""
        for barrier in self._barriers.values():
            _fail(barrier.future, error)
        self._barriers.clear()
        for entry in self._channels.values():
            _fail(entry.subscribed, error)
            for w in entry.watches:
                w._wake(error)
        self._channels.clear()


def _fail(future: asyncio.Future[None], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
        future.exception()  # retrieved: nobody left waiting must not log it
