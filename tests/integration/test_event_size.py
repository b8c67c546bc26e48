"""Large events end to end: 16 MB results round-trip, oversized outcomes are cut, not lost."""

from __future__ import annotations

import asyncio
import json
import random
import string

import pytest
from aiokafka.admin import AIOKafkaAdminClient  # type: ignore[import-untyped]
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType  # type: ignore[import-untyped]

from resultlog import names
from resultlog.errors import ConfigurationError, EventTooLarge
from resultlog.producers import Emitter, SyncEmitter, declare_chord
from resultlog.producers.fitting import marker
from resultlog.producers.topics import ensure_topics, max_message_bytes
from resultlog.schemas.states import State
from resultlog.settings import Settings
from resultlog.views import ResultBackend
from tests.integration.processes import ProcessorProcess

pytestmark = pytest.mark.integration

MB = 1_000_000


def big_result(size: int) -> list[str]:
    """A JSON value of just under ``size`` bytes, non-ASCII included, that compresses poorly."""
    rng = random.Random(size)
    parts: list[str] = []
    total = 2  # the brackets
    while True:
        part = "".join(rng.choices(string.ascii_letters + string.digits + "é✓", k=1000))
        n = len(part.encode()) + 3  # quotes and comma
        if total + n > size:
            return parts
        parts.append(part)
        total += n


async def topic_limit(settings: Settings, topic: str) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        [response] = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic, {"max.message.bytes": None})])
        [(_code, _msg, _type, _name, entries, *_)] = response.resources
        return int(next(e[1] for e in entries if e[0] == "max.message.bytes"))
    finally:
        await admin.close()


async def test_a_16_mb_result_round_trips_exactly_through_get_and_the_history(settings: Settings) -> None:
    settings = settings.replace(max_event_bytes=17 * 1024 * 1024)
    value = big_result(16 * 1024 * 1024)
    encoded = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
    assert 16 * 1024 * 1024 - 2048 < len(encoded) <= 16 * 1024 * 1024
    async with Emitter(settings) as emitter:  # zstd, the default
        await emitter.started("big-1", task_name="tasks.big")
        await emitter.success("big-1", value, runtime=1.5, wait=True)
        await emitter.success("small-1", 1, wait=True)  # the partition goes on after it
    assert await topic_limit(settings, settings.events_topic) == max_message_bytes(settings)
    with ProcessorProcess(settings) as proc:
        async with ResultBackend(settings) as backend:
            result = backend.AioAsyncResult("big-1")
            got = await result.get(timeout=120)
            assert got == value, proc.output()[-3000:]
            assert await backend.AioAsyncResult("small-1").get(timeout=60) == 1
            [started, success] = await result.history()
            assert (started.state, success.state) == (State.STARTED, State.SUCCESS)
            assert success.result_value() == value


async def test_a_failure_with_a_5_mb_traceback_is_recorded_cut_and_wakes_its_client(settings: Settings) -> None:
    assert settings.max_event_bytes == MB  # the default limit
    traceback = "Traceback (most recent call last):\n" + "  File \"deep.py\", line 1, in f\n" * 170_000
    traceback += "ValueError: the end\n"
    assert len(traceback) > 5 * MB


    def worker() -> None:
        with SyncEmitter(settings) as emitter:
            emitter.started("huge-tb", task_name="tasks.deep")
            emitter.failure("huge-tb", ValueError("the end"), traceback=traceback, wait=True)

    with ProcessorProcess(settings) as proc:
        async with ResultBackend(settings) as backend:
            result = backend.AioAsyncResult("huge-tb")
            waiting = asyncio.ensure_future(result.get(timeout=120))  # the client waits first
            await asyncio.to_thread(worker)
            with pytest.raises(ValueError, match="the end"):
                await waiting
            assert result.state == "FAILURE", proc.output()[-3000:]
            recorded = result.traceback
            assert recorded is not None and marker(len(traceback)) in recorded
            assert recorded.startswith("Traceback (most recent call last):\n")
            assert recorded.endswith("ValueError: the end\n")
            assert len(recorded.encode()) < MB
            last = (await result.history())[-1]
            assert last.state is State.FAILURE and last.traceback == recorded
            assert last.meta[names.TRUNCATED_META_KEY] == f"traceback:{len(traceback)}"


async def test_a_success_over_the_limit_is_refused_at_the_call_naming_the_setting(settings: Settings) -> None:
    async with Emitter(settings) as emitter:
        with pytest.raises(EventTooLarge, match="RESULTLOG_MAX_EVENT_BYTES") as raised:
            await emitter.success("too-big", "x" * (2 * MB))
        assert raised.value.limit == MB and raised.value.size is not None and raised.value.size > 2 * MB
        assert emitter.pending == 0  # nothing was buffered


async def test_an_existing_topic_too_small_for_the_limit_is_a_clear_error_at_start(settings: Settings) -> None:
    await ensure_topics(settings, settings.events_topic)  # created for the 1 MB default
    larger = settings.replace(max_event_bytes=8 * MB)
    with pytest.raises(ConfigurationError, match="max.message.bytes=.*RESULTLOG_MAX_EVENT_BYTES"):
        async with Emitter(larger):
            pass


async def test_a_chord_member_with_a_large_result_completes_its_chord(settings: Settings) -> None:
    # The member's result passes through the chords topic and the aggregator's table
    # (its changelog), each of which must take a record as large as the limit allows.
    settings = settings.replace(max_event_bytes=4 * MB)
    value = big_result(3 * MB)
    with ProcessorProcess(settings) as proc:
        async with Emitter(settings) as emitter:
            await declare_chord(emitter, "big-chord", 3, callback="tasks.join")
            for i in range(3):
                await emitter.success(f"big-chord-{i}", value if i == 1 else i,
                                      chord_id="big-chord", chord_size=3, chord_index=i)
        async with ResultBackend(settings) as backend:
            got = await backend.AioChordResult("big-chord").get(timeout=120)
        assert got == [0, value, 2], proc.output()[-3000:]
