"""Records another producer may write to the log, read through ``resultlog://``: any
producer may write any task's events, and Celery acts on the meta it is handed (it
builds and raises the exception a FAILURE's meta names, and rebuilds the children's
tuples on any read of a finished task). What the backend itself writes is taken only in
the shape it writes it; anything else reads as the plain event, or as absent.

The records are folded into the test's Redis view as the processor folds them (its
``read_rows`` route from the encoded record), without Kafka: the reads are the subject
here, and each is then one fold away. No worker: nothing here runs a task."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from resultlog import names
from resultlog.schemas.codec import Codec
from resultlog.schemas.event import ExceptionInfo, TaskEvent
from resultlog.schemas.states import State
from resultlog.schemas.taskrows import read_rows
from resultlog.settings import Settings
from resultlog.views import RedisView
from tests.integration.celery_app import make_app
from tests.integration.test_celery_backend import backend_url

celery = pytest.importorskip("celery")
from celery.exceptions import TimeoutError as CeleryTimeout  # type: ignore[import-untyped]  # noqa: E402

pytestmark = [pytest.mark.integration]

#: A wait on a task that is not ready: long enough to hear a result that is there, and
#: the bound of a wait that would otherwise last for ever.
NOT_READY_WAIT_S = 0.5


def forged(task_id: str, state: State, **fields: Any) -> TaskEvent:
    """An event of ``task_id`` with ``fields`` set past the model's checks, as another
    producer's record may hold them."""
    event = TaskEvent.create(task_id, state)
    for name, value in fields.items():
        object.__setattr__(event, name, value)
    return event


def fold(settings: Settings, *events: TaskEvent) -> None:
    """Fold ``events`` into the view as the processor folds their records."""
    codec = Codec()
    rows = [read_rows(codec.encode(e), settings.events_topic, 0, n, settings.result_ttl_s * 1000)
            for n, e in enumerate(events)]
    assert all(row is not None for row in rows), "the processor would not fold these"

    async def apply() -> None:
        async with RedisView(settings) as view:
            await view.apply_rows([row[1] for row in rows if row], [row[2] for row in rows if row])

    asyncio.run(apply())


def raised(call: Callable[[], Any]) -> BaseException | None:
    """What ``call`` raised, whatever it was (a SystemExit or KeyboardInterrupt would
    otherwise end the test run rather than fail the test)."""
    try:
        call()
    except BaseException as exc:  # noqa: BLE001 -- the subject of the test
        return exc
    return None


@pytest.fixture
def app(settings: Settings) -> Any:
    return make_app(backend_url(settings), "memory://", "unused")


def task_id() -> str:
    return f"forged-{uuid.uuid4().hex}"


SYSTEM_EXIT_META = {"exc_type": "SystemExit", "exc_module": "builtins", "exc_message": ["bye"]}


@pytest.mark.parametrize("wrapped, meta", [
    ("FAILURE", SYSTEM_EXIT_META),
    ("FAILURE", 42),
    ("RETRY", SYSTEM_EXIT_META),
    ("REVOKED", None),
    ("SUCCESS", {"looks": "done"}),
    ("RECEIVED", None),
    (42, None),
    (["PROGRESS"], None),
])
def test_a_started_event_wrapping_a_state_the_backend_never_wraps_reads_as_started(
        app: Any, settings: Settings, wrapped: Any, meta: Any) -> None:
    """The backend wraps a custom state (update_state) and STARTED's meta, never a state
    the contract has: such a wrapper made get() raise a real SystemExit (Celery builds
    any class a FAILURE's meta names), or fail as a TypeError or RuntimeError, or hang
    for ever (get(timeout=None)), or return the meta of a task still running."""
    tid = task_id()
    fold(settings, TaskEvent.create(
        tid, State.STARTED, result={names.CELERY_STATE_KEY: wrapped, names.CELERY_META_KEY: meta}))
    result = app.AsyncResult(tid)
    assert result.state == "STARTED" and not result.ready()
    assert result.info is None
    caught = raised(lambda: result.get(timeout=NOT_READY_WAIT_S))
    assert isinstance(caught, CeleryTimeout), caught


