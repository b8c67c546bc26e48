"""Retention: remove the history older than a cutoff (``resultlog prune``).

Whole days detached ``CONCURRENTLY`` and dropped, the straddling day trimmed in batches,
only attached or marked partitions ever dropped, interrupted runs finished by the next
one: docs/analytics.md, "Retention".
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg  # type: ignore[import-untyped]

from resultlog import names
from resultlog.connections import postgres_dsn
from resultlog.errors import ResultlogError, ValidationError
from resultlog.settings import Settings
from resultlog.views.migrations import advisory_key, quote_ident
from resultlog.views.partitions import DAY_MS, partition_name
from resultlog.views.pg import translate_errors

#: Rows per DELETE in the straddling partition: short transactions, short row locks.
DELETE_BATCH_ROWS = 50_000
_PARTITION_RE = re.compile(rf"^{re.escape(names.HISTORY_TABLE)}_(\d{{4,5}})(\d\d)(\d\d)$")


def days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date, any year (Howard Hinnant's
    algorithm; the inverse of :func:`resultlog.views.partitions.civil_from_days`)."""
    y = year - (month <= 2)
    era = y // 400
    yoe = y - era * 400
    mp = month - 3 if month > 2 else month + 9
    doy = (153 * mp + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146_097 + doe - 719_468


def day_of_partition(name: str) -> int | None:
    """The day a partition named by :func:`partition_name` holds; None for other names."""
    match = _PARTITION_RE.match(name)
    if match is None:
        return None
    day = days_from_civil(int(match[1]), int(match[2]), int(match[3]))
    # Round trip: rejects impossible dates (20240231) and non-canonical spellings.
    return day if partition_name(day) == name else None


@dataclass(frozen=True, slots=True)
class Removed:
    """What prune removed (or would remove) from one partition."""

    partition: str
    rows: int
    dropped: bool  # the whole partition went; False: only its rows older than the cutoff


@dataclass(frozen=True, slots=True)
class PruneReport:
    cutoff_ms: int
    dry_run: bool
    removed: list[Removed] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return sum(r.rows for r in self.removed)

    @property
    def partitions_dropped(self) -> int:
        return sum(r.dropped for r in self.removed)


@dataclass(frozen=True, slots=True)
class _Table:
    name: str
    day: int
    attached: bool
    pending: bool  # attached, but a DETACH CONCURRENTLY of it was interrupted
    ours: bool  # marked by a prune that then got interrupted


# Put on a partition before it is detached. Only tables that are attached partitions or
# carry this mark are ever dropped: a partition an operator detached to archive it is
# not prune's to drop, even though it has a partition's name.
_MARK = "resultlog prune: detaching, to be dropped"


async def _history_tables(conn: asyncpg.Connection, schema: str) -> list[_Table]:
    """Every table of ``schema`` named like a history partition, attached or not."""
    rows = await conn.fetch(
        "SELECT c.relname, i.inhrelid IS NOT NULL AS attached,"
        "       coalesce(i.inhdetachpending, false) AS pending,"
        "       coalesce(obj_description(c.oid, 'pg_class') = $3, false) AS ours"
        " FROM pg_class c"
        " LEFT JOIN pg_inherits i ON i.inhrelid = c.oid AND i.inhparent = $2::regclass"
        " WHERE c.relnamespace = $1::regnamespace AND c.relkind = 'r'",
        quote_ident(schema), f"{quote_ident(schema)}.{names.HISTORY_TABLE}", _MARK)
    tables = []
    for r in rows:
        day = day_of_partition(r["relname"])
        if day is not None:
            tables.append(_Table(r["relname"], day, r["attached"], r["pending"], r["ours"]))
    return sorted(tables, key=lambda t: t.day)


async def prune(settings: Settings, cutoff_ms: int, *, dry_run: bool = False,
                log: Callable[[str], None] | None = None,
                batch_rows: int = DELETE_BATCH_ROWS) -> PruneReport:
    """Remove every history row older than ``cutoff_ms`` (ms since the epoch, UTC).

    ``dry_run``: count what would go, change nothing. ``log`` is called with a line
    per step as it happens (a DETACH waits for running queries on the history).
    Runs on its own connection: DETACH ... CONCURRENTLY cannot run in a transaction.
    Concurrent prunes of one schema wait for each other.
    """
    if isinstance(cutoff_ms, bool) or not isinstance(cutoff_ms, int) or cutoff_ms < 0:
        raise ValidationError(f"cutoff {cutoff_ms!r} must be ms since the epoch")
    now_ms = time.time_ns() // 1_000_000
    if cutoff_ms > now_ms:
        raise ValidationError(
            f"cutoff {cutoff_ms} is in the future (now is {now_ms}): that would remove "
            "events that have not happened yet; is it in ms?")
    if batch_rows < 1:
        raise ValidationError(f"batch_rows must be at least 1, got {batch_rows}")
    say = log or (lambda _line: None)
    schema = settings.postgres_schema
    s = quote_ident(schema)
    parent = f"{s}.{names.HISTORY_TABLE}"
    report = PruneReport(cutoff_ms, dry_run)
    with translate_errors(settings):
        conn: asyncpg.Connection = await asyncpg.connect(
            postgres_dsn(settings), server_settings={"application_name": "resultlog-prune"})
    try:
        with translate_errors(settings):
            if await conn.fetchval("SELECT to_regclass($1)", parent) is None:
                raise ResultlogError(
                    f"PostgreSQL schema {schema!r} has no history table: nothing to prune "
                    "(check RESULTLOG_POSTGRES_SCHEMA)")
            # Session-level: the DETACHes below commit on their own. Closing the
            # connection releases it, whatever happens.
            await conn.execute("SELECT pg_advisory_lock($1)", advisory_key(schema, names.PRUNE_LOCK))
            tables = await _history_tables(conn, schema)
            old = [t for t in tables if (t.day + 1) * DAY_MS <= cutoff_ms
                   and ((t.attached and not t.pending) or t.ours)]
            straddling = [t for t in tables if t.day * DAY_MS < cutoff_ms < (t.day + 1) * DAY_MS
                          and t.attached and not t.pending]
            stuck = [t for t in tables if t.pending and t not in old]
            if stuck and any(t.attached and not t.pending for t in old) and not dry_run:
                # PostgreSQL allows one pending detach per partitioned table.
                t = stuck[0]
                raise ResultlogError(
                    f"partition {t.name} of {parent} is pending detach (an interrupted "
                    "DETACH ... CONCURRENTLY this prune has no business finishing), and "
                    "PostgreSQL allows only one at a time. Finish it first: ALTER TABLE "
                    f"{parent} DETACH PARTITION {s}.{t.name} FINALIZE")
            for t in old:
                report.removed.append(await _drop(conn, s, parent, t, dry_run, say))
            for t in straddling:
                report.removed.append(await _trim(conn, s, t, cutoff_ms, dry_run, batch_rows, say))
            await _trim_summary(conn, s, cutoff_ms, dry_run, batch_rows, say)
            await _trim_rollups(conn, s, cutoff_ms, dry_run, batch_rows, say)
    finally:
        await conn.close()
    return report


async def _drop(conn: asyncpg.Connection, s: str, parent: str, table: _Table, dry_run: bool,
                say: Callable[[str], None]) -> Removed:
    qualified = f"{s}.{table.name}"
    if dry_run:
        rows: int = await conn.fetchval(f"SELECT count(*) FROM {qualified}")
        say(f"would drop {table.name}: {rows:,} rows")
        return Removed(table.name, rows, dropped=True)
    if table.attached and not table.pending:
        # COMMENT takes SHARE UPDATE EXCLUSIVE on the partition: writers and readers
        # go on. Committed before the detach, so an interrupted run is recognisable.
        await conn.execute(f"COMMENT ON TABLE {qualified} IS '{_MARK}'")
        say(f"detaching {table.name} (waits for queries that started before it)")
        # Its own statement outside any transaction: CONCURRENTLY refuses to run in one.
        await conn.execute(f"ALTER TABLE {parent} DETACH PARTITION {qualified} CONCURRENTLY")
    elif table.pending:
        say(f"finishing the interrupted detach of {table.name}")
        await conn.execute(f"ALTER TABLE {parent} DETACH PARTITION {qualified} FINALIZE")
    # Detached, so nobody can write into it any more: the count is exact.
    async with conn.transaction():
        rows = await conn.fetchval(f"SELECT count(*) FROM {qualified}")
        await conn.execute(f"DROP TABLE {qualified}")
    say(f"dropped {table.name}: {rows:,} rows")
    return Removed(table.name, rows, dropped=True)


async def _delete_in_batches(conn: asyncpg.Connection, table: str, key: str, where: str,
                             cutoff_ms: int, batch_rows: int) -> int:
    """Delete the rows of ``table`` matching ``where`` (the cutoff is $1), picked by
    ``key``, ``batch_rows`` at a time; the rows deleted in all. In batches, each its own
    transaction: a day's partition can hold millions of rows, and one DELETE would hold
    their row locks and a snapshot for its duration."""
    delete = (f"DELETE FROM {table} WHERE {key} = ANY(ARRAY("
              f"SELECT {key} FROM {table} WHERE {where} LIMIT $2))")
    rows = 0
    while True:
        status: str = await conn.execute(delete, cutoff_ms, batch_rows)
        n = int(status.rsplit(" ", 1)[1])  # "DELETE <n>"
        rows += n
        if n < batch_rows:
            return rows


async def _trim(conn: asyncpg.Connection, s: str, table: _Table, cutoff_ms: int, dry_run: bool,
                batch_rows: int, say: Callable[[str], None]) -> Removed:
    qualified = f"{s}.{table.name}"
    cutoff = f"{s}.ms_to_timestamptz($1::bigint)"  # the function that computed each ts
    if dry_run:
        rows: int = await conn.fetchval(
            f"SELECT count(*) FROM {qualified} WHERE ts < {cutoff}", cutoff_ms)
        say(f"would delete {rows:,} rows from {table.name} (older than the cutoff)")
        return Removed(table.name, rows, dropped=False)
    rows = await _delete_in_batches(conn, qualified, "ctid", f"ts < {cutoff}",
                                    cutoff_ms, batch_rows)
    say(f"deleted {rows:,} rows from {table.name} (older than the cutoff)")
    return Removed(table.name, rows, dropped=False)


async def _trim_summary(conn: asyncpg.Connection, s: str, cutoff_ms: int, dry_run: bool,
                        batch_rows: int, say: Callable[[str], None]) -> None:
    """Forget, in ``task_summary``, the tasks whose winning event is older than the cutoff
    (the summary has no partitions to drop: batches, like :func:`_trim`)."""
    summary = f"{s}.{names.TASK_SUMMARY_TABLE}"
    if await conn.fetchval("SELECT to_regclass($1)", summary) is None:
        return
    cutoff = f"{s}.ms_to_timestamptz($1::bigint)"
    if dry_run:
        rows: int = await conn.fetchval(
            f"SELECT count(*) FROM {summary} WHERE last_seen < {cutoff}", cutoff_ms)
        say(f"would forget {rows:,} tasks in {names.TASK_SUMMARY_TABLE}")
        return
    rows = await _delete_in_batches(conn, summary, "task_id", f"last_seen < {cutoff}",
                                    cutoff_ms, batch_rows)
    say(f"forgot {rows:,} tasks in {names.TASK_SUMMARY_TABLE} (latest event older than the cutoff)")


async def _trim_rollups(conn: asyncpg.Connection, s: str, cutoff_ms: int, dry_run: bool,
                        batch_rows: int, say: Callable[[str], None]) -> None:
    """Drop the rollups (views/sql/0005_rollups.sql) of the hours before the cutoff's,
    and recompute the cutoff's hour from what the history keeps of it, so the rollups
    count exactly the events left."""
    minutes = f"{s}.{names.TASK_MINUTES_TABLE}"
    runtimes = f"{s}.{names.TASK_RUNTIMES_TABLE}"
    if await conn.fetchval("SELECT to_regclass($1)", minutes) is None:
        return
    hour = (f"date_bin('1 hour', {s}.ms_to_timestamptz($1::bigint),"
            " timestamptz '1970-01-01 00:00+00')")
    if dry_run:
        rows: int = await conn.fetchval(
            f"SELECT (SELECT count(*) FROM {minutes} WHERE minute < {hour})"
            f" + (SELECT count(*) FROM {runtimes} WHERE start < {hour})", cutoff_ms)
        say(f"would drop {rows:,} rollup rows of the hours before the cutoff's")
        return
    rows = 0
    for table, column in ((minutes, "minute"), (runtimes, "start")):
        rows += await _delete_in_batches(conn, table, "ctid", f"{column} < {hour}",
                                         cutoff_ms, batch_rows)
    await conn.execute(
        f"SELECT {s}.{names.REBUILD_ROLLUPS_FUNCTION}({hour}, {hour} + interval '1 hour')",
        cutoff_ms)
    say(f"dropped {rows:,} rollup rows of the hours before the cutoff's; recomputed its hour")
