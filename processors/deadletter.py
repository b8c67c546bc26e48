"""Dead letters: events that cannot be decoded or are invalid, kept unchanged with the
reason and their origin in headers (docs/processor.md, "What happens to a batch").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]
from aiokafka.errors import KafkaError  # type: ignore[import-untyped]

from resultlog.producers.kafka import close_producer, not_delivered, started
from resultlog.producers.topics import max_message_bytes
from resultlog.connections import kafka_client_args
from resultlog.settings import Settings

REASON_HEADER = "resultlog.reason"
TOPIC_HEADER = "resultlog.source.topic"
PARTITION_HEADER = "resultlog.source.partition"
OFFSET_HEADER = "resultlog.source.offset"
#: On a dead letter whose record was cut to fit (:meth:`DeadLetter.fitted`): the
#: record's key and value lengths, in bytes, as it was in its topic.
KEY_BYTES_HEADER = "resultlog.source.key.bytes"
VALUE_BYTES_HEADER = "resultlog.source.value.bytes"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    key: bytes | None
    value: bytes | None
    reason: str
    topic: str
    partition: int
    offset: int
    #: The record's key and value lengths when :meth:`fitted` cut them, else None.
    source_bytes: tuple[int, int] | None = None

    def headers(self) -> list[tuple[str, bytes]]:
        headers = [
            (REASON_HEADER, self.reason.encode("utf-8", "replace")[:4000]),
            (TOPIC_HEADER, self.topic.encode()),
            (PARTITION_HEADER, str(self.partition).encode()),
            (OFFSET_HEADER, str(self.offset).encode()),
        ]
        if self.source_bytes is not None:
            headers += [(KEY_BYTES_HEADER, str(self.source_bytes[0]).encode()),
                        (VALUE_BYTES_HEADER, str(self.source_bytes[1]).encode())]
        return headers

    def fitted(self, budget: int) -> DeadLetter:
        """This letter with its record's key and value cut to ``budget`` bytes together
        (the key first), if they are larger.

        The dead-letter topic takes what its source topics take, so the original record
        with the reason's headers added can be just over its limit: refused, the letter
        stopped the processor at every start (seen with a 1 MB record of another
        producer; until 1 Dec 2026). ``budget`` is ``RESULTLOG_MAX_EVENT_BYTES``: no
        emitter's record is larger, and every topic takes that and the headers
        (``producers/topics.event_batch_bytes``). The whole record stays in its topic,
        at the offset the headers name, for as long as the topic keeps it."""
        key, value = self.key or b"", self.value or b""
        if len(key) + len(value) <= budget:
            return self
        kept_key = key[:budget]
        kept_value = value[:budget - len(kept_key)]
        return replace(
            self, key=None if self.key is None else kept_key,
            value=None if self.value is None else kept_value,
            reason=f"{self.reason} (the record, {len(key) + len(value)} bytes, is cut to its first "
                   f"{len(kept_key) + len(kept_value)} here: see {KEY_BYTES_HEADER} and "
                   f"{VALUE_BYTES_HEADER})",
            source_bytes=(len(key), len(value)))


class TopicWriter:
    """Writes records to one topic with acks=all and waits for every ack.

    A send that fails raises :class:`~resultlog.errors.DeliveryRefused` if the broker
    refused the records (no write permission, a record over the topic's
    ``max.message.bytes``: sending them again cannot help), else
    :class:`~resultlog.errors.BrokerUnavailable`, and the next send starts a new
    producer: the idempotent producer's sequence has a gap where the failed records were
    (as for the emitter's, ``producers/pipeline.py``)."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.settings = settings
        self.topic = topic
        self._producer: AIOKafkaProducer | None = None

    async def _get_producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            producer = AIOKafkaProducer(
                **kafka_client_args(self.settings),
                acks="all",
                enable_idempotence=True,
                linger_ms=1,
                request_timeout_ms=int(self.settings.kafka_timeout_s * 1000),
                # The chords topic gets member events of any size up to the limit
                # (aiokafka refuses a record over this at send(); its default is 1 MiB).
                max_request_size=max_message_bytes(self.settings),
            )
            await started(producer, self.settings, f"write to {self.topic} on")
            self._producer = producer
        return self._producer

    async def send(self, records: Sequence[tuple[bytes | None, bytes | None]],
                   headers: Sequence[list[tuple[str, bytes]]] | None = None) -> None:
        if not records:
            return
        producer = await self._get_producer()
        try:
            futures = [
                await producer.send(self.topic, value=value, key=key,
                                    headers=None if headers is None else headers[i])
                for i, (key, value) in enumerate(records)
            ]
            for future in futures:
                await future
        except KafkaError as exc:
            self._producer = None
            await close_producer(producer, self.settings.kafka_timeout_s)
            raise not_delivered(exc, f"{len(records)} record(s) were", self.topic) from exc

    async def close(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None


class DeadLetterWriter:
    """Sends dead letters to ``settings.dead_letter_topic`` and waits for the acks."""

    def __init__(self, settings: Settings) -> None:
        self._writer = TopicWriter(settings, settings.dead_letter_topic)
        self._budget = settings.max_event_bytes

    async def send(self, letters: Sequence[DeadLetter]) -> None:
        fitted = [letter.fitted(self._budget) for letter in letters]
        await self._writer.send([(l.key, l.value) for l in fitted], [l.headers() for l in fitted])

    async def close(self) -> None:
        await self._writer.close()
