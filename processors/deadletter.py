"""Dead letters: events that cannot be decoded or are invalid, kept unchanged with the
reason and their origin in headers (docs/processor.md, "What happens to a batch").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]

from resultlog.producers.kafka import started
from resultlog.producers.topics import max_message_bytes
from resultlog.connections import kafka_client_args
from resultlog.settings import Settings

REASON_HEADER = "resultlog.reason"
TOPIC_HEADER = "resultlog.source.topic"
PARTITION_HEADER = "resultlog.source.partition"
OFFSET_HEADER = "resultlog.source.offset"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    key: bytes | None
    value: bytes | None
    reason: str
    topic: str
    partition: int
    offset: int

    def headers(self) -> list[tuple[str, bytes]]:
        return [
            (REASON_HEADER, self.reason.encode("utf-8", "replace")[:4000]),
            (TOPIC_HEADER, self.topic.encode()),
            (PARTITION_HEADER, str(self.partition).encode()),
            (OFFSET_HEADER, str(self.offset).encode()),
        ]


class TopicWriter:
    """Writes records to one topic with acks=all and waits for every ack."""

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
        futures = [
            await producer.send(self.topic, value=value, key=key,
                                headers=None if headers is None else headers[i])
            for i, (key, value) in enumerate(records)
        ]
        for future in futures:
            await future

    async def close(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None


class DeadLetterWriter:
    """Sends dead letters to ``settings.dead_letter_topic`` and waits for the acks."""

    def __init__(self, settings: Settings) -> None:
        self._writer = TopicWriter(settings, settings.dead_letter_topic)

    async def send(self, letters: Sequence[DeadLetter]) -> None:
        await self._writer.send([(l.key, l.value) for l in letters], [l.headers() for l in letters])

    async def close(self) -> None:
        await self._writer.close()
