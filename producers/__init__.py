"""The worker emitter library: task state changes → Kafka.

``Emitter`` for asyncio code, ``SyncEmitter`` for threaded or forked workers, both with
``track()`` (context manager and decorator); ``ensure_topics`` for whoever needs
resultlog's topics to exist; ``resultlog.producers.celery.install`` hooks Celery's
signals (optional extra ``resultlog[celery]``).
"""

from resultlog.chords.declare import declare_chord, declare_chord_sync
from resultlog.producers.emitter import Emitter
from resultlog.schemas.event import TaskFields
from resultlog.producers.options import EmitterOptions
from resultlog.producers.sync import SyncEmitter
from resultlog.producers.topics import ensure_topics
from resultlog.producers.tracking import AsyncTracker, SyncTracker

__all__ = [
    "AsyncTracker",
    "Emitter",
    "EmitterOptions",
    "SyncEmitter",
    "SyncTracker",
    "TaskFields",
    "declare_chord",
    "declare_chord_sync",
    "ensure_topics",
]
