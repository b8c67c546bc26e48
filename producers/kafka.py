"""The emitter's boundary with aiokafka: producer configuration and error translation.

Everything that knows aiokafka's classes, configuration names or (in two clearly marked
places) its internals lives here, so the rest of the package speaks resultlog's errors.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeVar

from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]
from aiokafka.codec import has_lz4, has_snappy, has_zstd  # type: ignore[import-untyped]
from aiokafka.errors import BrokerResponseError, KafkaError  # type: ignore[import-untyped]

from resultlog.connections import kafka_client_args
from resultlog.errors import (BrokerUnavailable, ConfigurationError, DeliveryRefused, ResultlogError,
                             ValidationError)
from resultlog.refusals import kafka_refusal
from resultlog.schemas.event import now_ms
from resultlog.settings import Settings

log = logging.getLogger("resultlog.producers")

Compression = Literal["gzip", "lz4", "zstd", "snappy"] | None

_NEEDS_CRAMJAM = {"lz4": has_lz4, "zstd": has_zstd, "snappy": has_snappy}

#: How far ahead of this host's clock a record's timestamp may be. Kafka refuses a record
#: further ahead of the broker's clock (log.message.timestamp.after.max.ms: an hour by
#: default since Kafka 4.0) with InvalidTimestampError, which failed the record's whole
#: batch (the events of other callers in it too) and reached the caller as a retriable
#: BrokerUnavailable, then again from the next flush()/stop(): retrying cannot help.
MAX_AHEAD_MS: Final = 3_600_000


def check_not_ahead(timestamp_ms: int, what: str, of: str) -> None:
    """Refuse (:class:`ValidationError`) a record timestamp Kafka would refuse for being
    more than :data:`MAX_AHEAD_MS` in the future; ``what`` names it, ``of`` whose it is
    (a task or worker id), for the caller."""
    ahead_ms = timestamp_ms - now_ms()
    if ahead_ms > MAX_AHEAD_MS:
        raise ValidationError(
            f"{what} {timestamp_ms} (ms since the epoch) of {of!r:.80} is "
            f"{ahead_ms / 1000:.0f} s ahead of this host's clock; Kafka refuses a "
            f"record timestamped more than {MAX_AHEAD_MS // 1000} s in the future "
            "(log.message.timestamp.after.max.ms): give the time it happened, at the latest "
            "now; nothing was emitted")


@dataclass(frozen=True, slots=True)
class ProducerConfig:
    """How the emitter configures its Kafka producer."""

    compression_type: Compression
    max_batch_bytes: int
    client_id: str

    def __post_init__(self) -> None:
        if self.compression_type not in (None, "gzip", "lz4", "zstd", "snappy"):
            raise ConfigurationError(
                f"compression_type {self.compression_type!r} is not one of gzip, lz4, zstd, snappy, None"
            )
        check = _NEEDS_CRAMJAM.get(self.compression_type or "")
        if check is not None and not check():
            raise ConfigurationError(
                f"compression_type={self.compression_type!r} needs the cramjam package "
                "(pip install cramjam); gzip works without it"
            )
        if not 1024 <= self.max_batch_bytes <= 16 * 1024 * 1024:
            raise ConfigurationError("max_batch_bytes must be between 1 KiB and 16 MiB")


def make_producer(settings: Settings, config: ProducerConfig) -> AIOKafkaProducer:
    """A producer that never reorders or duplicates: idempotent, acks=all.

    ``linger_ms`` stays 0: the pipeline does its own batching (it builds whole record
    batches while the previous request is in flight), and an aiokafka linger would only
    delay batches that are already complete.
    """
    return AIOKafkaProducer(
        **kafka_client_args(settings),
        client_id=config.client_id,
        acks="all",
        enable_idempotence=True,
        compression_type=config.compression_type,
        max_batch_size=config.max_batch_bytes,
        linger_ms=0,
        request_timeout_ms=int(settings.kafka_timeout_s * 1000),
    )


def refused_by_broker(exc: BaseException | None) -> bool:
    """Whether ``exc`` is the broker's own answer that it will not take the records
    (retrying cannot help), rather than the broker being out of reach."""
    return isinstance(exc, BrokerResponseError) and not exc.retriable


def error_cause(exc: BaseException) -> str:
    """``exc`` as a log line or message names it: its class, and its text if it has one."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def not_delivered(exc: BaseException, what: str, topic: str) -> BrokerUnavailable:
    """Why ``what`` (e.g. "the event was") did not reach ``topic``: :class:`DeliveryRefused`
    (not retriable) if the broker refused it, else :class:`BrokerUnavailable`."""
    kind = DeliveryRefused if refused_by_broker(exc) else BrokerUnavailable
    return kind(f"{what} not delivered to Kafka topic {topic!r}: {error_cause(exc)}")


