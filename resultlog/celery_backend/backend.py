"""``ResultlogBackend``: a Celery result backend whose writes are events and whose reads
come from the Redis view.

    app.conf.result_backend = "resultlog://"     # the whole switch (an entry point of
                                                  # the celery.result_backends group)

It is an adapter, never a second store: ``store_result`` hands the state to the
process's :class:`~resultlog.producers.SyncEmitter`; ``get_task_meta`` reads the
view through :class:`~resultlog.views.ResultBackend`; waiting is push-based through
Celery's ``AsyncBackendMixin`` and :class:`~.consumer.ViewResultConsumer`.

One emitter and one reader per process and configuration, whatever number of Celery
backend objects (Celery makes one per thread): both are fork-safe, so a prefork pool
child re-creates its own on first use.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from typing import Any

from celery.backends.asynchronous import AsyncBackendMixin  # type: ignore[import-untyped]
from celery.backends.base import Backend  # type: ignore[import-untyped]
from kombu.exceptions import EncodeError

from resultlog.celery_backend.config import CONF_KEY, BackendConfig, check_serializer
from resultlog.celery_backend.consumer import ViewResultConsumer
from resultlog.celery_backend.meta import event_state, progress, task_meta, to_plain
from resultlog.errors import ConfigurationError, EventTooLarge, ResultNotSerializable
from resultlog.producers.celery import request_fields
from resultlog.producers.events import TaskFields
from resultlog.producers.sync import SyncEmitter
from resultlog.schemas.fold import TaskView
from resultlog.schemas.states import State
from resultlog.settings import Settings
from resultlog.views.backend import ResultBackend
from resultlog.views.exceptions import ExceptionRebuilder

_shared_lock = threading.Lock()
_emitters: dict[Settings, SyncEmitter] = {}
_readers: dict[tuple[Settings, tuple[str, ...]], ResultBackend] = {}


def _emitter(settings: Settings) -> SyncEmitter:
    with _shared_lock:
        emitter = _emitters.get(settings)
        if emitter is None:
            emitter = _emitters[settings] = SyncEmitter(settings)
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
    # Results expire with the view (RESULTLOG_RESULT_TTL_S, applied by the processor).
    supports_autoexpire = True
    persistent = True

    def __init__(self, app: Any, url: str | None = None, **kwargs: Any) -> None:
        super().__init__(app, url=url, **kwargs)
        check_serializer(self.serializer)
        if self.compression:
            raise ConfigurationError(
                f"result_compression {self.compression!r} is not supported by the resultlog "
                "backend: events are compressed on the wire by Kafka (zstd). Unset it"
            )
        self.config = BackendConfig.load(url, app.conf.get(CONF_KEY))
        self.rebuilder = ExceptionRebuilder(self.config.import_modules)
        self.result_consumer = ViewResultConsumer(
            self, self.app, self.accept, self._pending_results, self._pending_messages)

    # --- the process's shared emitter and reader -----------------------------------

    def emitter(self) -> SyncEmitter:
        return _emitter(self.config.settings)

    def reader(self) -> ResultBackend:
        return _reader(self.config.settings, self.config.import_modules)

    # --- writes ----------------------------------------------------------------------

    def store_result(self, task_id: str, result: Any, state: str, traceback: str | None = None,
                     request: Any = None, **kwargs: Any) -> Any:
        """Emit the state as an event (from this process); for a ready state, return
        once Kafka acknowledged it (unless ``ack_ready`` is off)."""
        attempt, fields = self._request_fields(task_id, request)
        kind, keep_state = event_state(state)
        wait = self.config.ack_ready and kind.ready
        emitter = self.emitter()
        if kind is State.SUCCESS:
            try:
                emitter.success(task_id, to_plain(result), attempt=attempt, wait=wait, **fields)
            except (ResultNotSerializable, EventTooLarge) as refused:
                # Celery's trace records an EncodeError as the task's FAILURE (and the
                # client's get() raises it) exactly as with its own backends.
                raise EncodeError(
                    f"the result of task {task_id} cannot be stored: {refused}") from refused
        elif keep_state:
            emitter.emit_state(task_id, State.STARTED, attempt=attempt,
                               result=progress(state, result), **fields)
        else:
            exc = result if isinstance(result, BaseException) else RuntimeError(str(result))
            emitter.emit_state(task_id, kind, attempt=attempt, exc=exc,
                               traceback=traceback, wait=wait, **fields)
        return result

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

    def _forget(self, task_id: str) -> None:
        self.reader().forget(task_id)

    # --- reads -----------------------------------------------------------------------

    def meta_for(self, task_id: str, view: TaskView | None) -> dict[str, Any]:
        """Celery's meta of a task from its view."""
        extended = bool(self.app.conf.find_value_for_key("extended", "result"))
        return task_meta(task_id, view, self.accept, self.rebuilder, extended)

    def _get_task_meta_for(self, task_id: str) -> dict[str, Any]:
        return self.meta_for(task_id, self.reader().read(task_id))

    def get_many(self, task_ids: Iterable[str], timeout: float | None = None,
                 max_iterations: int | None = None, **kwargs: Any
                 ) -> Iterator[tuple[str, dict[str, Any]]]:
        """(task_id, meta) of each task once ready (Celery's ``get_many``); with
        ``max_iterations=1``, only those ready now."""
        ids = list(dict.fromkeys(task_ids))
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
