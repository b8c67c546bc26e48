"""Celery's chord protocol onto the log: what the backend records, so that the chord
aggregator (in the processor) can fire the body. No worker counts anything; nothing
polls; Celery's ``celery.chord_unlock`` task is never sent.

Celery calls its result backend at four points of a chord's life (``celery/canvas.py``
``chord.run`` and ``group._apply_tasks``, ``celery/app/task.py``, ``celery/backends/base.py``):

- :func:`apply_chord`, where the chord is applied, before any header task is sent: a
  ``start`` record, acknowledged before the first header task is sent (applying a
  frozen chord again is a new run of the same group id, and it begins there), and a
  header that holds groups (their results must keep their structure) saved as a group
  (``GroupResult.save``), as Celery's Redis backend does;
- :func:`set_chord_size`, just before the last header task is sent: a ``size`` record,
  acknowledged before the task is sent, so the size is in the log before the last
  member can finish (earlier members may finish before it: the aggregator waits);
- :func:`add_to_chord` (``Task.add_to_chord``, ``Task.replace``): an ``add`` record;
- :func:`on_chord_part_return`, in the process that stored a header task's outcome
  (after storing it): a ``part`` record with the task's id, index, outcome and the
  body's signature (acknowledged, unless the backend's ``ack_ready`` is off).

The records (:class:`~resultlog.chords.celeryrecords.CeleryChordRecord`) are keyed by
the group id in the events topic; the fold forwards them to the chords topic.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

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
    from celery.result import GroupResult  # type: ignore[import-untyped]
    from celery.utils.functional import _regen  # type: ignore[import-untyped]

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
