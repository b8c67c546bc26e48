"""The chord aggregator's state: one in-memory table per partition, kept in a changelog topic.

Each partition of the chords topic (keyed by chord id) has its own table, and each
table its own partition of the compacted changelog topic
``<consumer group>.chord-state-changelog``: a change is the key and its JSON value, a
removal a tombstone. Loading a partition reads its changelog partition from the
beginning to the end offset of that moment. Not a faust table: faust's recovery can
drop records fetched during its seek, and their chords never complete (docs/chords.md,
"How it works").
"""

from __future__ import annotations

import json
from collections.abc import Iterator, MutableMapping
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition  # type: ignore[import-untyped]
from aiokafka.errors import KafkaError  # type: ignore[import-untyped]

from resultlog.errors import BrokerUnavailable
from resultlog.producers.kafka import started
from resultlog.producers.topics import KAFKA_DEFAULT_MAX_MESSAGE_BYTES
from resultlog.connections import kafka_client_args
from resultlog.settings import Settings


def encode_key(key: str) -> bytes:
    return json.dumps(key).encode()


def encode_value(value: Any) -> bytes:
    """A table's value as its changelog record holds it (and the measure of its size)."""
    return json.dumps(value).encode()


class PartitionTable(MutableMapping[str, Any]):
    """One partition's table; remembers its changes, in order, until they are taken."""

    def __init__(self, data: dict[str, Any] | None = None) -> None:
        self.data: dict[str, Any] = data or {}
        self._changes: list[tuple[bytes, bytes | None]] = []

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def __setitem__(self, key: str, value: Any) -> None:
        # Encoded now: the changelog gets the value as it was when it was written.
        self._changes.append((encode_key(key), encode_value(value)))
        self.data[key] = value

    def __delitem__(self, key: str) -> None:
        del self.data[key]
        self._changes.append((encode_key(key), None))

    def __iter__(self) -> Iterator[str]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)

    def take_changes(self) -> list[tuple[bytes, bytes | None]]:
        changes, self._changes = self._changes, []
        return changes


# Beside its value, a changelog record (in a batch of its own when large) holds its key,
# e.g. ``"m:<chord_id>:<index>"`` (an id of up to 255 characters, escaped: at most 3,060
# bytes), its framing and the batch header (61 bytes): well within this.
_RECORD_FRAMING_BYTES = 16 * 1024


def state_record_bytes(settings: Settings) -> int:
    """The largest record the aggregator's table may write to its changelog: the
    changelog topic's ``max.message.bytes`` and its producer's ``max_request_size``.

    Room for any value of :func:`max_value_bytes` and its framing. A value is what the
    fold makes of an event, encoded by :func:`encode_value`; no multiple of the event's
    size bounds it (the standard library's JSON writes a character below U+0020 as a
    6-byte ``\\u00XX``), so the fold fits each member's entry within
    :func:`max_value_bytes` itself (``resultlog/chords/entries.py``). The formula stays:
    a changelog topic keeps the limit it was created with.
    """
    return max(KAFKA_DEFAULT_MAX_MESSAGE_BYTES, 3 * settings.max_event_bytes + _RECORD_FRAMING_BYTES)


def max_value_bytes(settings: Settings) -> int:
    """The largest encoded value (:func:`encode_value`) a table may hold."""
    return state_record_bytes(settings) - _RECORD_FRAMING_BYTES


class ChangelogTables:
    """The tables of the partitions this process owns, loaded from and written to the changelog."""

    def __init__(self, settings: Settings, changelog_topic: str) -> None:
        self.settings = settings
        self.topic = changelog_topic
        self.tables: dict[int, PartitionTable] = {}
        self._pending: dict[int, list[tuple[bytes, bytes | None]]] = {}
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        producer = AIOKafkaProducer(
            **kafka_client_args(self.settings),
            acks="all",
            enable_idempotence=True,  # ordered, and no duplicate on a retried send
            linger_ms=1,
            max_request_size=state_record_bytes(self.settings),
            request_timeout_ms=int(self.settings.kafka_timeout_s * 1000),
        )
        self._producer = await started(producer, self.settings)

    async def close(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def load(self, partitions: set[int]) -> None:
        """Own exactly ``partitions``: each table read afresh from its changelog partition."""
        await self.flush()  # a failed flush's changes first: the tables are read back next
        self.tables = {p: PartitionTable(data) for p, data in (await self._read(partitions)).items()}

    async def flush(self) -> None:
        """Send every table's changes to its changelog partition, in order; wait for the acks.

        Safe to call again after a failure: changes stay pending until acknowledged, and
        sending some twice, in the same order, leaves every key with its last value.
        """
        assert self._producer is not None, "start() first"
        for partition, table in self.tables.items():
            self._pending.setdefault(partition, []).extend(table.take_changes())
        futures = [await self._producer.send(self.topic, value=value, key=key, partition=partition)
                   for partition, changes in self._pending.items() for key, value in changes]
        for future in futures:
            await future
        self._pending.clear()

    async def _read(self, partitions: set[int]) -> dict[int, dict[str, Any]]:
        data: dict[int, dict[str, Any]] = {p: {} for p in partitions}
        if not partitions:
            return data
        consumer = AIOKafkaConsumer(**kafka_client_args(self.settings),
                                    group_id=None, enable_auto_commit=False)
        try:
            await consumer.start()
            tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            end = await consumer.end_offsets(tps)
            remaining = {tp for tp in tps if end[tp] > await consumer.position(tp)}
            while remaining:
                batch = await consumer.getmany(*remaining, timeout_ms=1000)
                for tp, records in batch.items():
                    table = data[tp.partition]
                    for rec in records:
                        if rec.offset >= end[tp]:
                            break
                        key = json.loads(rec.key)
                        if rec.value is None:
                            table.pop(key, None)
                        else:
                            table[key] = json.loads(rec.value)
                remaining = {tp for tp in remaining if await consumer.position(tp) < end[tp]}
        except KafkaError as exc:
            raise BrokerUnavailable(f"reading the chord state changelog {self.topic}: {exc!r}") from exc
        finally:
            await consumer.stop()
        return data