async def start_failure(settings: Settings, exc: BaseException | None, doing: str) -> ResultlogError:
    """Why a Kafka client could not start or answer: a refusal that names the setting to
    fix (wrong password, untrusted certificate: resultlog/refusals.py), else that it could
    not reach the broker, naming what to check."""
    refused = await kafka_refusal(settings)
    if refused is not None:
        return refused
    cause = "timed out" if exc is None or isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
    return BrokerUnavailable(
        f"could not {doing} Kafka at {settings.kafka_bootstrap_servers} within "
        f"{settings.kafka_timeout_s:g} s ({cause}); check that the broker is running and "
        "reachable, or set RESULTLOG_KAFKA_BOOTSTRAP_SERVERS (and RESULTLOG_KAFKA_TIMEOUT_S); "
        f"RESULTLOG_KAFKA_SECURITY_PROTOCOL ({settings.kafka_security_protocol}) must be what "
        "the broker's listener expects"
    )


Client = TypeVar("Client", bound=Any)


async def started(client: Client, settings: Settings, doing: str = "connect to") -> Client:
    """``client`` (an aiokafka consumer, producer or admin client), started; if Kafka
    cannot be reached it is stopped again and :class:`BrokerUnavailable` names what to
    check. ``doing``: what the caller was doing, for the message ("connect to")."""
    try:
        await client.start()
    except KafkaError as exc:
        stop = getattr(client, "stop", None) or client.close
        await stop()
        raise await start_failure(settings, exc, doing) from exc
    return client


async def start_producer(settings: Settings, config: ProducerConfig, topic: str) -> tuple[AIOKafkaProducer, int]:
    """A started producer and the topic's partition count, or :class:`BrokerUnavailable`."""
    producer = make_producer(settings, config)
    try:
        async with asyncio.timeout(settings.kafka_timeout_s):
            await producer.start()
            partitions = await producer.partitions_for(topic)
        if not partitions:
            raise BrokerUnavailable(f"Kafka reports no partitions for topic {topic!r}")
    except BaseException as exc:
        await close_producer(producer, settings.kafka_timeout_s)
        if isinstance(exc, (KafkaError, OSError, TimeoutError)):
            raise await start_failure(settings, exc, "connect to") from exc
        raise
    return producer, len(partitions)


def abort_pending(producer: AIOKafkaProducer, exc: BaseException) -> None:
    """Fail every batch the producer still holds (used only when giving up at stop).

    aiokafka's idempotent producer retries a batch until it is acknowledged, so with the
    broker gone ``producer.stop()`` would wait forever. This uses aiokafka internals
    (``_message_accumulator.fail_all``, what its own sender does when it dies) to resolve
    those batches with ``exc``; the pipeline then reports them as not delivered.
    """
    accumulator = getattr(producer, "_message_accumulator", None)
    fail_all = getattr(accumulator, "fail_all", None)
    if fail_all is not None:
        fail_all(exc)


async def close_producer(producer: AIOKafkaProducer, timeout_s: float) -> None:
    """Stop ``producer`` within ``timeout_s``; a producer that cannot stop is abandoned."""
    try:
        async with asyncio.timeout(timeout_s):
            await producer.stop()
    except (KafkaError, OSError, TimeoutError) as exc:
        log.warning("Kafka producer did not stop cleanly: %r", exc)
