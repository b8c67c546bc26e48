"""``ResultSet`` / ``GroupResult`` (sync) and ``AioResultSet`` / ``AioGroupResult`` (asyncio).

Celery's semantics, under ONE deadline for the whole set, raising the first failure in
member order: docs/results.md, "What you get".
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, ClassVar, Generic, TypeVar, overload

from resultlog.errors import ResultTimeout, ValidationError
from resultlog.schemas.event import listed_ids, validate_id
from resultlog.schemas.fold import TaskView
from resultlog.schemas.states import State
from resultlog.timeouts import checked_timeout
from resultlog.views.result import AioAsyncResult, AsyncResult, BaseResult

R = TypeVar("R", bound=BaseResult)


class _Members(Generic[R]):
    __slots__ = ("results",)
    #: The flavour of result a member must be.
    member_type: ClassVar[type[BaseResult]]

    def __init__(self, results: Iterable[R]) -> None:
        # A lone string would be one member per character; a task id (only the
        # backend's factories make results of ids) would fail at the first read.
        self.results: list[R] = [self._checked(r) for r in listed_ids(results)]

    def add(self, result: R) -> None:
        """Add a member (no-op if it is one already)."""
        self._checked(result)
        if result not in self.results:
            self.results.append(result)

    def _checked(self, result: object) -> R:
        if not isinstance(result, self.member_type):
            kind, name = self.member_type.__name__, type(self).__name__
            raise ValidationError(
                f"{name} members must be {kind}s, got {type(result).__name__} {result!r:.60}; "
                f"pass backend.{kind}(task_id), or make the set with backend.{name}(...), "
                f"which takes task ids")
        return result  # type: ignore[return-value]  # R is member_type, for each subclass

    def __len__(self) -> int:
        return len(self.results)

    def __iter__(self) -> Iterator[R]:
        return iter(self.results)

    @overload
    def __getitem__(self, index: int) -> R: ...
    @overload
    def __getitem__(self, index: slice) -> list[R]: ...
    def __getitem__(self, index: int | slice) -> R | list[R]:
        return self.results[index]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, _Members):
            return bool(other.results == self.results)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: [{', '.join(r.id for r in self.results)}]>"

    def _same_backend(self) -> bool:
        return len({id(r.backend) for r in self.results}) <= 1

    def _to_read(self) -> tuple[list[TaskView | None], list[list[int]]]:
        """The members' cached (ready) views, and the indices of the others by backend."""
        views = [r.cached() for r in self.results]
        by_backend: dict[int, list[int]] = {}
        for i, view in enumerate(views):
            if view is None:
                by_backend.setdefault(id(self.results[i].backend), []).append(i)
        return views, list(by_backend.values())

    def _fill(self, views: list[TaskView | None], indices: list[int],
              fresh: Sequence[TaskView | None]) -> None:
        for i, view in zip(indices, fresh):
            views[i] = self.results[i].keep(view)

    def _settled(self, views: Sequence[TaskView], propagate: bool) -> list[Any]:
        """What ``join()`` returns for views waited for (raises the first failure in order)."""
        values = []
        for r, view in zip(self.results, views):
            r.keep(view)
            values.append(r.settle(view, propagate))
        return values

    @staticmethod
    def _deadline(timeout: float | None) -> float | None:
        # Checked as one backend's wait checks it: members on several backends are
        # waited for one after another, under this one deadline.
        seconds = checked_timeout(timeout, negative=True)
        return None if seconds is None or seconds == math.inf else time.monotonic() + seconds

    def _remaining(self, deadline: float | None) -> float | None:
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            raise ResultTimeout("the result set was not ready in time")
        return remaining


class _GroupId:
    """Equality, ``str`` and ``repr`` of a result set with a group id (both flavours)."""

    __slots__ = ()
    id: str
    results: list[Any]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, type(self)):
            return other.id == self.id and other.results == self.results
        if isinstance(other, str):
            return other == self.id
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __str__(self) -> str:
        return self.id

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self.id} [{', '.join(r.id for r in self.results)}]>"


