from __future__ import annotations

import pytest

from resultlog.errors import DeliveryRefused
from resultlog.producers import Emitter
from resultlog.producers.topics import ensure_topics
from resultlog.schemas.event import TaskEvent, now_ms
from resultlog.settings import Settings

pytestmark = pytest.mark.integration


async def test_an_event_kafka_refuses_is_reported_by_leaving_the_emitter(settings: Settings) -> None:
    """Nothing accepted is dropped silently: stop() (here, leaving `async with`) raises."""
    # An event the emitter accepts and this topic's broker refuses: the emitter refuses
    # a timestamp more than an hour ahead itself (Kafka's default), this topic allows one
    # second.
    await ensure_topics(settings, settings.events_topic,
                        configs={"message.timestamp.after.max.ms": "1000"})
    far_future = TaskEvent.create("t", "SUCCESS", timestamp=now_ms() + 600_000)
    with pytest.raises(DeliveryRefused, match="1 event.*not delivered.*InvalidTimestamp"):
        async with Emitter(settings) as emitter:
            await emitter.emit(far_future)
