"""The chord hooks' claims: at most one run of the hooks per chord completion.

Before the hooks' agent runs the hooks for a completion it inserts a row keyed by the
completion's ``event_id`` (the same on every emission of a chord's completion) into
``names.CHORD_HOOK_CLAIMS_TABLE`` (views/sql/0010_chord_hook_claims.sql) and waits for
the commit; a completion delivered again finds the row and its hooks are skipped
(docs/chords.md, "Once"). Why PostgreSQL and not Redis (where the claims were until
1 Dec 2026): resultlog/chords/marks.py.
"""

from __future__ import annotations

import asyncpg  # type: ignore[import-untyped]

from resultlog import names
from resultlog.chords.marks import ChordMarks
from resultlog.schemas.taskrows import to_pg_text
from resultlog.settings import Settings


class HookClaims(ChordMarks):
    """The claims table of one schema."""

    table_name = names.CHORD_HOOK_CLAIMS_TABLE
    application_name = "resultlog-chord-hooks"
    not_migrated = ("PostgreSQL schema {schema!r} has no chord hook claims table ({exc}): "
                    "HookClaims.start() creates it, or check RESULTLOG_POSTGRES_SCHEMA")

    def __init__(self, settings: Settings, pool: asyncpg.Pool | None = None) -> None:
        super().__init__(settings, pool)
        # One statement, so one commit. The row is ours if this statement inserted it,
        # or if an earlier attempt with the same token did: its commit went through but
        # the answer was lost with the connection, and the retry must not take our own
        # claim for another's (the hooks would never run). A claim inserted by another
        # processor concurrently is waited for by the INSERT and invisible to the
        # statement's SELECT: not ours, as it should be.
        self._claim = (
            f"WITH ins AS (INSERT INTO {self.table} (event_id, chord_id, claimed_by, expires_at)"
            " VALUES ($1, $2, $3, now() + make_interval(secs => $4::double precision))"
            " ON CONFLICT (event_id) DO NOTHING RETURNING claimed_by)"
            f" SELECT claimed_by FROM ins UNION ALL SELECT claimed_by FROM {self.table} WHERE event_id = $1"
        )

    async def claim(self, event_id: str, chord_id: str, token: str, ttl_s: int | None) -> bool:
        """Claim the hooks' run of completion ``event_id``: True if it is ``token``'s
        (inserted now, or by an earlier call with the same token), False if another
        claimed it. ``ttl_s``: how long the claim is kept (None: for ever). Raises
        StoreUnavailable (retriable: retry with the same token) if PostgreSQL is."""
        async with self._connection() as conn:
            rows = await conn.fetch(self._claim, to_pg_text(event_id), to_pg_text(chord_id),
                                    token, None if ttl_s is None else float(ttl_s))
        return any(r["claimed_by"] == token for r in rows)
