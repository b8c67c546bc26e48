"""Celery integration: Celery's task signals → resultlog events (docs/emitter.md, "Celery":
which signal fires in which process, and why their order across processes does not matter).

Celery is an optional dependency (``resultlog[celery]``) imported only by :func:`install`.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from resultlog.errors import ConfigurationError, EventTooLarge, ResultNotSerializable
from resultlog.schemas.event import TaskFields
from resultlog.schemas.states import MAX_TIMESTAMP_MS
from resultlog.producers.sync import SyncEmitter

log = logging.getLogger(__name__)


def _signals() -> Any:
    try:
        from celery import signals  # type: ignore[import-untyped]
    except ImportError as exc:
        raise ImportError(
            "resultlog.producers.celery needs Celery, which is not installed: "
            "pip install resultlog[celery]"
        ) from exc
    return signals


def request_fields(request: Any, task: Any = None) -> tuple[str | None, int, TaskFields]:
    """Task id, attempt and the event fields from a Celery ``Request`` or ``Context``
    (shared with the result backend, resultlog.celery_backend)."""
    raw: Mapping[str, Any] = getattr(request, "request_dict", None) or {}

    def get(name: str, key: str | None = None) -> Any:
        value = getattr(request, name, None)
        return raw.get(key or name) if value is None else value

    name = get("task_name") or get("task") or getattr(task, "name", None)
    fields = TaskFields(
        task_name=name if isinstance(name, str) else None,
        parent_id=get("parent_id") or None,
        root_id=get("root_id") or None,
        group_id=get("group") or None,
    )
    hostname = get("hostname")
    if isinstance(hostname, str) and hostname:
        fields["worker"] = hostname
    args, kwargs = get("args"), get("kwargs")
    if isinstance(args, (list, tuple)):
        fields["args"] = args
    if isinstance(kwargs, Mapping):
        fields["kwargs"] = kwargs
    chord, index = get("chord"), get("group_index")
    size = chord.get("chord_size") if isinstance(chord, Mapping) else None
    if fields["group_id"] and isinstance(index, int) and isinstance(size, int):
        # A chord header member: Celery's group id is the chord's id.
        fields["chord_id"] = fields["group_id"]
        fields["chord_size"] = size
        fields["chord_index"] = index
    retries = get("retries")
    return get("id"), retries if isinstance(retries, int) else 0, fields


def result_ttl_ms(setting: str, seconds: float | timedelta | None) -> int:
    """Celery's expiry in seconds or a timedelta (None or 0: never, as Celery's Redis
    backend takes it) as an event's result TTL in ms (0: for ever)."""
    if isinstance(seconds, timedelta):
        seconds = seconds.total_seconds()
    if not seconds:
        return 0
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) \
            or not 0 < seconds <= MAX_TIMESTAMP_MS / 1000:
        raise ConfigurationError(
            f"{setting} must be None, 0 (keep results for ever) or a positive number of "
            f"seconds (or a timedelta), got {seconds!r}")
    return math.ceil(seconds * 1000)


def celery_result_ttls(expires: float | timedelta | None,
                       failure_expires: float | timedelta | None) -> tuple[int, int]:
    """(for every state, for FAILURE) result TTLs in ms from a Celery app's
    ``result_expires`` and ``result_failure_expires`` (which defaults to the former), as
    Celery's Redis backend applies them."""
    result = result_ttl_ms("result_expires", expires)
    if failure_expires is None:
        return result, result
    return result, result_ttl_ms("result_failure_expires", failure_expires)


@dataclass
class Installation:
    """The connected handlers; :meth:`uninstall` disconnects them."""

    emitter: SyncEmitter
    _connected: list[tuple[Any, Callable[..., None]]] = field(default_factory=list)

    def uninstall(self) -> None:
        for signal, receiver in self._connected:
            signal.disconnect(receiver)
        self._connected.clear()