@pytest.mark.parametrize("wrapped, meta", [
    ("PROGRESS", {"done": 1, "of": 2}),
    ("STARTED", {"pid": 1, "hostname": "h"}),
    ("PENDING", None),  # update_state(state="PENDING"): a state like any other to Celery
])
def test_a_wrapper_the_backend_writes_reads_as_its_state(
        app: Any, settings: Settings, wrapped: str, meta: Any) -> None:
    backend = app.backend
    tid = task_id()
    backend.store_result(tid, meta, wrapped)  # what the worker's update_state stores
    result = app.AsyncResult(tid)
    assert (result.state, result.info) == (wrapped, meta)


@pytest.mark.parametrize("exc_type, exc_module", [
    ("SystemExit", "builtins"),
    ("KeyboardInterrupt", "builtins"),
    ("GeneratorExit", "builtins"),
    ("BaseException", "builtins"),
    ("CancelledError", "asyncio"),
    ("CancelledError", "asyncio.exceptions"),
])
@pytest.mark.parametrize("state", [State.FAILURE, State.RETRY, State.REVOKED])
def test_no_event_makes_get_raise_a_base_exception_that_is_no_exception(
        app: Any, settings: Settings, exc_type: str, exc_module: str, state: State) -> None:
    """Celery raises the exception it is handed as it is: the backend hands it only
    Exceptions (a stand-in named after the class the event names, by resultlog's rules),
    with or without the args this backend keeps for Celery to call the class with."""
    tids = [task_id(), task_id()]
    args = {names.CELERY_EXC_ARGS_META: f'{{"type":"{exc_type}","message":"bye","args":[0]}}'}
    for tid, meta in zip(tids, ({}, args)):
        fold(settings, TaskEvent.create(
            tid, state, exc=ExceptionInfo(exc_type, exc_module, "bye"), meta=meta))
    for tid in tids:
        result = app.AsyncResult(tid)
        assert result.state == state.value
        # A RETRY is not ready: get() waits on, and info holds the exception.
        caught = raised(lambda: result.get(timeout=10)) if state.ready else result.info
        assert isinstance(caught, Exception), repr(caught)
        assert type(caught).__name__ == exc_type and str(caught) == "bye"


@pytest.mark.parametrize("kept", [
    "nope",
    "[1]",
    '{"type":"ValueError","message":"m"}',
    '{"type":"ValueError","message":"m","args":5}',
    '{"type":"ValueError","message":"m","args":{"a":1}}',
    '{"type":"ValueError","message":"m","args":"ab"}',
    '{"type":1,"message":"m","args":[1]}',
])
def test_exception_args_of_another_shape_are_ignored(
        app: Any, settings: Settings, kept: str, caplog: pytest.LogCaptureFixture) -> None:
    """Were a JSONDecodeError, AttributeError, KeyError or TypeError, or the class called
    with the wrong args (ValueError('a'))."""
    tid = task_id()
    fold(settings, TaskEvent.create(tid, State.FAILURE, exc=ExceptionInfo("ValueError", "builtins", "m"),
                                    meta={names.CELERY_EXC_ARGS_META: kept}))
    with caplog.at_level(logging.WARNING, "resultlog.celery"):
        caught = raised(lambda: app.AsyncResult(tid).get(timeout=10))
    assert type(caught) is ValueError and caught.args == ("m",)
    assert tid in caplog.text and names.CELERY_EXC_ARGS_META in caplog.text


def test_exception_args_the_backend_keeps_call_the_class(app: Any, settings: Settings) -> None:
    tid = task_id()
    app.backend.store_result(tid, ValueError("m", 2), "FAILURE")
    caught = raised(lambda: app.AsyncResult(tid).get(timeout=10))
    assert type(caught) is ValueError and caught.args == ("m", 2)


