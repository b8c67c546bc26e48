"""SQL analytics over the history: one task's summary and transitions, per-name statistics.

Typed wrappers over the SQL objects of ``views/sql/0002_analytics.sql`` (the ``tasks``
and ``attempts`` views and the ``task_stats()`` function), which anyone can also query
directly; docs/analytics.md documents their columns. Every value reaches the server as
a bound parameter; the only text formatted into a query is the schema's quoted name.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg  # type: ignore[import-untyped]

from resultlog import names
from resultlog.errors import ValidationError
from resultlog.schemas.event import TaskEvent, validate_task_id
from resultlog.schemas.states import State
from resultlog.settings import Settings
from resultlog.schemas.taskrows import optional_from_pg_text, to_pg_text
from resultlog.views.history import HistoryStore
from resultlog.views.migrations import quote_ident
from resultlog.views.pg import PooledStore

#: More buckets than this per task name is a mistake (``--bucket 1s`` over a month).
MAX_BUCKETS = 10_000


@dataclass(frozen=True, slots=True)
class TaskSummary:
    """A row of the ``tasks`` view: what the history says about one task."""

    task_id: str
    task_name: str | None
    state: State  # the fold's winner
    worker: str | None  # of the winning event
    retries: int  # the last attempt's number: 0 if never retried
    first_seen: datetime
    started: datetime | None  # first STARTED of any attempt
    finished: datetime | None  # when it reached SUCCESS, FAILURE or REVOKED
    runtime: float | None  # seconds, summed over attempts that reported one
    exception_type: str | None  # of the winning event
    exception_message: str | None


@dataclass(frozen=True, slots=True)
class Attempt:
    """A row of the ``attempts`` view."""

    task_id: str
    attempt: int
    task_name: str | None
    state: State  # the attempt's winning event
    worker: str | None
    first_seen: datetime
    started: datetime | None
    finished: datetime | None
    runtime: float | None
    outcome: State | None  # RETRY, FAILURE, SUCCESS, REVOKED; None while it runs
    exception_type: str | None
    exception_message: str | None


@dataclass(frozen=True, slots=True)
class Transition:
    """One event of a task, with its time since the task's first event."""

    event: TaskEvent
    offset_s: float


@dataclass(frozen=True, slots=True)
class NameStats:
    """A row of ``task_stats()``: one task name in one time bucket."""

    task_name: str | None  # None: outcomes of tasks that no event ever named
    bucket_start: datetime
    bucket_end: datetime
    outcomes: int  # attempts whose outcome falls in the bucket
    succeeded: int
    failed: int
    retried: int
    revoked: int
    success_rate: float
    failure_rate: float
    retry_rate: float
    runtime_p50: float | None  # seconds; None when no outcome reported a runtime
    runtime_p95: float | None
    runtime_p99: float | None


