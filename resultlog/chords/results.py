"""``ChordResult`` (sync) and ``AioChordResult`` (asyncio): a chord's outcome, read from
the chord view. Both wait with :func:`~resultlog.chords.store.wait_chord`, the sync flavour
through :meth:`ResultBackend.run <resultlog.views.backend.ResultBackend.run>` on the
process's loop thread (it reads the view in the caller's thread).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from resultlog import names
from resultlog.chords.records import decode_results
from resultlog.chords.store import ChordView, chord_view_from_hash, read_chord, wait_chord
from resultlog.errors import ChordError
from resultlog.redis_access import translated
from resultlog.schemas.event import validate_id
from resultlog.schemas.states import State
from resultlog.views.result import checked_backend

if TYPE_CHECKING:
    from resultlog.views.backend import ResultBackend


class _ChordResultBase:
    """What both flavours share: everything derives from a :class:`ChordView`."""

    __slots__ = ("id", "backend", "_view")

    def __init__(self, chord_id: str, backend: ResultBackend) -> None:
        self.id: str = validate_id("chord_id", chord_id)
        self.backend = checked_backend(backend, type(self).__name__)
        self._view: ChordView | None = None

    def _current(self) -> ChordView:
        raise NotImplementedError

    @property
    def view(self) -> ChordView:
        return self._current()

    @property
    def state(self) -> str:
        """PENDING, STARTED, SUCCESS or FAILURE."""
        return self._current().state

    @property
    def size(self) -> int | None:
        """The number of members (None while neither declaration nor member was seen)."""
        return self._current().size

    def _settle(self, view: ChordView, propagate: bool) -> Any:
        """What ``get()`` returns (or raises) for a completed chord."""
        if view.state == State.SUCCESS.value:
            return [] if view.results is None else decode_results(self.id, view.results)
        error = self._error(view)
        if propagate:
            raise error
        return error

    def _error(self, view: ChordView) -> ChordError:
        m = view.failed_member
        if m is None:
            return ChordError(f"chord {self.id} failed")
        error = ChordError(f"chord {self.id} failed: {m.describe()}")
        if m.exception is not None:
            # The member's own exception, rebuilt by the backend's rules, as the cause.
            error.__cause__ = self.backend.exceptions.rebuild(m.exception)
        return error

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self.id}>"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, _ChordResultBase):
            return other.id == self.id
        if isinstance(other, str):
            return other == self.id
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.id)


class ChordResult(_ChordResultBase):
    """A chord's outcome, sync flavour: ``backend.ChordResult(chord_id)``.

    Attributes read Redis until the chord has completed, then stay cached (a completed
    chord never changes).
    """

    __slots__ = ()

    def _current(self) -> ChordView:
        if self._view is not None and self._view.ready:
            return self._view
        with translated("reading a chord"):
            fields = self.backend.sync_client().hgetall(
                names.chord_key(self.backend.settings.redis_prefix, self.id))
        self._view = chord_view_from_hash(self.id, fields)
        return self._view

    def completed_count(self) -> int:
        """Members that succeeded (Celery's meaning of "completed")."""
        return self._current().succeeded

    def ready(self) -> bool:
        return self._current().ready

    def successful(self) -> bool:
        return self._current().state == State.SUCCESS.value

    def failed(self) -> bool:
        return self._current().state == State.FAILURE.value

    def get(self, timeout: float | None = None, propagate: bool = True, interval: float = 0.5) -> Any:
        """The members' results in index order, once the chord completed (woken by push).

        A failed chord raises :class:`~resultlog.errors.ChordError` naming the failed
        member (its rebuilt exception is the ``__cause__``), or returns it when
        ``propagate`` is false; :class:`~resultlog.errors.ResultTimeout` after
        ``timeout`` s. ``interval`` is accepted for Celery compatibility and ignored.
        """
        view = self._current()
        if not view.ready:
            view = self._view = self.backend.run(lambda state: wait_chord(state, self.id, timeout))
        return self._settle(view, propagate)


class AioChordResult(_ChordResultBase):
    """A chord's outcome, asyncio flavour: ``backend.AioChordResult(chord_id)``.

    As with ``AioAsyncResult``, attributes (``state``, ``size``, ``view``) show the
    snapshot loaded by the last awaited call; reading one before any raises
    :class:`RuntimeError`.
    """

    __slots__ = ()

    def _current(self) -> ChordView:
        if self._view is None:
            raise RuntimeError(f"{self!r} has not been loaded yet: await refresh(), get() or ready() first")
        return self._view

    async def _load(self) -> ChordView:
        if self._view is None or not self._view.ready:
            state = self.backend.aio()
            async with state.op():
                self._view = await read_chord(state.client, self.backend.settings.redis_prefix, self.id)
        return self._view

    async def refresh(self) -> AioChordResult:
        await self._load()
        return self

    async def completed_count(self) -> int:
        return (await self._load()).succeeded

    async def ready(self) -> bool:
        return (await self._load()).ready

    async def successful(self) -> bool:
        return (await self._load()).state == State.SUCCESS.value

    async def failed(self) -> bool:
        return (await self._load()).state == State.FAILURE.value

    async def get(self, timeout: float | None = None, propagate: bool = True, interval: float = 0.5) -> Any:
        """As :meth:`ChordResult.get`, without blocking the event loop."""
        view = self._view
        if view is None or not view.ready:
            view = await wait_chord(self.backend.aio(), self.id, timeout)
            self._view = view
        return self._settle(view, propagate)
