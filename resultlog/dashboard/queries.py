"""The dashboard's reads of what only the history's events and the task summary hold:
task names, one task's lineage, recent chords; each bounded by a time window or a task
id and served by an index (docs/dashboard.md, "What each page reads").
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from resultlog import names
from resultlog.dashboard.reads import SchemaReads, distinct_values
from resultlog.schemas.taskrows import from_pg_text, to_pg_text

#: Ids listed per lineage relation on a task's page.
LINEAGE_LIMIT = 200


@dataclass(frozen=True, slots=True)
class Lineage:
    parent_id: str | None
    root_id: str | None
    group_id: str | None
    chord_id: str | None
    children: list[str]
    group_members: list[str]
    chord_members: list[str]


class HistoryReads(SchemaReads):
    """The dashboard's queries over one schema's history, on a shared pool."""

    def __init__(self, pool: asyncpg.Pool, schema: str) -> None:
        super().__init__(pool, schema)
        self._history = self.table(names.HISTORY_TABLE)
        self._summary = self.table(names.TASK_SUMMARY_TABLE)

    async def names(self, limit: int = 200) -> list[str]:
        """Task names in the summary (skipping through the name index), for a filter."""
        rows = await self.pool.fetch(
            f"""
            WITH RECURSIVE {distinct_values("n", self._summary, "task_name")}
            SELECT value FROM n WHERE value IS NOT NULL LIMIT $1
            """, limit)
        return [from_pg_text(r["value"]) for r in rows]

    async def lineage(self, task_id: str, parent_id: str | None, root_id: str | None,
                      group_id: str | None, chord_id: str | None) -> Lineage:
        async def ids(column: str, value: str | None, exclude: str) -> list[str]:
            if value is None:
                return []
            rows = await self.pool.fetch(
                f"SELECT DISTINCT task_id FROM {self._history} WHERE {column} = $1"
                " AND task_id <> $2 ORDER BY task_id LIMIT $3",
                to_pg_text(value), to_pg_text(exclude), LINEAGE_LIMIT)
            return [from_pg_text(r["task_id"]) for r in rows]

        return Lineage(
            parent_id=parent_id, root_id=root_id, group_id=group_id, chord_id=chord_id,
            children=await ids("parent_id", task_id, task_id),
            group_members=await ids("group_id", group_id, task_id),
            chord_members=await ids("chord_id", chord_id, task_id),
        )

    async def recent_chords(self, since: datetime, limit: int = 50) -> list[tuple[str, int]]:
        """(chord id, size) of chords whose members had events since ``since``."""
        rows: list[Any] = await self.pool.fetch(
            f"SELECT chord_id, max(chord_size) AS size FROM {self._history}"
            " WHERE ts >= $1 AND chord_id IS NOT NULL GROUP BY chord_id"
            " ORDER BY max(ts) DESC LIMIT $2", since, limit)
        return [(from_pg_text(r["chord_id"]), r["size"] or 0) for r in rows]
