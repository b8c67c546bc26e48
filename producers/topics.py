"""Creating resultlog's topics when they are missing (docs/emitter.md, "Topics").

Idempotent and safe to race; an existing topic is never altered, and one whose
``max.message.bytes`` is too small for ``max_event_bytes`` is an error at once, rather
than a refused FAILURE later that leaves its client waiting.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition  # type: ignore[import-untyped]
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped]
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType  # type: ignore[import-untyped]
from aiokafka.errors import KafkaError, NoError, TopicAlreadyExistsError, for_code  # type: ignore[import-untyped]

from resultlog.errors import BrokerUnavailable, ConfigurationError
from resultlog.connections import kafka_client_args
from resultlog.producers.kafka import start_failure, started
from resultlog.settings import Settings

# Kafka's own default for message.max.bytes (and so for a topic's max.message.bytes).
KAFKA_DEFAULT_MAX_MESSAGE_BYTES = 1_048_588
# Per record batch: its header (61 bytes), one record's framing and key (a task id of
# up to 255 characters, 1,020 bytes), with room to spare.
_BATCH_FRAMING_BYTES = 16 * 1024


def event_batch_bytes(settings: Settings) -> int:
    """The largest record batch an event of ``settings.max_event_bytes`` can make.

    Kafka checks each record batch, as sent (compressed), against a topic's
    ``max.message.bytes``. An event at the limit travels in a batch of its own;
    compressing incompressible bytes makes them slightly larger (zstd and lz4 by under
    0.5 %, gzip by far less), hence the 1/128.
    """
    n = settings.max_event_bytes
    return n + n // 128 + _BATCH_FRAMING_BYTES


def max_message_bytes(settings: Settings) -> int:
    """The ``max.message.bytes`` resultlog creates its topics with.

    :func:`event_batch_bytes`, never below Kafka's default, which the emitter's batches
    of small events may fill (``max_batch_bytes``, 512 KiB by default).
    """
    return max(KAFKA_DEFAULT_MAX_MESSAGE_BYTES, event_batch_bytes(settings))


# Broker answers that mean the request itself is wrong, so retrying cannot help.
_CONFIG_ERRORS: dict[str, tuple[str, ...]] = {
    "InvalidPartitionsError": ("topic_partitions",),
    "InvalidReplicationFactorError": ("topic_replication_factor",),
    "InvalidConfigurationError": ("topic_retention_ms", "topic_min_insync_replicas", "max_event_bytes"),
    "InvalidTopicError": ("events_topic",),
    "PolicyViolationError": ("topic_partitions",),
}


async def ensure_topics(
    settings: Settings,
    *topics: str,
    partitions: int | None = None,
    replication_factor: int | None = None,
    retention_ms: int | None = None,
    configs: Mapping[str, str] | None = None,
) -> list[str]:
    """Create each of ``topics`` that does not exist; return the ones this call created.

    What is left unset comes from the settings, ``max.message.bytes`` from
    :func:`max_message_bytes`; ``configs`` adds other topic configs (e.g.
    ``cleanup.policy``). Waits until every partition has a leader that answers for it,
    so a producer can use it at once. Raises :class:`BrokerUnavailable` if Kafka cannot
    be reached within ``kafka_timeout_s``, :class:`ConfigurationError` for a
    configuration the broker refuses or an existing topic too small for
    ``max_event_bytes``.
    """
    if not topics:
        return []
    topic_configs = {
        "retention.ms": str(settings.topic_retention_ms if retention_ms is None else retention_ms),
        "max.message.bytes": str(max_message_bytes(settings)),
    }
    if settings.topic_min_insync_replicas:
        topic_configs["min.insync.replicas"] = str(settings.topic_min_insync_replicas)
    topic_configs.update(configs or {})
    wanted = [
        NewTopic(
            name=topic,
            num_partitions=settings.topic_partitions if partitions is None else partitions,
            replication_factor=settings.topic_replication_factor if replication_factor is None else replication_factor,
            topic_configs=topic_configs,
        )
        for topic in dict.fromkeys(topics)
    ]
    timeout_ms = int(settings.kafka_timeout_s * 1000)
    admin = AIOKafkaAdminClient(
        **kafka_client_args(settings),
        client_id="resultlog-admin",
        request_timeout_ms=timeout_ms,
    )
    try:
        async with asyncio.timeout(settings.kafka_timeout_s):
            await admin.start()
            # Only create what is missing: an existing topic then needs no CREATE right.
            existing = set(await admin.list_topics())
            missing = [t for t in wanted if t.name not in existing]
            created = await _create(admin, missing, timeout_ms) if missing else []
            await _wait_for_leaders(admin, [t.name for t in wanted])
            await _wait_until_leading(settings, {t.name: t.num_partitions for t in missing
                                                 if t.name in created})
            await _check_record_size(admin, settings, [t.name for t in wanted if t.name not in created])
    except (KafkaError, OSError, TimeoutError) as exc:
        raise await start_failure(settings, exc, "create topics on") from exc
    finally:
        await admin.close()
    return created


async def _create(admin: AIOKafkaAdminClient, topics: list[NewTopic], timeout_ms: int) -> list[str]:
    response = await admin.create_topics(topics, timeout_ms=timeout_ms)
    created = []
    for entry in response.topic_errors:
        name, code = entry[0], entry[1]
        message = entry[2] if len(entry) > 2 else None
        error = for_code(code)
        if error is NoError:
            created.append(name)
            continue
        if error is TopicAlreadyExistsError:
            continue  # someone else created it between our listing and our request
        refused = f"Kafka refused to create topic {name!r}: {error.__name__}"
        if message:
            refused += f" ({message})"
        if error.__name__ in _CONFIG_ERRORS:
            settings_named = " or ".join(f"RESULTLOG_{n.upper()}" for n in _CONFIG_ERRORS[error.__name__])
            raise ConfigurationError(f"{refused}; check {settings_named}")
        raise BrokerUnavailable(refused)
    return created


async def _check_record_size(admin: AIOKafkaAdminClient, settings: Settings, names: list[str]) -> None:
    """ConfigurationError if a topic of ``names`` takes smaller records than resultlog needs."""
    if not names:
        return
    needed = event_batch_bytes(settings)
    resources = [ConfigResource(ConfigResourceType.TOPIC, name, {"max.message.bytes": None}) for name in names]
    for response in await admin.describe_configs(resources):
        for error_code, _message, _type, name, entries, *_ in response.resources:
            if error_code != 0:
                continue  # not ours to judge (e.g. no DESCRIBE_CONFIGS right)
            for entry in entries:
                if entry[0] == "max.message.bytes" and int(entry[1]) < needed:
                    raise ConfigurationError(
                        f"Kafka topic {name!r} takes records of at most {int(entry[1])} bytes "
                        f"(max.message.bytes), and events of up to RESULTLOG_MAX_EVENT_BYTES="
                        f"{settings.max_event_bytes} need {needed}: raise the topic's limit "
                        f"(kafka-configs.sh --alter --entity-type topics --entity-name {name} "
                        f"--add-config max.message.bytes={needed}) or lower RESULTLOG_MAX_EVENT_BYTES"
                    )


async def _wait_for_leaders(admin: AIOKafkaAdminClient, names: list[str]) -> None:
    """Poll metadata until every partition of ``names`` has a leader (the caller's timeout bounds it)."""
    while True:
        described: list[dict[str, Any]] = await admin.describe_topics(names)
        ready = {
            t["topic"]
            for t in described
            if t.get("error_code", 0) == 0
            and t["partitions"]
            and all(p.get("leader", -1) >= 0 for p in t["partitions"])
        }
        if ready >= set(names):
            return
        await asyncio.sleep(0.05)


# How long to wait between asking a new partition's leader again (aiokafka's default,
# 100 ms, is most of the wait it would cut short).
_LEADING_BACKOFF_MS = 10


async def _wait_until_leading(settings: Settings, partitions: Mapping[str, int]) -> None:
    """Ask each partition of the topics just created for its end offset until its leader
    answers (the caller's timeout bounds it).

    The metadata names a new partition's leader a moment before that broker has taken
    it over; a produce request in between is refused ("not leader") and retried by
    aiokafka after its backoff, with a warning. A list-offsets request passes the same
    check on the broker, and aiokafka's consumer retries it quietly.
    """
    if not partitions:
        return
    consumer = await started(
        AIOKafkaConsumer(**kafka_client_args(settings), client_id="resultlog-admin",
                         retry_backoff_ms=_LEADING_BACKOFF_MS,
                         request_timeout_ms=int(settings.kafka_timeout_s * 1000)),
        settings, "create topics on")
    try:
        await consumer.end_offsets([TopicPartition(name, p) for name, count in partitions.items()
                                    for p in range(count)])
    finally:
        await consumer.stop()
