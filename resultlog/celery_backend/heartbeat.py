"""A Celery worker's heartbeats as events: the same ``WorkerHeartbeat`` records a
Chicory worker sends, so the workers views show Celery workers too, without Celery's
events (``-E``). When they are sent and what they count: docs/chicory.md, "Workers as
events" (the worker id is Celery's node name; a restart is a new ``started_at``).
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
from typing import Any

from resultlog.producers.heartbeats import send_heartbeat_sync
from resultlog.producers.sync import SyncEmitter
from resultlog.schemas.event import now_ms
from resultlog.schemas.workers import WorkerHeartbeat

log = logging.getLogger("resultlog.celery")

SOURCE = "celery"
TTL_INTERVALS = 3
# How long the last heartbeat may wait for Kafka while the worker shuts down.
_LAST_BEAT_TIMEOUT_S = 5.0


class CeleryHeartbeat:
    """The heartbeats of the worker whose consumer is ``consumer``."""

    def __init__(self, consumer: Any, emitter: SyncEmitter, interval_s: float) -> None:
        self.consumer = consumer
        self.emitter = emitter
        self.interval_s = interval_s
        self.ttl_s = max(1, math.ceil(interval_s * TTL_INTERVALS))
        self.started_at = now_ms()
        self.worker_id = str(consumer.hostname)
        self._tref: Any = None

    def beat(self, *, is_running: bool = True, wait: bool = False) -> WorkerHeartbeat:
        from celery.worker import state  # type: ignore[import-untyped]

        controller = getattr(self.consumer, "controller", None)
        queues = getattr(getattr(self.consumer.app.amqp, "queues", None), "consume_from", None) or {}
        hb = WorkerHeartbeat.create(
            self.worker_id, ttl_s=self.ttl_s, source=SOURCE, hostname=socket.gethostname(),
            pid=os.getpid(), queue=",".join(sorted(queues)),
            concurrency=int(getattr(controller, "concurrency", 0) or 0),
            started_at=self.started_at, tasks_processed=int(state.all_total_count[0]),
            active_tasks=len(state.active_requests), is_running=is_running)
        send_heartbeat_sync(self.emitter, hb, wait=wait)
        return hb

    def _tick(self) -> None:
        try:
            self.beat()
        except Exception as exc:  # noqa: BLE001 -- a missed beat must not stop the worker
            log.warning("resultlog: worker heartbeat not sent: %s", exc)

    def start(self) -> None:
        self._tick()
        self._tref = self.consumer.timer.call_repeatedly(self.interval_s, self._tick)

    def stop(self) -> None:
        if self._tref is not None:
            self._tref.cancel()
            self._tref = None
        try:
            self.beat(is_running=False)
            self.emitter.flush(_LAST_BEAT_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 -- shutting down: say so, do not raise
            log.warning("resultlog: last worker heartbeat not sent: %s", exc)


_lock = threading.Lock()
_installed: set[int] = set()


def install(app: Any, emitter: Any, interval_s: float) -> None:
    """Send heartbeats from ``app``'s worker, if this process becomes one. Idempotent
    per app; ``emitter`` is called for the process's SyncEmitter when the worker is ready."""
    if interval_s <= 0:
        return
    with _lock:
        if id(app) in _installed:
            return
        _installed.add(id(app))
    from celery import signals  # type: ignore[import-untyped]

    running: list[CeleryHeartbeat] = []

    def on_ready(sender: Any = None, **_: Any) -> None:
        if sender is None or getattr(sender, "app", None) is not app:
            return
        heart = CeleryHeartbeat(sender, emitter(), interval_s)
        running.append(heart)
        heart.start()

    def on_shutdown(sender: Any = None, **_: Any) -> None:
        while running:
            running.pop().stop()

    signals.worker_ready.connect(on_ready, weak=False)
    signals.worker_shutdown.connect(on_shutdown, weak=False)
