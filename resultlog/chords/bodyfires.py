"""Celery chord bodies' fire marks: a body sent once per completion, and again only
after a processor died while sending it.

Before the processor sends a chord's body it marks the completion's ``event_id``
firing in ``names.CHORD_BODY_FIRES_TABLE`` (views/sql/0011_chord_body_fires.sql) and
waits for the commit; once the broker took the body it marks it fired. A completion
delivered again whose mark says fired is not sent again; one still firing is (the
processor died in between and may or may not have sent it: never a chord left
hanging, at the price of a possible second send). Why PostgreSQL and not Redis (where
the marks were until 1 Dec 2026): resultlog/chords/marks.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg  # type: ignore[import-untyped]

from resultlog import names
from resultlog.chords.marks import ChordMarks
from resultlog.schemas.taskrows import to_pg_text
from resultlog.settings import Settings


@dataclass(frozen=True)
class FireMark:
    """What :meth:`BodyFires.begin` found: ``fired`` (sent already: do not send), else
    marked firing by this attempt; ``interrupted``: the token of an earlier attempt that
    marked it firing and never said fired (None: the first)."""

    fired: bool
    interrupted: str | None = None


class BodyFires(ChordMarks):
    """The fire marks table of one schema."""

    table_name = names.CHORD_BODY_FIRES_TABLE
    application_name = "resultlog-chord-bodies"
    not_migrated = ("PostgreSQL schema {schema!r} has no chord body fires table ({exc}): "
                    "BodyFires.start() creates it, or check RESULTLOG_POSTGRES_SCHEMA")

    def __init__(self, settings: Settings, pool: asyncpg.Pool | None = None) -> None:
        super().__init__(settings, pool)
        # One statement, so one commit: the mark inserted or taken over unless it says
        # fired (``marked``: 0 then), and the mark it replaced (read in the statement's
        # snapshot). A retry after a commit whose answer was lost finds its own token.
        self._begin = (
            f"WITH prev AS (SELECT marked_by FROM {self.table} WHERE event_id = $1),"
            f" up AS (INSERT INTO {self.table} AS m (event_id, chord_id, marked_by, expires_at)"
            " VALUES ($1, $2, $3, now() + make_interval(secs => $4::double precision))"
            " ON CONFLICT (event_id) DO UPDATE SET marked_by = EXCLUDED.marked_by, marked_at = now()"
            " WHERE NOT m.fired RETURNING 1)"
            " SELECT (SELECT count(*) FROM up) AS marked, (SELECT marked_by FROM prev) AS previous"
        )
        self._fired = f"UPDATE {self.table} SET fired = true, marked_at = now() WHERE event_id = $1"

    async def begin(self, event_id: str, chord_id: str, token: str, ttl_s: int | None) -> FireMark:
        """Mark the body of completion ``event_id`` firing by ``token`` unless it was
        fired. ``ttl_s``: how long the mark is kept (None: for ever). Raises
        StoreUnavailable (retriable: retry with the same token) if PostgreSQL is."""
        async with self._connection() as conn:
            row = await conn.fetchrow(self._begin, to_pg_text(event_id), to_pg_text(chord_id),
                                      token, None if ttl_s is None else float(ttl_s))
        if not row["marked"]:
            return FireMark(fired=True)
        previous: str | None = row["previous"]
        return FireMark(fired=False, interrupted=None if previous in (None, token) else previous)

    async def fired(self, event_id: str) -> None:
        """Mark the body of completion ``event_id`` sent (idempotent)."""
        async with self._connection() as conn:
            await conn.execute(self._fired, to_pg_text(event_id))