class Analytics(PooledStore):
    """Queries over the history of ``settings.postgres_schema`` (``pool``: see
    PooledStore). The schema must have been migrated (the processor does it)."""

    application_name = "resultlog-analytics"
    not_migrated = (
        "PostgreSQL schema {schema!r} lacks the history or its analytics views ({exc}): the "
        "processor creates them on start (`resultlog process`), or check "
        "RESULTLOG_POSTGRES_SCHEMA")

    def __init__(self, settings: Settings, pool: asyncpg.Pool | None = None) -> None:
        super().__init__(settings, pool)
        s = quote_ident(settings.postgres_schema)
        self._task = (
            "SELECT task_id, task_name, state, worker, retries, first_seen, started, finished,"
            " runtime, exception_type, exception_message"
            f" FROM {s}.{names.TASKS_VIEW} WHERE task_id = $1")
        self._attempts = (
            "SELECT task_id, attempt, task_name, state, worker, first_seen, started, finished,"
            " runtime, outcome, exception_type, exception_message"
            f" FROM {s}.{names.ATTEMPTS_VIEW} WHERE task_id = $1 ORDER BY attempt")
        self._stats = (
            f"SELECT * FROM {s}.{names.TASK_STATS_FUNCTION}($1, $2, $3, $4)"
            " ORDER BY task_name NULLS LAST, bucket_start")


    # -- one task -------------------------------------------------------------------

    async def task(self, task_id: str) -> TaskSummary | None:
        """The task's row of the ``tasks`` view; None when the history has no event of it."""
        rows = await self._fetch(self._task, to_pg_text(validate_task_id(task_id)))
        if not rows:
            return None
        r = rows[0]
        return TaskSummary(
            task_id=task_id, task_name=optional_from_pg_text(r["task_name"]),
            state=State(r["state"]), worker=optional_from_pg_text(r["worker"]),
            retries=r["retries"], first_seen=r["first_seen"],
            started=r["started"], finished=r["finished"], runtime=r["runtime"],
            exception_type=optional_from_pg_text(r["exception_type"]),
            exception_message=optional_from_pg_text(r["exception_message"]),
        )

    async def attempts(self, task_id: str) -> list[Attempt]:
        """The task's rows of the ``attempts`` view, first attempt first."""
        rows = await self._fetch(self._attempts, to_pg_text(validate_task_id(task_id)))
        return [
            Attempt(
                task_id=task_id, attempt=r["attempt"],
                task_name=optional_from_pg_text(r["task_name"]), state=State(r["state"]),
                worker=optional_from_pg_text(r["worker"]), first_seen=r["first_seen"],
                started=r["started"], finished=r["finished"], runtime=r["runtime"],
                outcome=None if r["outcome"] is None else State(r["outcome"]),
                exception_type=optional_from_pg_text(r["exception_type"]),
                exception_message=optional_from_pg_text(r["exception_message"]),
            )
            for r in rows
        ]

    async def transitions(self, task_id: str) -> list[Transition]:
        """Every event of the task in transition order (the fold's), each with its
        offset from the task's earliest event (so offsets are >= 0 even when a worker's
        clock ran behind)."""
        validate_task_id(task_id)
        events = await HistoryStore(self.settings, self.pool).history(task_id)
        if not events:
            return []
        first = min(e.timestamp for e in events)
        return [Transition(e, (e.timestamp - first) / 1000) for e in events]

    # -- per task name --------------------------------------------------------------

    async def stats(self, since: datetime, until: datetime, *, bucket: timedelta | None = None,
                    name: str | None = None) -> list[NameStats]:
        """``task_stats()`` over [since, until): per task name (or only ``name``), per
        bucket of ``bucket`` starting at ``since`` (one bucket for the whole window when
        None), ordered by name then bucket."""
        check_window(since, until, bucket)
        if name is not None and (not isinstance(name, str) or not name):
            raise ValidationError(f"task name must be a non-empty string, got {name!r}")
        rows = await self._fetch(self._stats, bucket, since, until,
                                 None if name is None else to_pg_text(name))
        return [
            NameStats(
                task_name=optional_from_pg_text(r["task_name"]), bucket_start=r["bucket_start"],
                bucket_end=r["bucket_end"], outcomes=r["outcomes"], succeeded=r["succeeded"],
                failed=r["failed"], retried=r["retried"], revoked=r["revoked"],
                success_rate=r["success_rate"], failure_rate=r["failure_rate"],
                retry_rate=r["retry_rate"], runtime_p50=r["runtime_p50"],
                runtime_p95=r["runtime_p95"], runtime_p99=r["runtime_p99"],
            )
            for r in rows
        ]


def check_window(since: datetime, until: datetime, bucket: timedelta | None) -> None:
    """A ValidationError naming what is wrong with a statistics window."""
    for what, when in (("since", since), ("until", until)):
        if not isinstance(when, datetime) or when.tzinfo is None:
            raise ValidationError(f"{what} must be a timezone-aware datetime, got {when!r}")
    if until <= since:
        raise ValidationError(f"the window is empty: until ({until.isoformat()}) is not after "
                              f"since ({since.isoformat()})")
    if bucket is not None:
        if not isinstance(bucket, timedelta) or bucket <= timedelta(0):
            raise ValidationError(f"bucket must be a positive duration, got {bucket!r}")
        if (until - since) / bucket > MAX_BUCKETS:
            raise ValidationError(
                f"bucket {bucket} over {until - since} makes more than {MAX_BUCKETS:,} buckets "
                "per task name; choose a wider bucket or a shorter window")
