"""The overview's reads of the rollups (views/sql/0005_rollups.sql): events per second
by state, and per task name the outcome rates and runtime percentiles of a window of
whole UTC minutes (:func:`minute_window`). What they read and how they compare with
``task_stats()``: docs/dashboard.md.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Final

import asyncpg  # type: ignore[import-untyped]

from resultlog import names
from resultlog.dashboard.histogram import percentiles
from resultlog.dashboard.reads import SchemaReads
from resultlog.errors import ValidationError
from resultlog.schemas.taskrows import from_pg_text, to_pg_text
from resultlog.views.analytics import NameStats

MINUTE: Final = timedelta(minutes=1)
HOUR: Final = timedelta(hours=1)
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=timezone.utc)
#: The per-state count columns of the minutes table, in the fold's state order.
STATE_COLUMNS: Final = {"RECEIVED": "received", "STARTED": "started", "RETRY": "retry",
                        "FAILURE": "failure", "SUCCESS": "success", "REVOKED": "revoked"}
_QS: Final = (0.5, 0.95, 0.99)


@dataclass(frozen=True, slots=True)
class StateSeries:
    """Events per second of each state, per bucket of a window (for a plot)."""

    bucket_starts: list[float]  # seconds since the epoch
    per_state: dict[str, list[float]]  # state -> events/s in each bucket


def floor_to(at: datetime, width: timedelta) -> datetime:
    """``at`` rounded down to a multiple of ``width`` since the epoch (UTC)."""
    return _EPOCH + ((at - _EPOCH) // width) * width


def minute_window(length: timedelta, now: datetime) -> tuple[datetime, datetime]:
    """The window of ``length`` (whole minutes) that ends with the minute holding
    ``now``: [since, until), both whole UTC minutes."""
    if length <= timedelta(0) or length % MINUTE:
        raise ValidationError(f"window {length} must be a positive number of whole minutes")
    until = floor_to(now, MINUTE) + MINUTE
    return until - length, until


def _check(since: datetime, until: datetime, width: timedelta | None = None) -> None:
    if since >= until or floor_to(since, MINUTE) != since or floor_to(until, MINUTE) != until:
        raise ValidationError(f"window [{since}, {until}) must span whole UTC minutes")
    if width is not None and (width <= timedelta(0) or width % MINUTE):
        raise ValidationError(f"bucket width {width} must be a positive number of whole minutes")


def _stats(name: str, start: datetime, end: datetime, counts: Any,
           hist: dict[int, int]) -> NameStats:
    ok, failed, retried, revoked = (int(counts[k]) for k in ("success", "failure", "retry",
                                                              "revoked"))
    n = ok + failed + retried + revoked
    p50, p95, p99 = percentiles(hist, _QS)
    return NameStats(
        task_name=from_pg_text(name) if name else None, bucket_start=start, bucket_end=end,
        outcomes=n, succeeded=ok, failed=failed, retried=retried, revoked=revoked,
        success_rate=ok / n if n else 0.0, failure_rate=failed / n if n else 0.0,
        retry_rate=retried / n if n else 0.0,
        runtime_p50=p50, runtime_p95=p95, runtime_p99=p99)


class RollupReads(SchemaReads):
    """The overview's queries over one schema's rollups, on a shared pool."""

    def __init__(self, pool: asyncpg.Pool, schema: str) -> None:
        super().__init__(pool, schema)
        self._minutes = self.table(names.TASK_MINUTES_TABLE)
        self._runtimes = self.table(names.TASK_RUNTIMES_TABLE)
        self._sums = ", ".join(f"sum({c})::bigint AS {c}" for c in STATE_COLUMNS.values())

    async def state_series(self, since: datetime, until: datetime,
                           width: timedelta) -> StateSeries:
        _check(since, until, width)
        rows = await self.pool.fetch(
            f"SELECT date_bin($3, minute, $1) AS b, {self._sums} FROM {self._minutes}"
            " WHERE minute >= $1 AND minute < $2 GROUP BY 1", since, until, width)
        starts: list[datetime] = []
        at = since
        while at < until:
            starts.append(at)
            at += width
        index = {b: i for i, b in enumerate(starts)}
        seconds = width.total_seconds()
        per_state: dict[str, list[float]] = {}
        for state, column in STATE_COLUMNS.items():
            if any(r[column] for r in rows):
                series = per_state[state] = [0.0] * len(starts)
                for r in rows:
                    series[index[r["b"]]] = r[column] / seconds
        return StateSeries([b.timestamp() for b in starts], per_state)

    async def by_name(self, since: datetime, until: datetime) -> list[NameStats]:
        """One row per task name with outcomes in [since, until), ordered by name (the
        unnamed last), like ``resultlog stats`` over the window."""
        _check(since, until)
        # Whole hours inside the window from the hour rows, its ends from minute rows.
        h0 = min(floor_to(since + HOUR - MINUTE, HOUR), until)
        h1 = max(floor_to(until, HOUR), h0)
        counts = await self.pool.fetch(
            f"SELECT task_name, {self._sums} FROM {self._minutes}"
            " WHERE minute >= $1 AND minute < $2 GROUP BY task_name", since, until)
        hist_rows = await self.pool.fetch(
            f"""
            SELECT task_name, bucket, sum(outcomes)::bigint AS n FROM (
                SELECT task_name, bucket, outcomes FROM {self._runtimes}
                WHERE span_s = 3600 AND start >= $3 AND start < $4
                UNION ALL
                SELECT task_name, bucket, outcomes FROM {self._runtimes}
                WHERE span_s = 60 AND start >= $1 AND start < $3
                UNION ALL
                SELECT task_name, bucket, outcomes FROM {self._runtimes}
                WHERE span_s = 60 AND start >= $4 AND start < $2
            ) r GROUP BY task_name, bucket
            """, since, until, h0, h1)
        hists: dict[str, dict[int, int]] = defaultdict(dict)
        for r in hist_rows:
            hists[r["task_name"]][r["bucket"]] = r["n"]
        out = [_stats(r["task_name"], since, until, r, hists[r["task_name"]]) for r in counts]
        out = [s for s in out if s.outcomes]
        return sorted(out, key=lambda s: (s.task_name is None, s.task_name or ""))

    async def name_buckets(self, name: str, since: datetime, until: datetime,
                           width: timedelta) -> list[NameStats]:
        """``name``'s outcomes per bucket of ``width`` from ``since`` (buckets without
        outcomes left out), in time order."""
        _check(since, until, width)
        key = to_pg_text(name)
        counts = await self.pool.fetch(
            f"SELECT date_bin($4, minute, $2) AS b, {self._sums} FROM {self._minutes}"
            " WHERE task_name = $1 AND minute >= $2 AND minute < $3 GROUP BY 1",
            key, since, until, width)
        hist_rows = await self.pool.fetch(
            f"SELECT date_bin($4, start, $2) AS b, bucket, sum(outcomes)::bigint AS n"
            f" FROM {self._runtimes} WHERE task_name = $1 AND span_s = 60"
            " AND start >= $2 AND start < $3 GROUP BY 1, 2", key, since, until, width)
        hists: dict[datetime, dict[int, int]] = defaultdict(dict)
        for r in hist_rows:
            hists[r["b"]][r["bucket"]] = r["n"]
        out = [_stats(key, r["b"], min(r["b"] + width, until), r, hists[r["b"]])
               for r in counts]
        return sorted((s for s in out if s.outcomes), key=lambda s: s.bucket_start)
