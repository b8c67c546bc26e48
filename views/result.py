"""``AsyncResult`` (sync) and ``AioAsyncResult`` (asyncio): Celery's result API over the view.

Both wait by push (see :mod:`resultlog.views.notify`), never by polling; each class says
what its attributes read (docs/results.md).
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime, timedelta
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from resultlog.errors import TaskRevoked, ValidationError
from resultlog.schemas.event import TaskEvent, from_json, validate_task_id
from resultlog.schemas.fold import TaskView
from resultlog.schemas.states import PENDING, State
from resultlog.views.exceptions import RemoteTaskError

if TYPE_CHECKING:
    from resultlog.views.backend import ResultBackend

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@functools.cache
def _backend_class() -> type[ResultBackend]:
    # Imported on first use, as views.backend imports this module; cached, because a
    # function-level import costs more than making the result object (every member of
    # a ResultSet is one).
    from resultlog.views.backend import ResultBackend

    return ResultBackend


def checked_backend(backend: object, owner: str) -> ResultBackend:
    """``backend`` if it is a :class:`ResultBackend`, else :class:`ValidationError`
    naming ``owner``: checked when a result object is made, not as an AttributeError at
    its first read (a URL string or None handed in where the backend goes)."""
    if not isinstance(backend, _backend_class()):
        raise ValidationError(
            f"{owner}: backend must be a resultlog ResultBackend (ResultBackend(settings)), got "
            f"{type(backend).__name__}; or make it from one: backend.{owner}(...)")
    return backend


T = TypeVar("T")


class FromView(Generic[T]):
    """A result's attribute read from its task's current view (None while there is none)."""

    __slots__ = ("read",)

    def __init__(self, read: Callable[[TaskView], T]) -> None:
        self.read = read

    @overload
    def __get__(self, result: None, owner: type[BaseResult]) -> FromView[T]: ...

    @overload
    def __get__(self, result: BaseResult, owner: type[BaseResult]) -> T | None: ...

    def __get__(self, result: BaseResult | None, owner: type[BaseResult]) -> FromView[T] | T | None:
        if result is None:
            return self
        view = result.view
        return None if view is None else self.read(view)


class BaseResult:
    """Attribute logic shared by both flavours: everything derives from a TaskView.

    ``cached``, ``keep`` and ``settle`` are for collections of results (``ResultSet``).
    """

    __slots__ = ("id", "backend", "_view", "_outcome")

    def __init__(self, task_id: str, backend: ResultBackend) -> None:
        self.id: str = validate_task_id(task_id)
        self.backend = checked_backend(backend, type(self).__name__)
        self._view: TaskView | None = None
        # (view, value): the decoded result or rebuilt exception of that view, so
        # repeated reads give the same object.
        self._outcome: tuple[TaskView, Any] | None = None

    def _current(self) -> TaskView | None:
        raise NotImplementedError

    @property
    def task_id(self) -> str:
        return self.id

    @property
    def view(self) -> TaskView | None:
        """The raw view (None while nothing is known of the task)."""
        return self._current()

    @property
    def state(self) -> str:
        """The state name; ``"PENDING"`` for a task nothing is known of."""
        view = self._current()
        return PENDING if view is None else view.state.value

    status = state

    @property
    def result(self) -> Any:
        """The return value (SUCCESS), the exception (FAILURE, RETRY, REVOKED), else None."""
        view = self._current()
        return None if view is None else self._value(view)

    info = result

    traceback = FromView(lambda view: view.traceback)

    @property
    def date_done(self) -> datetime | None:
        """When the task became ready (UTC, from the event's own timestamp)."""
        view = self._current()
        if view is None or not view.ready:
            return None
        return _EPOCH + timedelta(milliseconds=view.timestamp)

    name = FromView(lambda view: view.task_name)
    args: FromView[list[Any] | None] = FromView(
        lambda view: None if view.args is None else from_json(view.args, "args", view.task_id))
    kwargs: FromView[dict[str, Any] | None] = FromView(
        lambda view: None if view.kwargs is None else from_json(view.kwargs, "kwargs", view.task_id))
    worker = FromView(lambda view: view.worker)
    retries = FromView(lambda view: view.attempt)

    def _value(self, view: TaskView) -> Any:
        if self._outcome is not None and self._outcome[0] == view:
            return self._outcome[1]
        value: Any = None
        if view.state is State.SUCCESS:
            value = None if view.result is None else from_json(view.result, "result", self.id)
        elif view.state is State.REVOKED:
            reason = "" if view.exception is None else f": {view.exception.message}"
            value = TaskRevoked(f"task {self.id} was revoked{reason}")
        elif view.exception is not None:
            value = self.backend.exceptions.rebuild(view.exception, view.traceback)
        elif view.state is State.FAILURE:
            value = RemoteTaskError(f"task {self.id} failed without recording an exception")
        self._outcome = (view, value)
        return value

    def cached(self) -> TaskView | None:
        """The view this object holds if it is ready (a ready view never changes), else None."""
        view = self._view
        return view if view is not None and view.ready else None

    def keep(self, view: TaskView | None) -> TaskView | None:
        """Hold ``view`` as this object's current view (read for it by a collection)."""
        self._view = view
        return view

    def settle(self, view: TaskView, propagate: bool) -> Any:
        """What ``get()`` returns (or raises) for a ready view."""
        value = self._value(view)
        if propagate and view.state in (State.FAILURE, State.REVOKED):
            raise value
        return value

    def __str__(self) -> str:
        return self.id

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self.id}>"

    def __hash__(self) -> int:
        return hash(self.id)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, BaseResult):
            return other.id == self.id
        if isinstance(other, str):
            return other == self.id
        return NotImplemented


