"""``ResultlogBackend``: a Celery result backend whose writes are events and whose reads
come from the Redis view (docs/celery.md).

It is an adapter, never a second store: ``store_result`` hands the state to the
process's :class:`~resultlog.producers.SyncEmitter`; ``get_task_meta`` reads the
view through :class:`~resultlog.views.ResultBackend`; waiting is push-based through
Celery's ``AsyncBackendMixin`` and :class:`~.consumer.ViewResultConsumer`.

One emitter and one reader per process and configuration, whatever number of Celery
backend objects (Celery makes one per thread): both are fork-safe, so a prefork pool
child re-creates its own on first use.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator
from typing import Any

from celery.app.task import Context  # type: ignore[import-untyped]
from celery.backends.asynchronous import AsyncBackendMixin  # type: ignore[import-untyped]
from celery.backends.base import Backend  # type: ignore[import-untyped]
from celery.result import result_from_tuple  # type: ignore[import-untyped]
from celery.states import PROPAGATE_STATES  # type: ignore[import-untyped]
from celery._state import task_join_will_block  # type: ignore[import-untyped]
from kombu.exceptions import EncodeError

from resultlog.celery_backend import chords
from resultlog.celery_backend.chains import unreached_group_members
from resultlog.celery_backend.config import CONF_KEY, BackendConfig, check_serializer
from resultlog.celery_backend import heartbeat
from resultlog.celery_backend.consumer import ViewResultConsumer
from resultlog import names
from resultlog.celery_backend.meta import (
    date_done,
    event_state,
    exception_meta,
    request_meta,
    progress,
    saved_group,
    task_meta,
    to_plain,
)
from resultlog.errors import ConfigurationError, EventTooLarge, NotYetAcknowledged, ResultNotSerializable
from resultlog.producers.celery import celery_result_ttls, request_fields
from resultlog.producers.sync import SyncEmitter
from resultlog.schemas.event import TaskEvent, TaskFields, validate_task_ids
from resultlog.schemas.fold import TaskView
from resultlog.schemas.states import State
from resultlog.settings import Settings
from resultlog.timeouts import checked_timeout
from resultlog.views.backend import ResultBackend
from resultlog.views.exceptions import ExceptionRebuilder

_shared_lock = threading.Lock()
# Kept across a fork on purpose: the emitter and the reader notice the new process
# themselves and re-create their connections and threads there.
_emitters: dict[tuple[Settings, bool], SyncEmitter] = {}
_readers: dict[tuple[Settings, tuple[str, ...]], ResultBackend] = {}


def _after_fork_in_child() -> None:
    # A lock another thread held at fork time would stay held for ever in the child.
    global _shared_lock
    _shared_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _emitter(settings: Settings, read_your_writes: bool) -> SyncEmitter:
    with _shared_lock:
        emitter = _emitters.get((settings, read_your_writes))
        if emitter is None:
            emitter = _emitters[settings, read_your_writes] = SyncEmitter(
                settings, read_your_writes=read_your_writes)
        return emitter


def _reader(settings: Settings, import_modules: tuple[str, ...]) -> ResultBackend:
    with _shared_lock:
        reader = _readers.get((settings, import_modules))
        if reader is None:
            reader = _readers[(settings, import_modules)] = ResultBackend(
                settings, import_modules=import_modules)
        return reader


class ResultlogBackend(Backend, AsyncBackendMixin):  # type: ignore[misc]
    """Celery's result backend on resultlog (scheme ``resultlog://``)."""

    supports_native_join = True
    # Results expire with the view: result_expires (result_failure_expires for a
    # FAILURE) after the event's timestamp, carried by the event, so whoever folds it
    # (the processor, the storing process, a replay) sets the same expiry.
    supports_autoexpire = True
    persistent = True
    #: result_failure_expires is applied to FAILURE results, as by Celery's Redis backend.
    supports_failure_expires = True

    def __init__(self, app: Any, url: str | None = None, **kwargs: Any) -> None:
        # Before Celery's own set-up, which fails with a bare KeyError on a serializer
        # kombu does not know.
        check_serializer(kwargs.get("serializer") or app.conf.result_serializer)
        super().__init__(app, url=url, **kwargs)
        if self.compression:
            raise ConfigurationError(
                f"result_compression {self.compression!r} is not supported by the resultlog "
                "backend: events are compressed on the wire by Kafka (zstd). Unset it"
            )
        self.config = BackendConfig.load(url, app.conf.get(CONF_KEY))
        # Celery's result expiry, carried by each event (docs/celery.md, "Expiry"): the
        # log, not a setting of the processor, then says how long the view keeps it.
        self.result_ttl_ms, self.failure_ttl_ms = celery_result_ttls(
            self.expires, app.conf.get("result_failure_expires"))
        # Celery calls a task's exception class to rebuild it; so does this backend, for
        # the classes resultlog's rules let it find (docs/celery.md, "Exceptions").
        self.rebuilder = ExceptionRebuilder(self.config.import_modules, call_class=True)
        self.result_consumer = ViewResultConsumer(
            self, self.app, self.accept, self._pending_results, self._pending_messages)
        # Heartbeats from this app's worker, should this process become one.
        settings, fold = self.config.settings, self.config.read_your_writes
        heartbeat.install(app, lambda: _emitter(settings, fold), self.config.worker_heartbeat_s)

    # --- the process's shared emitter and reader -----------------------------------

    def emitter(self) -> SyncEmitter:
        """The process's emitter for these settings; with ``read_your_writes`` it folds
        what Kafka acknowledged into the view before a waiting emit returns."""
        return _emitter(self.config.settings, self.config.read_your_writes)

    def reader(self) -> ResultBackend:
        return _reader(self.config.settings, self.config.import_modules)

    # --- writes ----------------------------------------------------------------------

    def store_result(self, task_id: str, result: Any, state: str, traceback: str | None = None,
                     request: Any = None, **kwargs: Any) -> Any:
        """Emit the state as an event from this process. With ``read_your_writes`` (the
        default) wait for Kafka's acknowledgement and the emitter's fold of the event
        into the view, so what was stored is readable as soon as this returns; else a
        ready state still waits for the acknowledgement unless ``ack_ready`` is off."""
        attempt, fields = self._request_fields(task_id, request)
        kind, keep_state = event_state(state)
        if kind.ready and getattr(request, "id", None) == task_id:
            meta = request_meta(self.current_task_children(request), request)
            if meta:
                fields["meta"] = meta
        emitter = self.emitter()
        fields.setdefault("worker", emitter.worker)
        fields["result_ttl"] = self.failure_ttl_ms if state == "FAILURE" else self.result_ttl_ms
        try:
            if kind is State.SUCCESS:
                # prepare_value: a result that is itself a result (a GroupResult a task
                # returned) is stored as its tuple, as Celery's backends store it.
                event = TaskEvent.create(task_id, kind, attempt=attempt,
                                         result=to_plain(self.prepare_value(result)), **fields)
            elif keep_state:
                event = TaskEvent.create(task_id, kind, attempt=attempt,
                                         result=progress(state, result), **fields)
            else:
                exc = result if isinstance(result, BaseException) else RuntimeError(str(result))
                kept = exception_meta(exc)
                if kept:
                    fields["meta"] = {**(fields.get("meta") or {}), **kept}
                event = TaskEvent.create(task_id, kind, attempt=attempt,
                                         exc=exc, traceback=traceback, **fields)
            wait = self.config.read_your_writes or (self.config.ack_ready and kind.ready)
            try:
                emitter.emit(event, wait=wait)
            except NotYetAcknowledged as late:
                # Celery must not hear of a failure for an event that will be stored.
                emitter.store_late(event, late)
        except (ResultNotSerializable, EventTooLarge) as refused:
            # Only a SUCCESS or a progress report can be refused (an outcome is cut to
            # fit): Celery's trace records an EncodeError as the task's FAILURE, and the
            # client's get() raises it, as with Celery's own backends.
            raise EncodeError(
                f"the {state} result of task {task_id} cannot be stored: {refused}") from refused
        return result

    def mark_as_failure(self, task_id: str, exc: Any, traceback: str | None = None,
                        request: Any = None, store_result: bool = True,
                        call_errbacks: bool = True, state: str = "FAILURE") -> None:
        """Celery's, and then the failure stored for the members of groups chained
        after the failed task, which Celery leaves waiting (see celery_backend/chains.py)."""
        super().mark_as_failure(task_id, exc, traceback=traceback, request=request,
                                store_result=store_result, call_errbacks=call_errbacks, state=state)
        if not store_result or request is None or state not in PROPAGATE_STATES:
            return
        for member in unreached_group_members(getattr(request, "chain", None)):
            context = Context(member)
            context.update(context.options)
            context.id = context.options["task_id"]
            context.group = context.options.get("group_id")
            self.store_result(context.id, exc, state, traceback=traceback, request=context)

    def _request_fields(self, task_id: str, request: Any) -> tuple[int, TaskFields]:
        if request is None:
            return 0, TaskFields()
        request_id, attempt, fields = request_fields(request)
        if request_id != task_id:
            # Celery marks other tasks with this request (a failed chain's links).
            return 0, TaskFields()
        for name in ("args", "kwargs"):
            value = fields.get(name)
            if value is not None:
                try:
                    fields[name] = to_plain(value)
                except EncodeError:
                    del fields[name]  # type: ignore[misc]
        return attempt, fields

    def forget(self, task_id: str) -> None:
        super().forget(task_id)
        self.result_consumer.cancel_for(task_id)

    def _forget(self, task_id: str) -> None:
        """A FORGOTTEN event, acknowledged by Kafka (and, with read-your-writes, folded
        by the emitter: the view shows the task as unknown (PENDING) at once); a replay
        or a view rebuild forgets it again, because the forget is in the log
        (``task_forgotten.v1.avsc``)."""
        emitter = self.emitter()
        emitter.emit(TaskEvent.create(task_id, State.FORGOTTEN, worker=emitter.worker), wait=True)

    # --- saved groups: events of the group's id ----------------------------------------

    def _save_group(self, group_id: str, result: Any) -> Any:
        self._group_event(State.SUCCESS, group_id, to_plain(result.as_tuple()))
        return result

    def _delete_group(self, group_id: str) -> None:
        self._group_event(State.REVOKED, group_id, None)

    def _group_event(self, state: State, group_id: str, members: Any) -> None:
        emitter = self.emitter()
        event = TaskEvent.create(group_id, state, worker=emitter.worker,
                                 task_name=names.CELERY_SAVED_GROUP_TASK, result=members,
                                 result_ttl=self.result_ttl_ms)
        # Acknowledged by Kafka (and folded, with read-your-writes) before this returns:
        # the log, not the view, is what a replay restores.
        emitter.emit(event, wait=True)

    def _restore_group(self, group_id: str) -> dict[str, Any] | None:
        view = self.reader().read(group_id)
        if (view is None or view.task_name != names.CELERY_SAVED_GROUP_TASK
                or view.state is not State.SUCCESS):
            return None
        members = saved_group(view)
        if members is None:
            return None
        return {"task_id": group_id, "result": result_from_tuple(members, self.app),
                "date_done": date_done(view)}

    # --- chords: Celery's chord protocol onto the log (celery_backend/chords.py) ------

    def apply_chord(self, header_result_args: Any, body: Any, **kwargs: Any) -> None:
        chords.apply_chord(self, header_result_args, body, **kwargs)

    def set_chord_size(self, group_id: str, chord_size: int) -> None:
        chords.set_chord_size(self, group_id, chord_size)

    def add_to_chord(self, group_id: str, result: Any) -> None:
        chords.add_to_chord(self, group_id, result)

    def on_chord_part_return(self, request: Any, state: str, result: Any, **kwargs: Any) -> None:
        chords.on_chord_part_return(self, request, state, result)

    # --- reads -----------------------------------------------------------------------

    def on_task_call(self, producer: Any, task_id: str) -> None:
        """Start waiting for a task as it is sent (as Celery's Redis backend subscribes
        then): the subscription is in place while the task runs, so a later ``get()``
        usually finds the result already delivered. Not in a worker, where a task that
        waited on a subtask could deadlock the pool (``task_join_will_block``); the wait
        ends when the ``AsyncResult`` is collected or forgotten, or the result arrives."""
        if not task_join_will_block():
            self.result_consumer.consume_from(task_id, sent=True)

    def _wait_for_pending(self, result: Any, timeout: Any = None, **kwargs: Any) -> Iterator[None]:
        """Celery's wait (``get()``, ``join_native()``, ``iter_native()``), its timeout
        checked first (a :class:`~resultlog.errors.ValidationError`): Celery's drainer
        only compares the time spent with it, so a NaN never ran out (a wait for ever)
        and a str failed there as a bare TypeError. A negative one is allowed: Celery
        hands on what is left of a deadline, which may have passed."""
        checked_timeout(timeout, negative=True)
        waiting: Iterator[None] = super()._wait_for_pending(result, timeout=timeout, **kwargs)
        return waiting

    def result_channel(self, task_id: str) -> str:
        """The Redis channel the view publishes ``task_id``'s readiness on."""
        return names.task_done_channel(self.config.settings.redis_prefix, task_id)

    def meta_for(self, task_id: str, view: TaskView | None) -> dict[str, Any]:
        """Celery's meta of a task from its view."""
        extended = bool(self.app.conf.find_value_for_key("extended", "result"))
        return task_meta(task_id, view, self.rebuilder, extended)

    def _get_task_meta_for(self, task_id: str) -> dict[str, Any]:
        return self.meta_for(task_id, self.reader().read(task_id))

    def get_many(self, task_ids: Iterable[str], timeout: float | None = None,
                 max_iterations: int | None = None, **kwargs: Any
                 ) -> Iterator[tuple[str, dict[str, Any]]]:
        """(task_id, meta) of each task once ready (Celery's ``get_many``); with
        ``max_iterations=1``, only those ready now.

        ``task_ids`` is a set, list or other iterable of ids, as Celery's backends take
        (``ResultSet`` passes a set). A lone str, None or an entry that is no id is an
        :class:`~resultlog.errors.InvalidTaskId` here, at the call: a str was read as one
        id per character (found by none, so waited on for ever), and the rest failed as
        a bare TypeError at the first ``next()``. So is a ``timeout`` that is not a
        number, which would otherwise fail only once something is waited on."""
        ids = list(dict.fromkeys(validate_task_ids(task_ids)))
        checked_timeout(timeout, negative=True)
        return self._get_many(ids, timeout, max_iterations)

    def _get_many(self, ids: list[str], timeout: float | None, max_iterations: int | None
                  ) -> Iterator[tuple[str, dict[str, Any]]]:
        views = self.reader().read_many(ids)
        pending = []
        for task_id, view in zip(ids, views):
            if view is not None and view.state.ready:
                yield task_id, self.meta_for(task_id, view)
            else:
                pending.append(task_id)
        if pending and max_iterations != 1:
            for task_id, view in zip(pending, self.reader().wait_many(pending, timeout, False)):
                yield task_id, self.meta_for(task_id, view)

    def as_uri(self, include_password: bool = False) -> str:
        return self.url or "resultlog://"
