"""Celery's chord protocol onto the log: what the backend records, so that the chord
aggregator (in the processor) can fire the body. No worker counts anything; nothing
polls; Celery's ``celery.chord_unlock`` task is never sent.

One function per call Celery makes (the protocol and its records:
:mod:`resultlog.chords.celeryrecords`): :func:`apply_chord` (a ``start`` record, and a
header holding groups saved as a group, as Celery's Redis backend does),
:func:`set_chord_size`, :func:`add_to_chord` and :func:`on_chord_part_return`. The
``start`` and ``size`` records are acknowledged before the next header task is sent, so
a new run begins, and the size is known, in the log before a member can finish; a
``part`` record is acknowledged unless the backend's ``ack_ready`` is off. The records
are keyed by the group id in the events topic; the fold forwards them to the chords topic.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from celery.result import GroupResult  # type: ignore[import-untyped]
from celery.utils.functional import _regen  # type: ignore[import-untyped]
from kombu.exceptions import EncodeError

from resultlog.celery_backend.meta import to_plain
from resultlog.chords.declare import send_chord_record_sync
from resultlog.chords.celeryrecords import CeleryChordRecord
from resultlog.schemas.event import ExceptionInfo
from resultlog.schemas.states import State

if TYPE_CHECKING:
    from resultlog.celery_backend.backend import ResultlogBackend


def apply_chord(backend: ResultlogBackend, header_result_args: Any, body: Any, **kwargs: Any) -> None:
    """Begin a run; save a header holding groups. The processor fires the body, not a task."""
    backend.ensure_chords_allowed()
    send_chord_record_sync(backend.emitter(), CeleryChordRecord.started(header_result_args[0]), wait=True)
    if isinstance(header_result_args[1], _regen):
        return  # a lazy header: Celery's Redis backend does not look into it either
    header_result = backend.app.GroupResult(*header_result_args)
    if any(isinstance(r, GroupResult) for r in header_result.results):
        backend.save_group(header_result.id, header_result)


def set_chord_size(backend: ResultlogBackend, group_id: str, chord_size: int) -> None:
    send_chord_record_sync(backend.emitter(), CeleryChordRecord.sized(group_id, chord_size), wait=True)


def add_to_chord(backend: ResultlogBackend, group_id: str, result: Any) -> None:
    send_chord_record_sync(backend.emitter(), CeleryChordRecord.added(group_id), wait=True)


def on_chord_part_return(backend: ResultlogBackend, request: Any, state: str, result: Any) -> None:
    task_id, group_id = getattr(request, "id", None), getattr(request, "group", None)
    if not task_id or not group_id:
        return
    index = getattr(request, "group_index", None)
    body = getattr(request, "chord", None)
    kind = State.SUCCESS if state == State.SUCCESS.value else (
        State.REVOKED if state == State.REVOKED.value else State.FAILURE)
    value = exc = None
    if kind is State.SUCCESS:
        try:
            value = json.dumps(to_plain(result), separators=(",", ":"), ensure_ascii=False)
        except EncodeError as refused:
            kind, exc = State.FAILURE, ExceptionInfo.from_exception(refused)
    elif isinstance(result, BaseException):
        exc = ExceptionInfo.from_exception(result)
    elif result is not None:
        exc = ExceptionInfo("Exception", "builtins", str(result))
    record = CeleryChordRecord.part(
        group_id, task_id, index if isinstance(index, int) else None, kind, result=value,
        exception=exc, body=None if body is None else json.dumps(to_plain(dict(body))))
    config = backend.config
    send_chord_record_sync(backend.emitter(), record,
                           wait=config.ack_ready or config.read_your_writes)
