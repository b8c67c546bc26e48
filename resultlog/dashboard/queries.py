"""The dashboard's reads of the Postgres history: rates over time, workers, one task.

Per-name statistics come from :class:`~resultlog.views.analytics.Analytics` (the same
``task_stats()`` as ``resultlog stats``); this module adds what only the dashboard
shows. Each query is bounded by a time window or a task id and served by an index
(``views/sql/0001_history.sql``, ``0004_task_summary.sql``); docs/dashboard.md times
them on a history of a million tasks.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from resultlog import names
from resultlog.schemas.states import State
from resultlog.schemas.taskrows import from_pg_text, to_pg_text
from resultlog.views.migrations import quote_ident

#: Ids listed per lineage relation on a task's page.
LINEAGE_LIMIT = 200


@dataclass(frozen=True, slots=True)
class StateSeries:
    """Events per second of each state, per bucket of a window (for a plot)."""

    bucket_starts: list[float]  # seconds since the epoch
    per_state: dict[str, list[float]]  # state -> events/s in each bucket


@dataclass(frozen=True, slots=True)
class WorkerRow:
    worker: str
    tasks: int  # tasks first seen in the window whose latest event names this worker
    failed: int
    last_task: datetime  # when the worker's most recent task was first seen
    failure_rate: float | None


@dataclass(frozen=True, slots=True)
class Lineage:
    parent_id: str | None
    root_id: str | None
    group_id: str | None
    chord_id: str | None
    children: list[str]
    group_members: list[str]
    chord_members: list[str]


def buckets(since: datetime, until: datetime, width: timedelta) -> list[datetime]:
    """The starts of the buckets of ``width`` covering [since, until)."""
    out: list[datetime] = []
    at = since
    while at < until:
        out.append(at)
        at += width
    return out


class HistoryReads:
    """The dashboard's queries over one schema's history, on a shared pool."""

    def __init__(self, pool: asyncpg.Pool, schema: str) -> None:
        self.pool = pool
        s = quote_ident(schema)
        self._history = f"{s}.{names.HISTORY_TABLE}"
        self._summary = f"{s}.{names.TASK_SUMMARY_TABLE}"

    async def state_series(self, since: datetime, until: datetime,
                           width: timedelta) -> StateSeries:
        # The (ts, event_id) index bounds the scan to the window's partitions and rows.
        rows = await self.pool.fetch(
            f"SELECT date_bin($3, ts, $1) AS b, state, count(*) AS n FROM {self._history}"
            " WHERE ts >= $1 AND ts < $2 GROUP BY 1, 2", since, until, width)
        starts = buckets(since, until, width)
        index = {b: i for i, b in enumerate(starts)}
        per_state: dict[str, list[float]] = {}
        seconds = width.total_seconds()
        for r in rows:
            i = index.get(r["b"])
            if i is None:
                continue
            series = per_state.setdefault(r["state"], [0.0] * len(starts))
            series[i] = r["n"] / seconds
        order = {s.value: i for i, s in enumerate(State)}
        ordered = dict(sorted(per_state.items(), key=lambda kv: order.get(kv[0], 99)))
        return StateSeries([b.timestamp() for b in starts], ordered)

    async def workers(self, since: datetime) -> list[WorkerRow]:
        """Every worker the summary names (found by skipping through the worker index,
        one probe per worker), with its tasks first seen since ``since``."""
        rows = await self.pool.fetch(
            f"""
            WITH RECURSIVE w(worker) AS (
                (SELECT worker FROM {self._summary} WHERE worker IS NOT NULL
                 ORDER BY worker LIMIT 1)
                UNION ALL
                SELECT (SELECT s.worker FROM {self._summary} s WHERE s.worker > w.worker
                        ORDER BY s.worker LIMIT 1)
                FROM w WHERE w.worker IS NOT NULL
            )
            SELECT w.worker, c.tasks, c.failed,
                   (SELECT max(s.first_seen) FROM {self._summary} s
                    WHERE s.worker = w.worker) AS last_task
            FROM w
            CROSS JOIN LATERAL (
                SELECT count(*) AS tasks, count(*) FILTER (WHERE s.state = 'FAILURE') AS failed
                FROM {self._summary} s WHERE s.worker = w.worker AND s.first_seen >= $1
            ) c
            WHERE w.worker IS NOT NULL
            ORDER BY last_task DESC
            """, since)
        return [
            WorkerRow(worker=from_pg_text(r["worker"]), tasks=r["tasks"], failed=r["failed"],
                      last_task=r["last_task"],
                      failure_rate=r["failed"] / r["tasks"] if r["tasks"] else None)
            for r in rows
        ]

    async def names(self, limit: int = 200) -> list[str]:
        """Task names in the summary (skipping through the name index), for a filter."""
        rows = await self.pool.fetch(
            f"""
            WITH RECURSIVE n(name) AS (
                (SELECT task_name FROM {self._summary} WHERE task_name IS NOT NULL
                 ORDER BY task_name LIMIT 1)
                UNION ALL
                SELECT (SELECT s.task_name FROM {self._summary} s WHERE s.task_name > n.name
                        ORDER BY s.task_name LIMIT 1)
                FROM n WHERE n.name IS NOT NULL
            )
            SELECT name FROM n WHERE name IS NOT NULL LIMIT $1
            """, limit)
        return [from_pg_text(r["name"]) for r in rows]

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
