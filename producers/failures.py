"""Delivery failures, kept until someone has been told (see :class:`Failures`)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from resultlog.errors import BrokerUnavailable, DeliveryRefused


@dataclass(slots=True)
class _Failure:
    events: int = 0
    causes: list[str] = field(default_factory=list)
    refused: bool = True  # every one of the events refused by the broker (not retriable)

    def add(self, events: int, cause: str, refused: bool) -> None:
        self.events += events
        self.refused = self.refused and refused
        if cause not in self.causes and len(self.causes) < 5:
            self.causes.append(cause)


class Failures:
    """Events accepted and then not delivered, reported twice, independently.

    Once to the next emitting call (so a worker notices promptly), and once from the
    next ``flush()``/``stop()`` (so a caller that flushes learns about everything lost
    since its previous flush). Events whose caller awaited the acknowledgement
    (``wait=True``) already raised there and are not reported again to later callers.
    """

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self._for_callers = _Failure()
        self._for_flush = _Failure()
        self._lock = threading.Lock()

    def add(self, events: int, unwaited: int, cause: str, refused: bool) -> None:
        """``refused``: the broker answered that it will not take them (DeliveryRefused)."""
        with self._lock:
            self._for_flush.add(events, cause, refused)
            if unwaited:
                self._for_callers.add(unwaited, cause, refused)

    @property
    def pending_for_callers(self) -> bool:
        return self._for_callers.events > 0  # a plain read: the lock is taken only when set

    def raise_for_callers(self) -> None:
        with self._lock:
            failure, self._for_callers = self._for_callers, _Failure()
        if failure.events:
            raise self._error(failure, "earlier ")

    def raise_for_flush(self) -> None:
        with self._lock:
            failure, self._for_flush = self._for_flush, _Failure()
        if failure.events:
            raise self._error(failure, "")

    def _error(self, failure: _Failure, earlier: str) -> BrokerUnavailable:
        kind = DeliveryRefused if failure.refused else BrokerUnavailable
        return kind(
            f"{failure.events} {earlier}event(s) accepted by the emitter were not delivered "
            f"to Kafka topic {self.topic!r}: {'; '.join(failure.causes)}"
        )
