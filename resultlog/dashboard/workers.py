"""The workers page's reads (docs/dashboard.md): each worker's latest heartbeat
(``worker_heartbeats``) and its tasks first seen in the window (``task_summary``),
joined on the worker's name, each found by skipping through an index (one probe per
worker).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg  # type: ignore[import-untyped]

from resultlog import names
from resultlog.dashboard.reads import SchemaReads, distinct_values
from resultlog.schemas.taskrows import from_pg_text


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """A worker's latest heartbeat, as the page shows it."""

    source: str
    hostname: str
    pid: int
    started_at: datetime
    beat_at: datetime
    status: str  # "alive", "stopped" (it said so) or "offline" (its heartbeat expired)
    processed: int  # the worker's own counters, since it started
    failed: int
    active: int

    @property
    def failure_rate(self) -> float | None:
        return self.failed / self.processed if self.processed else None


@dataclass(frozen=True, slots=True)
class WorkerRow:
    worker: str
    tasks: int  # tasks first seen in the window whose latest event names this worker
    failed: int
    last_task: datetime | None  # when the worker's most recent task was first seen
    heartbeat: Heartbeat | None  # None: no heartbeat of it in the history

    @property
    def failure_rate(self) -> float | None:
        return self.failed / self.tasks if self.tasks else None

    @property
    def last_seen(self) -> datetime | None:
        seen = [t for t in (self.last_task, self.heartbeat and self.heartbeat.beat_at) if t]
        return max(seen) if seen else None


def status(beat_at: datetime, ttl_s: int, is_running: bool, now: datetime) -> str:
    if not is_running:
        return "stopped"
    return "alive" if beat_at + timedelta(seconds=ttl_s) > now else "offline"


class WorkerReads(SchemaReads):
    def __init__(self, pool: asyncpg.Pool, schema: str) -> None:
        super().__init__(pool, schema)
        self._summary = self.table(names.TASK_SUMMARY_TABLE)
        self._beats = self.table(names.WORKER_HEARTBEATS_TABLE)

    async def workers(self, since: datetime, now: datetime) -> list[WorkerRow]:
        """Every worker, the alive first, then by when it was last seen."""
        beats = await self.heartbeats(now)
        tasks = await self.task_counts(since)
        rows = []
        for worker in beats.keys() | tasks.keys():
            n, failed, last = tasks.get(worker, (0, 0, None))
            rows.append(WorkerRow(worker, n, failed, last, beats.get(worker)))
        order = {"alive": 0, "offline": 1, "stopped": 1}

        def key(r: WorkerRow) -> tuple[int, float, str]:
            seen = r.last_seen
            return (order[r.heartbeat.status] if r.heartbeat else 2,
                    -seen.timestamp() if seen else 0.0, r.worker)
        return sorted(rows, key=key)

    async def heartbeats(self, now: datetime) -> dict[str, Heartbeat]:
        rows = await self.pool.fetch(
            f"""
            WITH RECURSIVE {distinct_values("w", self._beats, "worker_id")}
            SELECT l.* FROM w CROSS JOIN LATERAL (
                SELECT * FROM {self._beats} b WHERE b.worker_id = w.value
                ORDER BY b.beat_at DESC, b.event_id DESC LIMIT 1
            ) l
            WHERE w.value IS NOT NULL
            """)
        return {
            from_pg_text(r["worker_id"]): Heartbeat(  # escaped as written (views/workers.py)
                source=from_pg_text(r["source"]), hostname=from_pg_text(r["hostname"]), pid=r["pid"],
                started_at=r["started_at"], beat_at=r["beat_at"],
                status=status(r["beat_at"], r["ttl_s"], r["is_running"], now),
                processed=r["tasks_processed"], failed=r["tasks_failed"],
                active=r["active_tasks"])
            for r in rows
        }

    async def task_counts(self, since: datetime) -> dict[str, tuple[int, int, datetime]]:
        """worker -> (tasks, failed, latest first_seen), skipping through the summary's
        worker index (one probe per worker)."""
        rows = await self.pool.fetch(
            f"""
            WITH RECURSIVE {distinct_values("w", self._summary, "worker")}
            SELECT w.value AS worker, c.tasks, c.failed,
                   (SELECT max(s.first_seen) FROM {self._summary} s
                    WHERE s.worker = w.value) AS last_task
            FROM w
            CROSS JOIN LATERAL (
                SELECT count(*) AS tasks, count(*) FILTER (WHERE s.state = 'FAILURE') AS failed
                FROM {self._summary} s WHERE s.worker = w.value AND s.first_seen >= $1
            ) c
            WHERE w.value IS NOT NULL
            """, since)
        return {from_pg_text(r["worker"]): (r["tasks"], r["failed"], r["last_task"])
                for r in rows}
