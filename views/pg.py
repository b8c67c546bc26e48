"""The asyncpg boundary: pools, and connection failures translated into StoreUnavailable."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import AbstractContextManager, asynccontextmanager, contextmanager
from types import TracebackType
from typing import Any, ClassVar, Self

import asyncpg  # type: ignore[import-untyped]

from resultlog.connections import postgres_dsn
from resultlog.errors import ConfigurationError, StoreUnavailable
from resultlog.redaction import redact_url
from resultlog.refusals import postgres_refusal
from resultlog.settings import Settings
from resultlog.views.migrations import NOT_MIGRATED

CONNECT_TIMEOUT_S = 10.0

# Failures that mean "the server cannot be reached or will not let us in", as opposed
# to an error in what we asked it (those keep their asyncpg type: they are bugs).
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, unreachable, unknown host
    TimeoutError,
    asyncpg.PostgresConnectionError,  # connection lost mid-query, rejected, ...
    asyncpg.CannotConnectNowError,  # starting up / shutting down
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
    asyncpg.InvalidAuthorizationSpecificationError,  # unknown role, bad password
    asyncpg.InvalidCatalogNameError,  # no such database
)


def unavailable(settings: Settings, exc: BaseException) -> StoreUnavailable:
    return StoreUnavailable(
        f"PostgreSQL at {redact_url(settings.postgres_dsn)} is unavailable "
        f"({type(exc).__name__}: {exc}). Start it (`resultlog dev up` for the local stack) "
        "or set RESULTLOG_POSTGRES_DSN to a server that is running"
    )


@contextmanager
def translate_errors(settings: Settings) -> Iterator[None]:
    """Re-raise connection failures inside the block as :class:`StoreUnavailable`, and a
    refusal (wrong password, untrusted certificate, TLS required) as the
    ConfigurationError naming the setting to fix."""
    try:
        yield
    except CONNECTION_ERRORS as exc:
        refused = postgres_refusal(exc)
        if refused is not None:
            raise refused from exc
        raise unavailable(settings, exc) from exc


@contextmanager
def guarded(settings: Settings, not_migrated: str) -> Iterator[None]:
    """Connection failures -> StoreUnavailable (translate_errors); a schema never
    migrated -> a ConfigurationError saying so (rather than "relation does not exist"):
    ``not_migrated`` with ``{schema!r}`` and ``{exc}`` (the schema, the error)."""
    with translate_errors(settings):
        try:
            yield
        except NOT_MIGRATED as exc:
            raise ConfigurationError(not_migrated.format(
                schema=settings.postgres_schema, exc=exc)) from None


async def create_pool(settings: Settings, *, application_name: str, max_size: int = 4,
                      server_settings: Mapping[str, str] | None = None,
                      init: Callable[[asyncpg.Connection], Awaitable[None]] | None = None,
                      reset: Callable[[asyncpg.Connection], Awaitable[None]] | None = None,
                      ) -> asyncpg.Pool:
    """A pool on ``settings.postgres_dsn``; ``server_settings`` are set on each of its
    connections, and ``init`` is awaited on each new one. ``reset`` replaces asyncpg's
    reset of a released connection (one round trip to the server: ``RESET ALL``,
    ``UNLISTEN *``, ...) for a pool whose users leave no session state behind; an open
    transaction is rolled back either way."""
    with translate_errors(settings):
        pool: asyncpg.Pool = await asyncpg.create_pool(
            postgres_dsn(settings),
            min_size=1,
            max_size=max_size,
            timeout=CONNECT_TIMEOUT_S,
            server_settings={**(server_settings or {}), "application_name": application_name},
            init=init,
            reset=reset,
        )
    return pool


class PooledStore:
    """The lifetime of an asyncpg pool that a store either shares or owns.

    ``pool``: a pool to share (left open by :meth:`close`); by default the store makes
    its own from ``settings.postgres_dsn`` in :meth:`start`.
    """

    application_name: ClassVar[str] = "resultlog"
    # What _guard says of a schema never migrated (see guarded).
    not_migrated: ClassVar[str] = (
        "PostgreSQL schema {schema!r} has no history tables: the processor creates them on "
        "start (`resultlog process`; HistoryStore.migrate() in code), or check "
        "RESULTLOG_POSTGRES_SCHEMA")

    def __init__(self, settings: Settings, pool: asyncpg.Pool | None = None) -> None:
        self.settings = Settings.given(settings, type(self).__name__)
        self._pool = pool
        self._own_pool = pool is None

    async def start(self) -> None:
        if self._pool is None:
            self._pool = await create_pool(self.settings, application_name=self.application_name)

    async def close(self) -> None:
        """Close the pool if this store made it. Idempotent."""
        if self._own_pool and self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError(f"{type(self).__name__}.start() first")
        return self._pool

    def _guard(self) -> AbstractContextManager[None]:
        return guarded(self.settings, self.not_migrated)

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection for one write, its failures translated (``_guard``).

        A server that died mid-write (a PostgreSQL SIGKILL) surfaces from asyncpg not only
        as connection errors but as client-side state errors, in the block or when the
        pool resets the connection at release: InternalClientError ("cannot switch to
        state 15; another operation (2) is in progress": the lost operation still counts
        as running) and InterfaceError ("the underlying connection is closed"). Those mean
        the connection is gone: they become ConnectionError, which the guard makes a
        retriable StoreUnavailable (the stores' writes are idempotent). An InterfaceError
        on an open connection is a misuse, a bug: RuntimeError, never retried."""
        with self._guard():
            try:
                async with self.pool.acquire() as conn:
                    try:
                        yield conn
                    except asyncpg.InterfaceError as exc:
                        if not conn.is_closed():
                            raise RuntimeError(f"PostgreSQL connection misused: {exc}") from exc
                        raise ConnectionError(f"PostgreSQL connection closed mid-write: {exc}") from exc
            except (asyncpg.InternalClientError, asyncpg.InterfaceError) as exc:
                raise ConnectionError(f"PostgreSQL connection lost mid-write: {exc}") from exc

    async def _fetch(self, query: str, *args: Any) -> list[Any]:
        with self._guard():
            rows: list[Any] = await self.pool.fetch(query, *args)
        return rows
