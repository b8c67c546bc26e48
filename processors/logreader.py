"""Read a bounded slice of the events topic, outside any consumer group.

Replay and verify read with manually assigned partitions and no group membership, so
they never disturb the live processor's group. The slice's end is fixed when reading
starts (the end offsets at that moment), which makes progress and ETA meaningful.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition  # type: ignore[import-untyped]

from resultlog.errors import ValidationError
from resultlog.schemas.states import LATEST_DATETIME_MS
from resultlog.producers.kafka import started
from resultlog.processors.sink import Record
from resultlog.connections import kafka_client_args
from resultlog.settings import Settings


def check_timestamp_ms(ms: int, what: str) -> int:
    """``ms`` if Kafka can look it up; a ValidationError naming ``what`` otherwise.

    Checked before a replay empties anything: Kafka itself refuses a time before the
    epoch only when asked, and one beyond a 64-bit count fails in the client's encoder."""
    if ms < 0:
        raise ValidationError(f"{what}: before the epoch (1970-01-01T00:00:00Z), where Kafka's "
                              "record times start; give a later time")
    if ms > LATEST_DATETIME_MS:  # well within Kafka's own limit (a signed 64-bit count)
        raise ValidationError(f"{what}: after 9999-12-31T23:59:59.999Z, the latest time a start "
                              "point can name; give an earlier time")
    return ms


@dataclass(frozen=True, slots=True)
class Slice:
    """Per partition: [start, end) offsets."""

    topic: str
    start: dict[int, int]
    end: dict[int, int]

    @property
    def total(self) -> int:
        return sum(max(0, self.end[p] - self.start.get(p, 0)) for p in self.end)


class LogReader:
    def __init__(self, settings: Settings, topic: str | None = None) -> None:
        self.settings = settings
        self.topic = topic or settings.events_topic
        self._consumer: AIOKafkaConsumer | None = None

    async def __aenter__(self) -> LogReader:
        consumer = AIOKafkaConsumer(
            **kafka_client_args(self.settings),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=8 * 1024 * 1024,
            fetch_max_bytes=64 * 1024 * 1024,
            request_timeout_ms=int(max(self.settings.kafka_timeout_s, 5) * 1000) + 30_000,
        )
        self._consumer = await started(consumer, self.settings)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    @property
    def consumer(self) -> AIOKafkaConsumer:
        assert self._consumer is not None, "use `async with LogReader(...)`"
        return self._consumer

    async def partitions(self) -> list[TopicPartition]:
        # consumer.topics() reads metadata into a cluster object of its own; ask for
        # that object, which knows the partitions too.
        cluster = await self.consumer._client.fetch_all_metadata()
        ids = cluster.partitions_for_topic(self.topic)
        if not ids:
            raise ValidationError(
                f"topic {self.topic!r} does not exist on {self.settings.kafka_bootstrap_servers} "
                "(RESULTLOG_EVENTS_TOPIC)"
            )
        return [TopicPartition(self.topic, p) for p in sorted(ids)]

    async def plan(
        self,
        *,
        from_timestamp_ms: int | None = None,
        from_offsets: Mapping[int, int] | None = None,
    ) -> Slice:
        if from_timestamp_ms is not None:
            check_timestamp_ms(from_timestamp_ms, f"start time {from_timestamp_ms} (ms since the epoch)")
        tps = await self.partitions()
        end = {tp.partition: o for tp, o in (await self.consumer.end_offsets(tps)).items()}
        begin = {tp.partition: o for tp, o in (await self.consumer.beginning_offsets(tps)).items()}
        start = dict(begin)
        if from_timestamp_ms is not None:
            found = await self.consumer.offsets_for_times({tp: from_timestamp_ms for tp in tps})
            for tp, hit in found.items():
                start[tp.partition] = end[tp.partition] if hit is None else hit.offset
        if from_offsets:
            for p, o in from_offsets.items():
                if p not in end:
                    raise ValidationError(f"partition {p} is not in topic {self.topic} (partitions: {sorted(end)})")
                if o < 0:
                    raise ValidationError(f"offset {o} of partition {p} is negative; offsets start at 0")
                # Past the end is refused, not taken as "nothing to read": it is a typo or
                # another topic's offset, and a --fresh replay would lose that partition.
                # Before the beginning is taken as the beginning (retention removed the rest).
                if o > end[p]:
                    raise ValidationError(
                        f"offset {o} of partition {p} is past the end of topic {self.topic} "
                        f"(the partition ends at offset {end[p]}); give an offset up to {end[p]}"
                    )
                start[p] = max(begin[p], o)
        return Slice(self.topic, start, end)

    async def read(self, slice_: Slice, max_records: int = 5000) -> AsyncIterator[list[Record]]:
        """Batches of records in the slice; each partition stops at its end offset."""
        todo = {p for p in slice_.end if slice_.start.get(p, 0) < slice_.end[p]}
        if not todo:
            return
        tps = [TopicPartition(self.topic, p) for p in sorted(todo)]
        self.consumer.assign(tps)
        for tp in tps:
            self.consumer.seek(tp, slice_.start[tp.partition])
        while todo:
            fetched = await self.consumer.getmany(*[TopicPartition(self.topic, p) for p in todo],
                                                  timeout_ms=1000, max_records=max_records)
            batch: list[Record] = []
            for tp, messages in fetched.items():
                end = slice_.end[tp.partition]
                if messages and messages[-1].offset >= end:
                    messages = [m for m in messages if m.offset < end]
                batch.extend(messages)
                if await self.consumer.position(tp) >= end:
                    todo.discard(tp.partition)
                    self.consumer.pause(tp)
            if batch:
                yield batch
