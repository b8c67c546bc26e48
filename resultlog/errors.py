"""The one error hierarchy of resultlog.

Every failure a user can see is a :class:`ResultlogError`. Adapters (aiokafka, redis,
asyncpg, fastavro) translate their own exceptions into these at the boundary, so
callers catch one family. ``retriable`` tells the shared backoff helper whether trying
again can help.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable


class ResultlogError(Exception):
    """Base of every error raised by resultlog."""

    retriable: bool = False


class ConfigurationError(ResultlogError):
    """A setting is unknown, malformed or inconsistent."""


class ValidationError(ResultlogError, ValueError):
    """A value handed to a public entry point is not acceptable."""


class InvalidTaskId(ValidationError):
    """A task id that is empty, not a string, or too long."""


class UnknownState(ValidationError):
    """A state name that is not one of resultlog's states."""


class ResultNotSerializable(ValidationError):
    """A task result (or args/kwargs) that JSON cannot encode."""


class EventTooLarge(ValidationError):
    """An encoded event larger than the configured limit.

    ``size`` and ``limit`` (bytes) say by how much, when the encoder measured it; the
    emitter uses them to fit a FAILURE, RETRY or REVOKED event within the limit.
    """

    def __init__(self, message: str, *, size: int | None = None, limit: int | None = None) -> None:
        super().__init__(message)
        self.size = size
        self.limit = limit


class CodecError(ResultlogError):
    """Bytes that cannot be decoded into an event (bad framing, unknown schema...)."""


class CorruptResult(CodecError):
    """A stored result, args or kwargs that is not the JSON text the contract says (a
    producer other than resultlog's emitters wrote it): named, not decoded."""


class UnknownSchema(CodecError):
    """The writer schema's fingerprint is not in the local schema store."""


class BrokerUnavailable(ResultlogError):
    """Kafka could not be reached (or did not acknowledge) within the timeout."""

    retriable = True


class NotYetAcknowledged(BrokerUnavailable):
    """Kafka did not acknowledge an event within the timeout; the event stays buffered
    and its sending is still retried, so it may yet be delivered. :meth:`wait`, on the
    emitter's event loop, waits longer for that same event: for a caller that must not
    report a failure for an event that will be stored (``producers/late.py``)."""

    def __init__(self, message: str,
                 wait: Callable[[float | None], Awaitable[None]] | None = None) -> None:
        super().__init__(message)
        self._wait = wait

    async def wait(self, timeout_s: float | None) -> None:
        """Return once Kafka acknowledged the event; :class:`TimeoutError` after
        ``timeout_s`` s, or the error its delivery failed with."""
        if self._wait is None:
            raise TypeError("only an event emitted with wait=True can be waited for again")
        await self._wait(timeout_s)


class DeliveryRefused(BrokerUnavailable):
    """Kafka answered and refused the events (a record over the topic's
    ``max.message.bytes``, a timestamp outside its window, no write permission): sending
    them again would be refused again. A :class:`BrokerUnavailable`, so that code
    catching that hears of it, but not retriable."""

    retriable = False


class EmitterClosed(ResultlogError):
    """An event was handed to an emitter that is stopped or stopping."""


class BufferFull(ResultlogError):
    """The emitter's bounded buffer stayed full for longer than the timeout."""

    retriable = True


class StoreUnavailable(ResultlogError):
    """Redis or PostgreSQL could not be reached."""

    retriable = True


class PartitionDetaching(StoreUnavailable):
    """A late event falls on a day whose history partition ``resultlog prune`` is
    dropping (pending detach, or detached and not yet dropped): no row of that day can
    be written until the prune has dropped it and a new partition is made. Retriable:
    the fold waits, its batches in order."""


class ViewLost(ResultlogError):
    """The Redis view no longer holds what its recorded position says (a restart without
    persistence, a FLUSHDB, a failover to an empty replica, an evicted offsets hash).

    Raised by a live fold write that found its partition's position missing or behind
    the batch; the processor then records the gap and rebuilds it from the log."""

    def __init__(self, message: str, partitions: tuple[int, ...] = ()) -> None:
        super().__init__(message)
        self.partitions = partitions


class HistoryRewound(ResultlogError):
    """The history holds less than this processor wrote to it: PostgreSQL lost the last
    asynchronously committed transactions in a crash (rows and their offsets together).

    Raised by the live fold, which then seeks the lost partitions back to the positions
    the history holds and reads that tail from the log again (docs/processor.md)."""

    def __init__(self, message: str, positions: dict[int, int]) -> None:
        super().__init__(message)
        self.positions = positions


class ResultTimeout(ResultlogError, TimeoutError):
    """``get()`` waited longer than its timeout for a task to finish."""


class StoreTimeout(ResultTimeout, StoreUnavailable):
    """``get()``'s timeout passed before the store answered the read it starts with
    (Redis down, paused or overloaded): the timeout the caller chose has passed, and
    the store did not answer, so it is both a :class:`ResultTimeout` and a
    :class:`StoreUnavailable`."""


class TaskRevoked(ResultlogError):
    """``get()`` on a task that was revoked."""


class ChordError(ResultlogError):
    """A chord failed because one of its members failed."""


class DevStackError(ResultlogError):
    """The local development stack could not be brought up or down."""


class ReplayRefused(ResultlogError):
    """A replay would write into stores a live processor is writing."""


class ReplayFailed(ResultlogError):
    """A replay worker process died without saying why (killed, out of memory)."""
