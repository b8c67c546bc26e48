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

:class:`~resultlog.producers.sync.SyncEmitter`'s ``store_late`` runs it on that
emitter's event loop, for Celery's worker threads.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from resultlog.errors import BrokerUnavailable, NotYetAcknowledged
from resultlog.schemas.event import TaskEvent

if TYPE_CHECKING:
    from resultlog.producers.emitter import Emitter

log = logging.getLogger("resultlog.producers")


async def store_late(emitter: Emitter, event: TaskEvent, late: NotYetAcknowledged) -> None:
    """Return once ``event`` (emitted with ``wait=True`` and not acknowledged in time:
    ``late``) is stored, or at once for a state before the outcome; on ``emitter``'s
    event loop. Warns every ``RESULTLOG_KAFKA_TIMEOUT_S`` while it waits."""
    if not event.state.ready:
        log.warning("resultlog: Kafka has not acknowledged task %s's %s yet: %s; the task goes "
                    "on, and the state is stored once Kafka answers", event.task_id,
                    event.state.value, late)
        return
    every_s = emitter.settings.kafka_timeout_s
    waited = every_s
    while True:
        log.warning("resultlog: Kafka has not acknowledged task %s's %s after %.0f s; waiting "
                    "for it (it is buffered and sent again until Kafka answers)",
                    event.task_id, event.state.value, waited)
        waited += every_s
        try:
            await late.wait(every_s)
            return
        except TimeoutError:
            continue
        except BrokerUnavailable as exc:
            if not exc.retriable:
                raise  # Kafka refused it: sending it again would be refused again
        # The producer gave up on the event's batch: send it again (the same event id,
        # so the stores keep one).
        try:
            await emitter.emit(event, wait=True)
            return
        except NotYetAcknowledged as again:
            late = again