def _summary(views: Sequence[TaskView | None]) -> dict[str, Any]:
    ready = [v is not None and v.ready for v in views]
    states = [None if v is None else v.state for v in views]
    return {
        "ready": all(ready),
        "waiting": not all(ready),
        "successful": all(s is State.SUCCESS for s in states),
        "failed": any(s is State.FAILURE for s in states),
        "completed_count": sum(1 for s in states if s is State.SUCCESS),
    }


class ResultSet(_Members[AsyncResult]):
    """A collection of sync :class:`AsyncResult`."""

    __slots__ = ()
    member_type = AsyncResult

    def _views(self) -> list[TaskView | None]:
        # Ready members are cached; the rest are read in one round trip per backend.
        views, to_read = self._to_read()
        for indices in to_read:
            backend = self.results[indices[0]].backend
            self._fill(views, indices, backend.read_many([self.results[i].id for i in indices]))
        return views

    def ready(self) -> bool:
        return bool(_summary(self._views())["ready"])

    def waiting(self) -> bool:
        return bool(_summary(self._views())["waiting"])

    def successful(self) -> bool:
        return bool(_summary(self._views())["successful"])

    def failed(self) -> bool:
        return bool(_summary(self._views())["failed"])

    def completed_count(self) -> int:
        return int(_summary(self._views())["completed_count"])

    def forget(self) -> None:
        for r in self.results:
            r.forget()

    def join(self, timeout: float | None = None, propagate: bool = True, interval: float = 0.5) -> list[Any]:
        """Every member's result, in order, waiting at most ``timeout`` s in all."""
        if not self.results:
            return []
        if not self._same_backend():
            return self._join_sequentially(timeout, propagate)
        backend = self.results[0].backend
        return self._settled(backend.wait_many([r.id for r in self.results], timeout, propagate), propagate)

    get = join

    def _join_sequentially(self, timeout: float | None, propagate: bool) -> list[Any]:
        deadline = self._deadline(timeout)
        return [r.get(timeout=self._remaining(deadline), propagate=propagate) for r in self.results]


class GroupResult(_GroupId, ResultSet):
    """A :class:`ResultSet` with the group's id."""

    __slots__ = ("id",)

    def __init__(self, id: str, results: Iterable[AsyncResult]) -> None:
        # As an event's group_id is checked: str() and repr() of it must be a str.
        self.id = validate_id("group_id", id)
        super().__init__(results)


class AioResultSet(_Members[AioAsyncResult]):
    """A collection of :class:`AioAsyncResult`; the queries are coroutines."""

    __slots__ = ()
    member_type = AioAsyncResult

    async def _views(self) -> list[TaskView | None]:
        views, to_read = self._to_read()
        for indices in to_read:
            state = self.results[indices[0]].backend.aio()
            self._fill(views, indices, await state.read_many([self.results[i].id for i in indices]))
        return views

    async def ready(self) -> bool:
        return bool(_summary(await self._views())["ready"])

    async def waiting(self) -> bool:
        return bool(_summary(await self._views())["waiting"])

    async def successful(self) -> bool:
        return bool(_summary(await self._views())["successful"])

    async def failed(self) -> bool:
        return bool(_summary(await self._views())["failed"])

    async def completed_count(self) -> int:
        return int(_summary(await self._views())["completed_count"])

    async def forget(self) -> None:
        for r in self.results:
            await r.forget()

    async def join(
        self, timeout: float | None = None, propagate: bool = True, interval: float = 0.5
    ) -> list[Any]:
        """As :meth:`ResultSet.join`, without blocking the event loop."""
        if not self.results:
            return []
        if not self._same_backend():
            return await self._join_sequentially(timeout, propagate)
        state = self.results[0].backend.aio()
        return self._settled(await state.wait_many([r.id for r in self.results], timeout, propagate), propagate)

    get = join

    async def _join_sequentially(self, timeout: float | None, propagate: bool) -> list[Any]:
        deadline = self._deadline(timeout)
        return [await r.get(timeout=self._remaining(deadline), propagate=propagate) for r in self.results]


class AioGroupResult(_GroupId, AioResultSet):
    """An :class:`AioResultSet` with the group's id."""

    __slots__ = ("id",)

    def __init__(self, id: str, results: Iterable[AioAsyncResult]) -> None:
        # As an event's group_id is checked: str() and repr() of it must be a str.
        self.id = validate_id("group_id", id)
        super().__init__(results)
