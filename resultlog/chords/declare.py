"""Declaring a chord from worker (or caller) code (docs/chords.md, "Declaring a chord").

The ``ChordDeclared`` record goes through the emitter's own pipeline: the same producer,
buffer, delivery reporting and size limit as task events.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypedDict, Unpack

from resultlog.chords.celeryrecords import CeleryChordRecord
from resultlog.chords.records import ChordDeclared

if TYPE_CHECKING:
    # Types only: resultlog.producers re-exports this module's functions.
    from resultlog.producers.emitter import Emitter
    from resultlog.producers.sync import SyncEmitter


class ChordOptions(TypedDict, total=False):
    """What a declaration says besides the chord's id and size."""

    #: The task to run with the results (resultlog only records it: docs/chords.md).
    callback: str | None
    callback_kwargs: Mapping[str, Any] | None
    #: False (the default): the chord fails at its first failed member; True: only
    #: after every member finished (as Celery does).
    wait_all: bool


async def declare_chord(emitter: Emitter, chord_id: str, size: int, *, wait: bool = False,
                        **options: Unpack[ChordOptions]) -> ChordDeclared:
    """Declare chord ``chord_id`` of ``size`` members (:class:`ChordOptions`); returns
    the declaration sent. ``wait=True`` returns only once Kafka acknowledged it."""
    decl = ChordDeclared.create(chord_id, size, **options)
    await emitter.emit_record(decl.SCHEMA, decl.chord_id, decl.to_record(), decl.timestamp, wait=wait)
    return decl


def declare_chord_sync(emitter: SyncEmitter, chord_id: str, size: int, *, wait: bool = False,
                       **options: Unpack[ChordOptions]) -> ChordDeclared:
    """:func:`declare_chord` for a :class:`SyncEmitter` (any thread, blocking)."""
    decl = ChordDeclared.create(chord_id, size, **options)
    send_chord_record_sync(emitter, decl, wait=wait)
    return decl


def send_chord_record_sync(emitter: SyncEmitter, record: ChordDeclared | CeleryChordRecord, *,
                           wait: bool = False) -> None:
    """Send ``record`` to the events topic, keyed by its chord id, through ``emitter``'s
    pipeline (its codec's size limit applies); ``wait=True`` returns only once Kafka
    acknowledged it."""
    emitter.emit_record(record.SCHEMA, record.chord_id, record.to_record(), record.timestamp, wait=wait)
