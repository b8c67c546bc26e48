"""Declaring a chord from worker (or caller) code.

A chord is declared once, with :func:`declare_chord` (asyncio) or
:func:`declare_chord_sync`; its members are then emitted by the workers as ordinary
task events that carry ``chord_id``, ``chord_size`` and ``chord_index``::

    await declare_chord(emitter, chord_id, 3, callback="tasks.sum")
    await emitter.success(task_id, 42, chord_id=chord_id, chord_size=3, chord_index=0)

The declaration is a ``ChordDeclared`` record in the events topic, keyed by the chord
id, sent through the emitter's own pipeline (same producer, same buffer, same
delivery reporting). Declaring before the members is not required: members that
arrive first are counted, and the chord completes once the declaration is seen too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from resultlog.producers.emitter import Emitter
from resultlog.producers.pipeline import Pipeline
from resultlog.producers.sync import SyncEmitter
from resultlog.schemas.chords import ChordDeclared
from resultlog.schemas.codec import Codec


class ChordRecord(Protocol):
    """A record about a chord, keyed by its chord id in the events topic."""

    @property
    def chord_id(self) -> str: ...

    @property
    def timestamp(self) -> int: ...

    def encode(self, codec: Codec) -> bytes: ...


def _declaration(
    pipeline: Pipeline,
    chord_id: str,
    size: int,
    callback: str | None,
    callback_kwargs: Mapping[str, Any] | None,
    wait_all: bool,
) -> tuple[ChordDeclared, bytes, bytes]:
    decl = ChordDeclared.create(chord_id, size, callback=callback,
                                callback_kwargs=callback_kwargs, wait_all=wait_all)
    # Encoded with the pipeline's codec: its size limit applies, as to task events.
    return decl, chord_id.encode(), decl.encode(pipeline.encoder.codec)


async def declare_chord(
    emitter: Emitter,
    chord_id: str,
    size: int,
    *,
    callback: str | None = None,
    callback_kwargs: Mapping[str, Any] | None = None,
    wait_all: bool = False,
    wait: bool = False,
) -> ChordDeclared:
    """Declare chord ``chord_id`` of ``size`` members; returns the declaration sent.

    ``callback`` names the task to run with the results (resultlog only records it:
    see docs/chords.md for running it); ``wait_all=False`` fails the chord at the first
    failed member, ``True`` only after every member finished (as Celery does).
    ``wait=True`` returns only once Kafka acknowledged the declaration.
    """
    if not emitter._pipeline.running:
        await emitter.start()
    pipeline = emitter._pipeline
    pipeline.check()
    decl, key, value = _declaration(pipeline, chord_id, size, callback, callback_kwargs, wait_all)
    # The pipeline's buffer takes encoded records; a task event's encoding is the only
    # step skipped here. (A public Pipeline.accept_encoded would make this tidier.)
    if wait:
        await pipeline._accept_and_wait(key, value, decl.timestamp)
    elif not pipeline._outbox.offer(key, value, decl.timestamp):
        await pipeline._outbox.put(key, value, decl.timestamp, None, pipeline.options.buffer_timeout_s)
    return decl


def declare_chord_sync(
    emitter: SyncEmitter,
    chord_id: str,
    size: int,
    *,
    callback: str | None = None,
    callback_kwargs: Mapping[str, Any] | None = None,
    wait_all: bool = False,
    wait: bool = False,
) -> ChordDeclared:
    """:func:`declare_chord` for a :class:`SyncEmitter` (any thread, blocking)."""
    decl = ChordDeclared.create(chord_id, size, callback=callback,
                                callback_kwargs=callback_kwargs, wait_all=wait_all)
    send_chord_record_sync(emitter, decl, wait=wait)
    return decl


def send_chord_record_sync(emitter: SyncEmitter, record: ChordRecord, *, wait: bool = False) -> None:
    """Send ``record`` to the events topic, keyed by its chord id, through ``emitter``'s
    pipeline (its codec's size limit applies); ``wait=True`` returns only once Kafka
    acknowledged it."""
    pipeline = emitter._current().pipeline
    pipeline.check()
    key, value = record.chord_id.encode(), record.encode(pipeline.encoder.codec)
    outbox, timeout_s = pipeline._outbox, pipeline.options.buffer_timeout_s
    if not wait:
        if not outbox.offer(key, value, record.timestamp):
            outbox.put_blocking(key, value, record.timestamp, None, timeout_s)
        return
    emitter._current().call(pipeline._accept_and_wait(key, value, record.timestamp))
