"""The pipeline's health: lag per partition, views being rebuilt, dead letters, chords.

Lag is the log end offset minus each store's recorded position (the Redis view's
:class:`~resultlog.views.coverage.ViewCoverage`, the history's ``consumer_offsets``).
Dead letters are read from their topic again only when its end offsets moved.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timezone

import redis.asyncio
from aiokafka import AIOKafkaConsumer, TopicPartition  # type: ignore[import-untyped]
from aiokafka.admin import AIOKafkaAdminClient  # type: ignore[import-untyped]
from aiokafka.errors import KafkaError  # type: ignore[import-untyped]

from resultlog import names
from resultlog.connections import kafka_client_args
from resultlog.processors.deadletter import OFFSET_HEADER, PARTITION_HEADER, REASON_HEADER
from resultlog.producers.kafka import start_failure, started
from resultlog.settings import Settings
from resultlog.chords.store import ChordView, chord_view_from_hash
from resultlog.views.coverage import ViewCoverage
from resultlog.views.history import HistoryStore

#: Dead letters shown (the latest of each partition, then the latest overall).
LATEST_DEAD_LETTERS = 10
_FETCH_TIMEOUT_MS = 1000


@dataclass(frozen=True, slots=True)
class PartitionLag:
    """Where the view and the history are in one partition of the events topic, against
    the log's end: what the status page's lag table shows."""

    partition: int
    end_offset: int
    view_position: int | None  # None: the view has no position (knows nothing yet)
    history_position: int | None
    view_gap: tuple[int, int] | None  # being rebuilt

    @property
    def view_lag(self) -> int | None:
        return None if self.view_position is None else self.end_offset - self.view_position

    @property
    def history_lag(self) -> int | None:
        return None if self.history_position is None else self.end_offset - self.history_position


@dataclass(frozen=True, slots=True)
class DeadLetterRow:
    partition: int
    offset: int
    when: datetime
    reason: str
    source: str  # "partition:offset" of the event it replaced
    key: str


@dataclass(frozen=True, slots=True)
class DeadLetters:
    count: int
    latest: list[DeadLetterRow]


class PipelineStatus:
    """Reads Kafka offsets and dead letters through one consumer without a group."""

    def __init__(self, settings: Settings, client: redis.asyncio.Redis,
                 history: HistoryStore) -> None:
        self.settings = settings
        self.client = client
        self.history = history
        self.coverage = ViewCoverage(settings, client, settings.consumer_group)
        self._lock = asyncio.Lock()
        self._letters: tuple[tuple[int, ...], DeadLetters] | None = None

    async def start(self) -> None:
        consumer = AIOKafkaConsumer(
            **kafka_client_args(self.settings), group_id=None,
            enable_auto_commit=False, auto_offset_reset="earliest",
            request_timeout_ms=int(self.settings.kafka_timeout_s * 1000))
        self.consumer = await started(consumer, self.settings, "read offsets from")
        admin = AIOKafkaAdminClient(
            **kafka_client_args(self.settings),
            request_timeout_ms=int(self.settings.kafka_timeout_s * 1000))
        self.admin = await started(admin, self.settings, "describe topics on")

    async def close(self) -> None:
        await self.admin.close()
        await self.consumer.stop()

    @asynccontextmanager
    async def _asking_kafka(self) -> AsyncIterator[None]:
        """Kafka gone while the dashboard runs -> BrokerUnavailable naming what to check."""
        try:
            yield
        except KafkaError as exc:
            raise await start_failure(self.settings, exc, "read offsets from") from exc

    async def _partitions(self, topic: str) -> list[TopicPartition]:
        """The topic's partitions; none if it does not exist (yet)."""
        [described] = await self.admin.describe_topics([topic])
        if described["error_code"] != 0:
            return []
        return [TopicPartition(topic, p["partition"])
                for p in sorted(described["partitions"], key=lambda p: p["partition"])]

    async def lag(self) -> list[PartitionLag]:
        topic = self.settings.events_topic
        async with self._asking_kafka():
            tps = await self._partitions(topic)
            ends = await self.consumer.end_offsets(tps) if tps else {}
        coverage = await self.coverage.read()
        history = await self.history.committed_offsets(self.settings.consumer_group, topic)
        return [
            PartitionLag(tp.partition, ends[tp], coverage.positions.get(tp.partition),
                         history.get(tp.partition), coverage.gaps.get(tp.partition))
            for tp in tps
        ]

    async def dead_letters(self) -> DeadLetters:
        async with self._lock, self._asking_kafka():  # one reader of the consumer's assignment
            tps = await self._partitions(self.settings.dead_letter_topic)
            if not tps:
                return DeadLetters(0, [])
            begins = await self.consumer.beginning_offsets(tps)
            ends = await self.consumer.end_offsets(tps)
            marker = tuple(ends[tp] for tp in tps)
            if self._letters is not None and self._letters[0] == marker:
                return self._letters[1]
            count = sum(ends[tp] - begins[tp] for tp in tps)
            latest = await self._read_latest(tps, begins, ends)
            letters = DeadLetters(count, latest)
            self._letters = (marker, letters)
            return letters

    async def _read_latest(self, tps: list[TopicPartition], begins: dict[TopicPartition, int],
                           ends: dict[TopicPartition, int]) -> list[DeadLetterRow]:
        wanted = [tp for tp in tps if ends[tp] > begins[tp]]
        if not wanted:
            return []
        self.consumer.assign(wanted)
        for tp in wanted:
            self.consumer.seek(tp, max(begins[tp], ends[tp] - LATEST_DEAD_LETTERS))
        rows: list[DeadLetterRow] = []
        remaining = {tp for tp in wanted}
        deadline = asyncio.get_running_loop().time() + _FETCH_TIMEOUT_MS / 1000
        while remaining and asyncio.get_running_loop().time() < deadline:
            batches = await self.consumer.getmany(*remaining, timeout_ms=200)
            for tp, records in batches.items():
                for rec in records:
                    rows.append(_letter(rec))
                    if rec.offset >= ends[tp] - 1:
                        remaining.discard(tp)
        self.consumer.assign([])
        rows.sort(key=lambda r: r.when, reverse=True)
        return rows[:LATEST_DEAD_LETTERS]

    async def chords(self, chord_ids: list[str]) -> list[ChordView]:
        """The Redis view of these chords (one round trip); unknown ones left out."""
        if not chord_ids:
            return []
        prefix = self.settings.redis_prefix
        async with self.client.pipeline(transaction=False) as pipe:
            for chord_id in chord_ids:
                pipe.hgetall(names.chord_key(prefix, chord_id))
            hashes = await pipe.execute()
        return [chord_view_from_hash(c, h) for c, h in zip(chord_ids, hashes) if h]


def _letter(rec: object) -> DeadLetterRow:
    headers = {k: v.decode("utf-8", "replace") for k, v in (getattr(rec, "headers", None) or ())}
    key = getattr(rec, "key", None)
    return DeadLetterRow(
        partition=int(getattr(rec, "partition")),
        offset=int(getattr(rec, "offset")),
        when=datetime.fromtimestamp(int(getattr(rec, "timestamp")) / 1000, timezone.utc),
        reason=headers.get(REASON_HEADER, "(no reason recorded)"),
        source=f"{headers.get(PARTITION_HEADER, '?')}:{headers.get(OFFSET_HEADER, '?')}",
        key="" if key is None else key.decode("utf-8", "replace"),
    )
