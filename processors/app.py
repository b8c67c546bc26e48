"""The faust-streaming application that folds the events topic into both views.

The fold is :class:`~resultlog.processors.engine.BatchFoldEngine` (an aiokafka batch
consumer in the group ``settings.consumer_group``, run as a task of this faust app:
docs/processor.md says why not a faust agent); the app also hosts the chord aggregator
(another such consumer, in the group ``<consumer_group>.chords``, with changelog-backed
tables of its own: resultlog/chords/aggregator.py says why not a faust table), the chord hooks'
faust agent (in the group ``<consumer_group>.faust``), the worker's lifecycle and its
signal handling.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import faust

from resultlog import names
from resultlog.background import sent_a_cancellation
from resultlog.chords.aggregator import ChordAggregator
from resultlog.errors import ConfigurationError
from resultlog.processors.deadletter import TopicWriter
from resultlog.processors.engine import BatchFoldEngine
from resultlog.processors.health import HealthServer
from resultlog.processors.metrics import ProcessorMetrics
from resultlog.processors.sink import FoldSink
from resultlog.connections import faust_broker_credentials
from resultlog.settings import Settings

if TYPE_CHECKING:
    from resultlog.chords.fire import BodyFirer

log = logging.getLogger("resultlog.processor")


def faust_settings(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """faust configuration derived from ours (faust's defaults suit a cluster, not us)."""
    conf: dict[str, Any] = dict(
        # The fold's aiokafka consumer holds settings.consumer_group, and faust's
        # partition assignor (needed for tables) cannot share a group with it.
        id=names.faust_group(settings.consumer_group),
        broker=[f"kafka://{hp.strip()}" for hp in settings.kafka_bootstrap_servers.split(",")],
        # security.protocol, SASL and TLS for every client faust makes.
        broker_credentials=faust_broker_credentials(settings),
        web_enabled=False,
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication_factor,
        table_standby_replicas=0,
        store="memory://",
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=0.5,
        # A SIGKILLed processor's place in faust's group frees only when its session
        # expires: faust's 60 s default kept a restart's chord work waiting a minute.
        broker_session_timeout=10.0,
        stream_buffer_maxsize=16_384,
        producer_acks=-1,
        datadir=names.faust_data_dir(settings.dev_dir, settings.consumer_group),
    )
    conf.update(overrides)
    return conf


class Processor:
    """Builds the faust app around one :class:`FoldSink`; ``app`` is a plain faust app."""

    def __init__(self, settings: Settings, *, firer: BodyFirer | None = None,
                 **faust_overrides: Any) -> None:
        """``firer``: fires Celery chords' bodies (``resultlog process --celery-app``)."""
        self.settings = settings
        # The engine re-reads what an asynchronous history commit lost in a PostgreSQL
        # crash (processors/engine.py), so the fold does not wait for each fsync. Chord
        # declarations and members' outcomes go on to the chord aggregator's topic.
        self.sink = FoldSink(settings, consumer_group=settings.consumer_group,
                             durable_history=False,
                             chord_forwarder=TopicWriter(settings, settings.chords_topic))
        conf = faust_settings(settings, **faust_overrides)
        # faust makes only the last directory of datadir itself.
        Path(conf["datadir"]).mkdir(parents=True, exist_ok=True)
        self.app = faust.App(**conf)
        self.metrics = ProcessorMetrics(lambda: self.engine.status(), settings.ready_max_lag)
        self.engine = BatchFoldEngine(settings, self.sink, self.metrics)
        self.app.task(self._run_engine)
        if settings.metrics_port:
            self.app.task(self._serve_health)
        self.chords = ChordAggregator(settings, self.app, self.metrics, firer=firer)

    async def _serve_health(self) -> None:
        server = HealthServer(self.settings, self.metrics, self.engine.status)
        try:
            await server.start()
        except ConfigurationError as exc:
            # Asked for metrics and cannot serve them: say so and stop, rather than run
            # unwatched.
            log.critical("%s; stopping the worker", exc)
            await self.app.crash(exc)
            return
        try:
            await asyncio.Event().wait()  # serve until the worker stops (cancels this task)
        finally:
            await server.close()

    async def _run_engine(self) -> None:
        try:
            await self.engine.run()
        except asyncio.CancelledError as exc:
            if sent_a_cancellation():
                raise  # the worker is stopping and cancelled this task
            # One this task was never sent (resultlog.background.sent_a_cancellation):
            # its consumer, stopped after the fold failed, raised it in place of the
            # failure. Unless it stops the worker, the processor runs on folding nothing.
            log.critical("the fold engine stopped: %r; stopping the worker", exc, exc_info=True)
            await self.app.crash(RuntimeError("the fold engine stopped on a cancellation it was not sent"))
        except Exception as exc:
            # A fold that stopped must stop the worker too: a live-looking processor
            # that folds nothing is the worst outcome. The supervisor restarts it.
            log.critical("the fold engine failed: %r; stopping the worker", exc, exc_info=True)
            await self.app.crash(exc)
