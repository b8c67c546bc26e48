"""A stored state Kafka has not acknowledged in time, for the task queues' backends.

A waiting emit raises :class:`~resultlog.errors.NotYetAcknowledged` after
``RESULTLOG_KAFKA_TIMEOUT_S`` (a broker restarting, an outage), with the event still
buffered and sent again. A task queue must not hear of a failure then: Celery records
the task FAILURE and fails its chord, Chicory moves the task to its dead letters or
runs it again, while the task's own outcome is stored after (fault audits, 1 Dec
2026: every broker restart did so to the tasks storing at the time). So a state before
the outcome is left to the buffer, with a warning, and the task goes on; an outcome
waits until Kafka has it, as Celery's own backends retry with
``result_backend_always_retry``; a batch the producer gave up on is sent again (the
same event id: the stores keep one). Only an event Kafka refuses fails the store.

The two functions are the same steps, for a blocking emitter (Celery's worker threads)
and for an emitter on an event loop (Chicory's).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from resultlog.errors import BrokerUnavailable, NotYetAcknowledged
from resultlog.schemas.event import TaskEvent

if TYPE_CHECKING:
    from resultlog.producers.emitter import Emitter
    from resultlog.producers.sync import SyncEmitter

log = logging.getLogger("resultlog.producers")


def _left_to_buffer(event: TaskEvent, late: NotYetAcknowledged) -> bool:
    if event.state.ready:
        return False
    log.warning("resultlog: Kafka has not acknowledged task %s's %s yet: %s; the task goes "
                "on, and the state is stored once Kafka answers", event.task_id,
                event.state.value, late)
    return True


def _waiting(event: TaskEvent, waited_s: float) -> None:
    log.warning("resultlog: Kafka has not acknowledged task %s's %s after %.0f s; waiting for "
                "it (it is buffered and sent again until Kafka answers)", event.task_id,
                event.state.value, waited_s)


def _check_resend(exc: BrokerUnavailable) -> None:
    """The producer gave up on the event's batch: it is sent again, unless Kafka refused it."""
    if not exc.retriable:
        raise exc


def store_late_blocking(emitter: SyncEmitter, event: TaskEvent, late: NotYetAcknowledged,
                        every_s: float) -> None:
    """Return once ``event`` (emitted and not acknowledged: ``late``) is stored, or at
    once for a state before the outcome."""
    if _left_to_buffer(event, late):
        return
    waited = every_s
    while True:
        _waiting(event, waited)
        waited += every_s
        try:
            late.wait(every_s)
            return
        except TimeoutError:
            continue
        except BrokerUnavailable as exc:
            _check_resend(exc)
        try:
            emitter.emit(event, wait=True)
            return
        except NotYetAcknowledged as again:
            late = again


async def store_late(emitter: Emitter, event: TaskEvent, late: NotYetAcknowledged,
                     every_s: float) -> None:
    """:func:`store_late_blocking`, on the emitter's event loop."""
    if _left_to_buffer(event, late):
        return
    waited = every_s
    while True:
        _waiting(event, waited)
        waited += every_s
        try:
            await late.wait_async(every_s)
            return
        except TimeoutError:
            continue
        except BrokerUnavailable as exc:
            _check_resend(exc)
        try:
            await emitter.emit(event, wait=True)
            return
        except NotYetAcknowledged as again:
            late = again
