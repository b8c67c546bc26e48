"""Which undelivered events are reported as refused (retrying cannot help) and which as
Kafka unavailable: producers/failures.py and producers/kafka.refused_by_broker."""

from __future__ import annotations

import pytest
from aiokafka.errors import (  # type: ignore[import-untyped]
    InvalidTimestampError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NotLeaderForPartitionError,
    ProducerClosed,
    TopicAuthorizationFailedError,
)

from resultlog.errors import BrokerUnavailable, DeliveryRefused
from resultlog.producers.failures import Failures
from resultlog.producers.kafka import not_delivered, refused_by_broker


@pytest.mark.parametrize(("exc", "refused"), [
    (MessageSizeTooLargeError(), True),
    (InvalidTimestampError(), True),
    (TopicAuthorizationFailedError(), True),
    (NotLeaderForPartitionError(), False),  # a partition without a leader for too long
    (KafkaTimeoutError(), False),
    (ProducerClosed(), False),  # the emitter stopped under it
    (BrokerUnavailable("cancelled"), False),
    (None, False),
])
def test_only_the_brokers_final_answer_is_a_refusal(exc: BaseException | None, refused: bool) -> None:
    assert refused_by_broker(exc) is refused


@pytest.mark.parametrize(("exc", "kind"), [
    (MessageSizeTooLargeError(), DeliveryRefused),
    (TopicAuthorizationFailedError(), DeliveryRefused),
    (KafkaTimeoutError(), BrokerUnavailable),
    (NotLeaderForPartitionError(), BrokerUnavailable),
])
def test_an_undelivered_write_names_its_topic_and_is_retriable_unless_refused(
        exc: BaseException, kind: type[BrokerUnavailable]) -> None:
    error = not_delivered(exc, "2 record(s) were", "t.chords")
    assert type(error) is kind and error.retriable is (kind is BrokerUnavailable)
    assert str(error).startswith(f"2 record(s) were not delivered to Kafka topic 't.chords': {type(exc).__name__}")


def test_a_report_is_a_refusal_only_if_every_event_in_it_was_refused() -> None:
    failures = Failures("t")
    failures.add(2, 2, "MessageSizeTooLargeError", refused=True)
    with pytest.raises(DeliveryRefused, match="2 earlier event.*MessageSizeTooLarge") as told:
        failures.raise_for_callers()
    assert not told.value.retriable
    failures.add(1, 0, "the emitter stopped before they were acknowledged", refused=False)
    with pytest.raises(BrokerUnavailable, match="3 event") as told_flush:
        failures.raise_for_flush()  # refused and unsent together: the broker may be back
    assert type(told_flush.value) is BrokerUnavailable and told_flush.value.retriable
    failures.raise_for_flush()  # told: nothing more
