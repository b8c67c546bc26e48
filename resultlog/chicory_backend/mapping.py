"""Chicory's values <-> resultlog's records, as pure functions: a ``TaskResult`` is one
task event, a ``WorkerStats`` a :class:`WorkerHeartbeat` of source ``chicory``. The
mapping and its reasons: docs/chicory.md, "Chicory's states in the contract" and
"Workers as events".
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final

from chicory.types import BackendStatus, BrokerStatus, TaskResult, TaskState, WorkerStats

from resultlog import names
from resultlog.errors import ResultNotSerializable
from resultlog.producers.kafka import check_not_ahead
from resultlog.schemas.event import ExceptionInfo, TaskEvent, from_json, new_event_id, now_ms, to_json
from resultlog.schemas.fold import TaskView
from resultlog.schemas.states import State
from resultlog.schemas.workers import WorkerHeartbeat

SOURCE: Final = "chicory"

TO_EVENT_STATE: Final[dict[TaskState, State]] = {
    TaskState.PENDING: State.RECEIVED,
    TaskState.STARTED: State.STARTED,
    TaskState.RETRY: State.RETRY,
    TaskState.SUCCESS: State.SUCCESS,
    TaskState.FAILURE: State.FAILURE,
    TaskState.DEAD_LETTERED: State.FAILURE,
}
# What an event state reads as when its result names no Chicory state. REVOKED (a
# Celery revoke, or resultlog's own) is a failure to Chicory, which has no revoke.
FROM_EVENT_STATE: Final[dict[State, TaskState]] = {
    State.RECEIVED: TaskState.PENDING,
    State.STARTED: TaskState.STARTED,
    State.RETRY: TaskState.RETRY,
    State.SUCCESS: TaskState.SUCCESS,
    State.FAILURE: TaskState.FAILURE,
    State.REVOKED: TaskState.FAILURE,
}
_WRAPPER_KEYS: Final = frozenset({names.CHICORY_STATE_KEY, names.CHICORY_RESULT_KEY})
_CHICORY_STATES: Final = {s.value: s for s in TaskState}


def task_event(task_id: str, result: TaskResult[Any], worker: str | None,
               result_ttl_ms: int | None = None) -> TaskEvent:
    """The event recording ``result`` for ``task_id``, expiring ``result_ttl_ms`` after
    it (None: the processor's TTL)."""
    state = TO_EVENT_STATE[result.state]
    value = _json_mode(result)
    carried: str | None
    if state is State.SUCCESS:
        carried = to_json(value, "result")
    elif FROM_EVENT_STATE[state] is not result.state or value is not None:
        carried = to_json({names.CHICORY_STATE_KEY: result.state.value,
                           names.CHICORY_RESULT_KEY: value}, "result")
    else:
        carried = None
    # What Chicory's AsyncResult.get() raises for a FAILURE: Exception(error).
    error = None if result.error is None else ExceptionInfo("Exception", "builtins", result.error)
    return TaskEvent(event_id=new_event_id(), task_id=task_id, state=state, timestamp=now_ms(),
                     worker=worker, result=carried, exception=error, traceback=result.traceback,
                     result_ttl_ms=result_ttl_ms)


def _json_mode(result: TaskResult[Any]) -> Any:
    """``result.result`` in pydantic's JSON mode, as Chicory's own backends encode it;
    what it cannot encode is :class:`ResultNotSerializable`, as the emitter refuses such
    a value, not pydantic's PydanticSerializationError (an object of no JSON type) or a
    UnicodeDecodeError (bytes that are not UTF-8), which named neither the task's result
    nor what to do."""
    try:
        return result.model_dump(mode="json", include={"result"})["result"]
    except (TypeError, ValueError) as exc:  # both are ValueErrors, as to_json's are
        raise ResultNotSerializable(
            f"the task's result cannot be encoded as JSON ({exc}); return plain JSON types "
            "(dict, list, str, int, float, bool, None), or values pydantic's JSON mode "
            "encodes (datetime, UUID, Decimal, bytes of UTF-8 text), or convert it first"
        ) from None


def task_result(view: TaskView) -> TaskResult[Any]:
    """Chicory's ``TaskResult`` of a task's view; :class:`~resultlog.errors.CorruptResult`
    if its result is not JSON (another producer's record: resultlog's emitters write
    only JSON)."""
    state = FROM_EVENT_STATE[view.state]
    value = None if view.result is None else from_json(view.result, "result", view.task_id)
    if view.state is not State.SUCCESS and isinstance(value, dict) and value.keys() == _WRAPPER_KEYS:
        named = value[names.CHICORY_STATE_KEY]
        wrapped = _CHICORY_STATES.get(named) if isinstance(named, str) else None
        # Only a state task_event() records in an event of this state: another (a
        # SUCCESS in a STARTED event) would read as ready while wait() waits on, and
        # the event's own state is what the view, the history and a wait go by.
        if wrapped is not None and TO_EVENT_STATE[wrapped] is view.state:
            state, value = wrapped, value[names.CHICORY_RESULT_KEY]
    return TaskResult[Any](
        task_id=view.task_id, state=state, result=value,
        error=None if view.exception is None else view.exception.message,
        traceback=view.traceback)


def _ms(moment: datetime) -> int:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def _moment(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def heartbeat(worker_id: str, stats: WorkerStats, ttl_s: int) -> WorkerHeartbeat:
    """``stats`` as a heartbeat of ``worker_id`` that lives ``ttl_s`` seconds."""
    meta = {}
    if stats.broker is not None:
        meta[names.CHICORY_BROKER_META] = stats.broker.model_dump_json()
    if stats.backend is not None:
        meta[names.CHICORY_BACKEND_META] = stats.backend.model_dump_json()
    beat_at = None
    if stats.last_heartbeat is not None:
        beat_at = _ms(stats.last_heartbeat)
        # Here, naming Chicory's field; the emitter would refuse it too, as the record's.
        check_not_ahead(beat_at, "last_heartbeat", worker_id)
    return WorkerHeartbeat.create(
        worker_id, ttl_s=ttl_s, source=SOURCE, hostname=stats.hostname, pid=stats.pid,
        queue=stats.queue, concurrency=stats.concurrency, started_at=_ms(stats.started_at),
        tasks_processed=stats.tasks_processed, tasks_failed=stats.tasks_failed,
        active_tasks=stats.active_tasks, is_running=stats.is_running,
        beat_at=beat_at, meta=meta)


def worker_stats(hb: WorkerHeartbeat) -> WorkerStats:
    """Chicory's ``WorkerStats`` of a heartbeat (of any source: Celery workers too)."""
    broker = hb.meta.get(names.CHICORY_BROKER_META)
    backend = hb.meta.get(names.CHICORY_BACKEND_META)
    return WorkerStats(
        worker_id=hb.worker_id, hostname=hb.hostname, pid=hb.pid, queue=hb.queue,
        concurrency=hb.concurrency, tasks_processed=hb.tasks_processed,
        tasks_failed=hb.tasks_failed, active_tasks=hb.active_tasks,
        started_at=_moment(hb.started_at), last_heartbeat=_moment(hb.beat_at),
        is_running=hb.is_running,
        broker=None if broker is None else BrokerStatus.model_validate_json(broker),
        backend=None if backend is None else BackendStatus.model_validate_json(backend))