@pytest.mark.parametrize("children", [
    "not json",
    '[["a"]]',
    "5",
    '[[["x",[1]],null]]',  # a parent that is no result tuple
    '[[[5,null],null]]',  # an id that is no task id
    '[[["x",null],5]]',  # members that are no list
    '[[["x",null],[["y"]]]]',  # a member that is no result tuple
    '[[["",null],null]]',
])
def test_children_of_another_shape_read_as_none(
        app: Any, settings: Settings, children: str, caplog: pytest.LogCaptureFixture) -> None:
    """Celery rebuilds the children on any read of a finished task: its state raised a
    DecodeError, ValueError or TypeError."""
    tid = task_id()
    fold(settings, TaskEvent.create(tid, State.SUCCESS, result=1,
                                    meta={names.CELERY_CHILDREN_META: children}))
    result = app.AsyncResult(tid)
    with caplog.at_level(logging.WARNING, "resultlog.celery"):
        assert result.state == "SUCCESS"
    assert result.get(timeout=10) == 1 and result.children == []
    assert tid in caplog.text and names.CELERY_CHILDREN_META in caplog.text


def test_children_the_backend_keeps_are_rebuilt(app: Any, settings: Settings) -> None:
    tid = task_id()
    kept = '[[["a",null],null],[["g",[["p",null],null]],[[["b",null],null]]]]'
    fold(settings, TaskEvent.create(tid, State.SUCCESS, result=1,
                                    meta={names.CELERY_CHILDREN_META: kept}))
    child, group = app.AsyncResult(tid).children
    assert child.id == "a" and group.id == "g" and group.parent.id == "p"
    assert [member.id for member in group.results] == ["b"]


@pytest.mark.parametrize("members", [
    lambda gid: [1, 2, 3],
    lambda gid: "x",
    lambda gid: None,
    lambda gid: [[gid, None], [["a", None]]],  # a member as a bare id: not how it is written
    lambda gid: [["another", None], [[["a", None], None]]],  # another group's tuple
    lambda gid: [[gid, None], None],  # a task's tuple, not a group's
])
def test_a_saved_group_of_another_shape_is_no_saved_group(
        app: Any, settings: Settings, members: Callable[[str], Any],
        caplog: pytest.LogCaptureFixture) -> None:
    """GroupResult.restore raised a bare ValueError or TypeError."""
    gid = task_id()
    fold(settings, TaskEvent.create(gid, State.SUCCESS, task_name=names.CELERY_SAVED_GROUP_TASK,
                                    result=members(gid)))
    with caplog.at_level(logging.WARNING, "resultlog.celery"):
        assert app.GroupResult.restore(gid) is None
    assert gid in caplog.text


def test_a_saved_group_the_backend_writes_is_restored(app: Any, settings: Settings) -> None:
    gid = task_id()
    fold(settings, TaskEvent.create(gid, State.SUCCESS, task_name=names.CELERY_SAVED_GROUP_TASK,
                                    result=[[gid, None], [[["a", None], None], [["b", None], None]]]))
    restored = app.GroupResult.restore(gid)
    assert restored is not None and [r.id for r in restored.results] == ["a", "b"]


@pytest.mark.parametrize("field", ["args", "kwargs"])
def test_args_that_do_not_decode_read_as_unknown(
        app: Any, settings: Settings, field: str, caplog: pytest.LogCaptureFixture) -> None:
    """With result_extended Celery's meta holds the args: its state raised a DecodeError."""
    tid = task_id()
    fold(settings, forged(tid, State.SUCCESS, result="1", **{field: "nope"}))
    result = app.AsyncResult(tid)
    with caplog.at_level(logging.WARNING, "resultlog.celery"):
        assert result.state == "SUCCESS"
    assert result.get(timeout=10) == 1 and getattr(result, field) is None
    assert tid in caplog.text