def install(app: Any, emitter: SyncEmitter) -> Installation:
    """Emit resultlog events for Celery's tasks (only ``app``'s, unless ``app`` is None).

    Each event carries its app's ``result_expires`` (``result_failure_expires`` for a
    FAILURE) as its result TTL, read when the event is emitted: apps are often
    configured after the module that creates them calls this."""
    signals = _signals()
    started_at: dict[str, float] = {}
    lock = threading.Lock()
    refused: set[tuple[int, str]] = set()

    def ours(sender: Any) -> bool:
        return app is None or getattr(sender, "app", None) is app

    def expiring(sender: Any, fields: TaskFields, *, failed: bool = False) -> TaskFields:
        owner = app if app is not None else getattr(sender, "app", None)
        conf = getattr(owner, "conf", None)
        if conf is None:
            return fields  # no app to ask: the processor's TTL
        try:
            every, failure = celery_result_ttls(conf.get("result_expires"),
                                                conf.get("result_failure_expires"))
        except ConfigurationError as exc:
            # In a signal handler an error would lose the event (Celery logs and drops
            # it): keep the event under the processor's TTL and say so, once per value.
            if (id(owner), str(exc)) not in refused:
                refused.add((id(owner), str(exc)))
                log.warning("%s; resultlog events of this app expire after the processor's "
                            "RESULTLOG_RESULT_TTL_S until it is fixed", exc)
            return fields
        fields["result_ttl"] = failure if failed else every
        return fields

    def on_received(sender: Any = None, request: Any = None, **_: Any) -> None:
        if request is None or not ours(sender):
            return
        task_id, attempt, fields = request_fields(request)
        if task_id:
            emitter.received(task_id, attempt=attempt, **expiring(sender, fields))

    def on_prerun(sender: Any = None, task_id: str | None = None, task: Any = None, **_: Any) -> None:
        if task is None or not task_id or not ours(task):
            return
        _id, attempt, fields = request_fields(task.request, task)
        with lock:
            started_at[task_id] = time.perf_counter()
        emitter.started(task_id, attempt=attempt, **expiring(task, fields))

    def runtime_of(task_id: str, given: Any) -> float | None:
        with lock:
            t0 = started_at.pop(task_id, None)
        if isinstance(given, (int, float)):
            return float(given)
        return None if t0 is None else time.perf_counter() - t0

    def on_success(sender: Any = None, result: Any = None, **kw: Any) -> None:
        if sender is None or not ours(sender):
            return
        task_id, attempt, fields = request_fields(sender.request, sender)
        if not task_id:
            return
        runtime = runtime_of(task_id, kw.get("runtime"))
        try:
            emitter.success(task_id, result, runtime=runtime, attempt=attempt,
                            **expiring(sender, fields))
        except (ResultNotSerializable, EventTooLarge) as exc:
            # Celery stored the result its own way, but resultlog cannot: record why.
            emitter.failure(task_id, exc, runtime=runtime, attempt=attempt,
                            **expiring(sender, fields, failed=True))
            raise

    def on_failure(
        sender: Any = None,
        task_id: str | None = None,
        exception: BaseException | None = None,
        einfo: Any = None,
        **_: Any,
    ) -> None:
        if sender is None or not task_id or exception is None or not ours(sender):
            return
        _id, attempt, fields = request_fields(sender.request, sender)
        tb = getattr(einfo, "traceback", None)
        emitter.failure(
            task_id, exception, traceback=tb if isinstance(tb, str) else None,
            runtime=runtime_of(task_id, None), attempt=attempt,
            **expiring(sender, fields, failed=True),
        )

    def on_retry(sender: Any = None, request: Any = None, reason: Any = None, einfo: Any = None, **_: Any) -> None:
        if sender is None or request is None or not ours(sender):
            return
        task_id, attempt, fields = request_fields(request, sender)
        if not task_id:
            return
        runtime_of(task_id, None)
        # ``reason`` is Celery's Retry; the task's own exception is reason.exc.
        exc = getattr(reason, "exc", None) or reason
        if not isinstance(exc, BaseException):
            exc = RuntimeError(str(reason))
        when = getattr(reason, "when", None)
        tb = getattr(einfo, "traceback", None)
        emitter.retry(
            task_id, exc, attempt=attempt,
            eta=when if isinstance(when, datetime) else None,
            traceback=tb if isinstance(tb, str) else None, **expiring(sender, fields),
        )

    def on_revoked(
        sender: Any = None, request: Any = None, terminated: Any = None, expired: Any = None, **_: Any
    ) -> None:
        if request is None or (sender is not None and not ours(sender)):
            return
        task_id, attempt, fields = request_fields(request, sender)
        if not task_id:
            return
        reason = "expired" if expired else "terminated" if terminated else "revoked"
        fields["meta"] = {"revoked": reason}
        emitter.revoked(task_id, attempt=attempt, **expiring(sender, fields))

    installation = Installation(emitter)
    for signal, receiver in (
        (signals.task_received, on_received),
        (signals.task_prerun, on_prerun),
        (signals.task_success, on_success),
        (signals.task_failure, on_failure),
        (signals.task_retry, on_retry),
        (signals.task_revoked, on_revoked),
    ):
        # weak=False: these closures are referenced only by the signal.
        signal.connect(receiver, weak=False)
        installation._connected.append((signal, receiver))
    return installation
