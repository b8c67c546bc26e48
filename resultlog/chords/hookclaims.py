"""The chord hooks' claims: at most one run of the hooks per chord completion.

Before the hooks' agent runs the hooks for a completion it inserts a row keyed by the
completion's ``event_id`` (the same on every emission of a chord's completion) into
``names.CHORD_HOOK_CLAIMS_TABLE`` (views/sql/0010_chord_hook_claims.sql) and waits for
the commit; a completion delivered again finds the row and its hooks are skipped
(docs/chords.md, "Once").

Why PostgreSQL and not Redis (where the claims were until 1 Dec 2026): a completion is
delivered again after a crash (the agent's offsets are committed periodically; the
aggregator may publish a completion twice), and a Redis that restarted empty, was
flushed or failed over had lost the claims by then, so the hooks ran twice. A claim
records a side effect that happened; it must be in the store that keeps what it was
told once it said so: the connections commit synchronously (``synchronous_commit = on``
whatever the server's default), and the claim is answered only once it is durable.
"""

from __future__ import annotations

from typing import Final

import asyncpg  # type: ignore[import-untyped]

from resultlog import names
from resultlog.schemas.taskrows import to_pg_text
from resultlog.settings import Settings
from resultlog.views import migrations
from resultlog.views.migrations import quote_ident
from resultlog.views.pg import PooledStore, create_pool

#: Expired claims deleted per statement (short transactions).
SWEEP_ROWS: Final = 10_000


class HookClaims(PooledStore):
    """The claims table of one schema (``pool``: see PooledStore; a shared pool must
    commit synchronously, the server's default)."""

    application_name = "resultlog-chord-hooks"
    not_migrated = ("PostgreSQL schema {schema!r} has no chord hook claims table ({exc}): "
                    "HookClaims.start() creates it, or check RESULTLOG_POSTGRES_SCHEMA")

    def __init__(self, settings: Settings, pool: asyncpg.Pool | None = None) -> None:
        super().__init__(settings, pool)
        table = f"{quote_ident(settings.postgres_schema)}.{names.CHORD_HOOK_CLAIMS_TABLE}"
        # One statement, so one commit. The row is ours if this statement inserted it,
        # or if an earlier attempt with the same token did: its commit went through but
        # the answer was lost with the connection, and the retry must not take our own
        # claim for another's (the hooks would never run). A claim inserted by another
        # processor concurrently is waited for by the INSERT and invisible to the
        # statement's SELECT: not ours, as it should be.
        self._claim = (
            f"WITH ins AS (INSERT INTO {table} (event_id, chord_id, claimed_by, expires_at)"
            " VALUES ($1, $2, $3, now() + make_interval(secs => $4::double precision))"
            " ON CONFLICT (event_id) DO NOTHING RETURNING claimed_by)"
            f" SELECT claimed_by FROM ins UNION ALL SELECT claimed_by FROM {table} WHERE event_id = $1"
        )
        self._sweep = (
            f"DELETE FROM {table} WHERE event_id IN"
            f" (SELECT event_id FROM {table} WHERE expires_at < now() LIMIT $1)"
        )

    async def start(self) -> None:
        """Open the pool (unless one was given) and bring the schema up to date: the
        agent may get a completion before the fold has migrated a new schema
        (migrate is idempotent, safe concurrently, and one query when current)."""
        if self._pool is None:
            self._pool = await create_pool(self.settings, application_name=self.application_name,
                                           max_size=2, server_settings={"synchronous_commit": "on"})
            self._own_pool = True
        migrations.load_migrations()  # file errors are not connection errors: outside
        async with self._connection() as conn:
            await migrations.migrate(conn, self.settings.postgres_schema)

    async def claim(self, event_id: str, chord_id: str, token: str, ttl_s: int | None) -> bool:
        """Claim the hooks' run of completion ``event_id``: True if it is ``token``'s
        (inserted now, or by an earlier call with the same token), False if another
        claimed it. ``ttl_s``: how long the claim is kept (None: for ever). Raises
        StoreUnavailable (retriable: retry with the same token) if PostgreSQL is."""
        async with self._connection() as conn:
            rows = await conn.fetch(self._claim, to_pg_text(event_id), to_pg_text(chord_id),
                                    token, None if ttl_s is None else float(ttl_s))
        return any(r["claimed_by"] == token for r in rows)

    async def sweep(self) -> int:
        """Delete the expired claims; returns how many went."""
        deleted = 0
        while True:
            async with self._connection() as conn:
                status: str = await conn.execute(self._sweep, SWEEP_ROWS)
            n = int(status.rsplit(" ", 1)[1])  # "DELETE <n>"
            deleted += n
            if n < SWEEP_ROWS:
                return deleted

    async def count(self) -> int:
        """How many claims the table holds (expired or not)."""
        rows = await self._fetch(
            f"SELECT count(*) AS n FROM {quote_ident(self.settings.postgres_schema)}"
            f".{names.CHORD_HOOK_CLAIMS_TABLE}")
        n: int = rows[0]["n"]
        return n
