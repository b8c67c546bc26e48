from __future__ import annotations

import pytest

from resultlog.errors import BrokerUnavailable
from resultlog.producers import Emitter
from resultlog.schemas.event import TaskEvent
from resultlog.settings import Settings

pytestmark = pytest.mark.integration


async def test_an_event_kafka_refuses_is_reported_by_leaving_the_emitter(settings: Settings) -> None:
    """Nothing accepted is dropped silently: stop() (here, leaving `async with`) raises."""
    far_future = TaskEvent.create("t", "SUCCESS", timestamp=4_000_000_000_000)  # Kafka allows 1 h ahead
    with pytest.raises(BrokerUnavailable, match="1 event.*not delivered.*InvalidTimestamp"):
        async with Emitter(settings) as emitter:
            await emitter.emit(far_future)