class AsyncResult(BaseResult):
    """A task's result, sync flavour: ``AsyncResult(task_id, backend)``.

    Every attribute reads the view (one Redis round trip) until the task is ready;
    from then on the ready state is cached, as in Celery. :meth:`refresh` drops it.
    """

    __slots__ = ()

    def _current(self) -> TaskView | None:
        view = self.cached()
        return view if view is not None else self.keep(self.backend.read(self.id))

    def refresh(self) -> AsyncResult:
        self._view = self.backend.read(self.id)
        return self

    def ready(self) -> bool:
        """True once the task succeeded, failed or was revoked."""
        return _is_ready(self._current())

    def successful(self) -> bool:
        return _is_state(self._current(), State.SUCCESS)

    def failed(self) -> bool:
        return _is_state(self._current(), State.FAILURE)

    def exists(self) -> bool:
        """True if the view knows the task (unlike ``state``, which says PENDING either way)."""
        return self._current() is not None

    def get(self, timeout: float | None = None, propagate: bool = True, interval: float = 0.5) -> Any:
        """Wait until the task is ready (woken by push) and return its result.

        Raises the task's exception (rebuilt, see :mod:`resultlog.views.exceptions`)
        if it failed and ``propagate``; :class:`~resultlog.errors.TaskRevoked` if it was
        revoked; :class:`~resultlog.errors.ResultTimeout` after ``timeout`` seconds.
        ``interval`` is accepted for Celery compatibility and ignored: nothing polls.
        """
        view = self._view
        if view is None or not view.ready:
            view = self.backend.wait_ready(self.id, timeout)
            self._view = view
        return self.settle(view, propagate)

    wait = get  # Celery's deprecated alias

    def forget(self) -> None:
        """Remove the task from the view. A later event for it brings it back."""
        self._view = None
        self.backend.forget(self.id)

    def history(self) -> list[TaskEvent]:
        """Every event of the task, in event order, from the Postgres history."""
        return self.backend.history(self.id)


class AioAsyncResult(BaseResult):
    """A task's result, asyncio flavour: ``AioAsyncResult(task_id, backend)``.

    Attributes (``state``, ``result``, ``date_done``...) show the snapshot loaded by the
    last awaited call; reading one before any raises :class:`RuntimeError`.
    """

    __slots__ = ("_loaded",)

    def __init__(self, task_id: str, backend: ResultBackend) -> None:
        super().__init__(task_id, backend)
        self._loaded = False

    def _current(self) -> TaskView | None:
        if not self._loaded:
            raise RuntimeError(
                f"{self!r} has not been loaded yet: await refresh(), get() or ready() first"
            )
        return self._view

    def keep(self, view: TaskView | None) -> TaskView | None:
        self._loaded = True
        return super().keep(view)

    async def refresh(self) -> AioAsyncResult:
        """Load the task's current state into this object's attributes."""
        self.keep(await self.backend.aio().read(self.id))
        return self

    async def _load(self) -> TaskView | None:
        # Like the sync flavour: a ready state is cached, anything else is re-read.
        view = self.cached()
        return view if view is not None else self.keep(await self.backend.aio().read(self.id))

    async def ready(self) -> bool:
        return _is_ready(await self._load())

    async def successful(self) -> bool:
        return _is_state(await self._load(), State.SUCCESS)

    async def failed(self) -> bool:
        return _is_state(await self._load(), State.FAILURE)

    async def exists(self) -> bool:
        return await self._load() is not None

    async def get(
        self, timeout: float | None = None, propagate: bool = True, interval: float = 0.5
    ) -> Any:
        """As :meth:`AsyncResult.get`, without blocking the event loop."""
        view = self._view
        if view is None or not view.ready:
            view = await self.backend.aio().wait_ready(self.id, timeout)
            self.keep(view)
        return self.settle(view, propagate)

    async def forget(self) -> None:
        self.keep(None)
        await self.backend.aio().forget(self.id)

    async def history(self) -> list[TaskEvent]:
        return await self.backend.aio().history(self.id)


def _is_ready(view: TaskView | None) -> bool:
    return view is not None and view.ready


def _is_state(view: TaskView | None, state: State) -> bool:
    return view is not None and view.state is state

