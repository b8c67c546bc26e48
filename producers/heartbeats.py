"""Sending worker heartbeats (:class:`~resultlog.schemas.workers.WorkerHeartbeat`)
through an emitter's own pipeline: same producer, buffer and delivery reporting as the
task events, keyed by the worker id."""

from __future__ import annotations

from resultlog.errors import ValidationError
from resultlog.producers.emitter import Emitter
from resultlog.producers.sync import SyncEmitter
from resultlog.schemas.codec import WORKER_HEARTBEAT
from resultlog.schemas.workers import WorkerHeartbeat


async def send_heartbeat(emitter: Emitter, heartbeat: WorkerHeartbeat, *, wait: bool = False) -> None:
    """Emit ``heartbeat``; ``wait=True`` returns once Kafka acknowledged it."""
    if not isinstance(heartbeat, WorkerHeartbeat):
        raise _not_a_heartbeat(heartbeat)
    await emitter.emit_record(WORKER_HEARTBEAT, heartbeat.worker_id, heartbeat.to_record(),
                              heartbeat.beat_at, wait=wait)


def send_heartbeat_sync(emitter: SyncEmitter, heartbeat: WorkerHeartbeat, *,
                        wait: bool = False) -> None:
    """:func:`send_heartbeat` for a :class:`SyncEmitter` (any thread, blocking)."""
    if not isinstance(heartbeat, WorkerHeartbeat):
        raise _not_a_heartbeat(heartbeat)
    emitter.emit_record(WORKER_HEARTBEAT, heartbeat.worker_id, heartbeat.to_record(),
                        heartbeat.beat_at, wait=wait)


def _not_a_heartbeat(heartbeat: object) -> ValidationError:
    # A ValidationError, as the emitters' emit() refuses what is not a TaskEvent.
    return ValidationError(
        f"expected a WorkerHeartbeat, got {type(heartbeat).__name__}: {heartbeat!r:.60}; build "
        "one with WorkerHeartbeat.create(worker_id, ...); nothing was emitted")
