"""The chords' marks in PostgreSQL: records of side effects a processor caused.

A chord's completion can be delivered again (a processor crashed before committing its
offsets, the aggregator published a completion twice). What the processor did for it
the first time (ran the hooks: ``HookClaims``; sent a Celery body: ``BodyFires``) is
marked in a table keyed by the completion's ``event_id``, so the delivery seen again
finds the mark. The marks are in PostgreSQL, not Redis: a Redis that restarted empty,
was flushed or failed over would have lost them by then, and the side effect would
happen again. A mark records something that happened; it must be in the store that
keeps what it was told once it said so: the connections commit synchronously
(``synchronous_commit = on`` whatever the server's default), and a mark is answered
only once it is durable. A mark is kept ``RESULTLOG_RESULT_TTL_S`` (as the chord's
view), then swept; a TTL of 0 keeps it for ever.
"""

from __future__ import annotations

import logging
import time
from typing import ClassVar, Final

import asyncpg  # type: ignore[import-untyped]

from resultlog.errors import ResultlogError
from resultlog.settings import Settings
from resultlog.views import migrations
from resultlog.views.migrations import quote_ident
from resultlog.views.pg import PooledStore, create_pool

log = logging.getLogger("resultlog.chords")

#: Expired marks deleted per statement (short transactions).
SWEEP_ROWS: Final = 10_000
#: :meth:`ChordMarks.sweep_now_and_then` sweeps at most this often.
SWEEP_INTERVAL_S: Final = 60.0


class ChordMarks(PooledStore):
    """One marks table (``table_name``, in ``names``) of one schema (``pool``: see
    PooledStore; a shared pool must commit synchronously, the server's default)."""

    table_name: ClassVar[str]

    def __init__(self, settings: Settings, pool: asyncpg.Pool | None = None) -> None:
        super().__init__(settings, pool)
        self.table = f"{quote_ident(settings.postgres_schema)}.{self.table_name}"
        self._swept_at = float("-inf")  # the first call sweeps: restarts do not put it off
        self._sweep = (
            f"DELETE FROM {self.table} WHERE event_id IN"
            f" (SELECT event_id FROM {self.table} WHERE expires_at < now() LIMIT $1)"
        )

    async def start(self) -> None:
        """Open the pool (unless one was given) and bring the schema up to date: a
        completion may come before the fold has migrated a new schema (migrate is
        idempotent, safe concurrently, and one query when current)."""
        if self._pool is None:
            self._pool = await create_pool(self.settings, application_name=self.application_name,
                                           max_size=2, server_settings={"synchronous_commit": "on"})
            self._own_pool = True
        migrations.load_migrations()  # file errors are not connection errors: outside
        async with self._connection() as conn:
            await migrations.migrate(conn, self.settings.postgres_schema)

    async def sweep(self) -> int:
        """Delete the expired marks; returns how many went."""
        deleted = 0
        while True:
            async with self._connection() as conn:
                status: str = await conn.execute(self._sweep, SWEEP_ROWS)
            n = int(status.rsplit(" ", 1)[1])  # "DELETE <n>"
            deleted += n
            if n < SWEEP_ROWS:
                return deleted

    async def sweep_now_and_then(self) -> None:
        """Sweep if the last sweep was ``SWEEP_INTERVAL_S`` ago (after a mark: the table
        grows only then). A failed sweep is logged; the next one deletes those rows."""
        if not self.settings.result_ttl_s or time.monotonic() - self._swept_at < SWEEP_INTERVAL_S:
            return  # a TTL of 0: the marks are kept for ever
        self._swept_at = time.monotonic()
        try:
            deleted = await self.sweep()
        except ResultlogError as exc:
            log.warning("expired marks in %s not deleted: %s", self.table, exc)
            return
        if deleted:
            log.info("%d expired marks deleted from %s", deleted, self.table)

    async def count(self) -> int:
        """How many marks the table holds (expired or not)."""
        rows = await self._fetch(f"SELECT count(*) AS n FROM {self.table}")
        n: int = rows[0]["n"]
        return n
