"""The Postgres history: every event, once, with the Kafka offsets it was read at.

Tables, partitions and the exactly-once argument: docs/history.md (DDL in
``views/sql/0001_history.sql``). Rows are laid out by ``schemas/taskrows.py``
(``history_row``, or straight from a record's bytes), which also escapes the text
PostgreSQL cannot hold (``to_pg_text``).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from resultlog import names
from resultlog.errors import ConfigurationError, StoreUnavailable, ValidationError
from resultlog.schemas.event import ExceptionInfo, TaskEvent
from resultlog.schemas.states import State
from resultlog.schemas.taskrows import HISTORY_COLUMNS as _STAGE_COLUMNS
from resultlog.schemas.taskrows import from_pg_text, history_row, optional_from_pg_text, to_pg_text
from resultlog.settings import Settings
from resultlog.views import migrations, partitions
from resultlog.views.migrations import quote_ident
from resultlog.views.pg import PooledStore, create_pool, translate_errors

#: Partitions made ahead of the current day (plus yesterday, for clock skew).
PARTITIONS_AHEAD_DAYS = 3
_INT32 = 2**31
_INT64 = 2**63
# Deadlocks are avoided by ordering (below), but a retry is the documented remedy and
# costs nothing when they do not happen.
_WRITE_ATTEMPTS = 3
_PAGE_ROWS = 5000
# Up to this many rows a batch is written by one statement instead of COPY.
SMALL_BATCH_ROWS = 200


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event and where it was read: the unit :meth:`HistoryStore.write_batch` takes."""

    event: TaskEvent
    topic: str
    partition: int
    offset: int


_STAGE_NAMES = [name for name, _ in _STAGE_COLUMNS]
_EVENT_COLUMNS = [name if name != "ts_ms" else "ts" for name in _STAGE_NAMES]


# Event fields a history row holds under their own name: text (escaped) and as they are.
_TEXT_FIELDS = ("task_name", "worker", "args", "kwargs", "result", "traceback", "parent_id",
                "root_id", "group_id", "chord_id")
_PLAIN_FIELDS = ("attempt", "runtime", "chord_size", "chord_index", "result_ttl_ms")
_SELECT_EVENT = (
    "SELECT event_id, {schema}.timestamptz_to_ms(ts) AS ts_ms, task_id, state, eta_ms, meta,"
    " exception_type, exception_module, exception_message, "
    + ", ".join(_TEXT_FIELDS + _PLAIN_FIELDS) + " FROM {history}")


def _event(r: Any) -> TaskEvent:
    meta = r["meta"]
    exc_type = r["exception_type"]
    values: dict[str, Any] = {name: optional_from_pg_text(r[name]) for name in _TEXT_FIELDS}
    values.update((name, r[name]) for name in _PLAIN_FIELDS)
    return TaskEvent(
        event_id=r["event_id"].hex, task_id=from_pg_text(r["task_id"]), state=State(r["state"]),
        timestamp=r["ts_ms"], eta=r["eta_ms"],
        exception=None if exc_type is None else ExceptionInfo(
            from_pg_text(exc_type), from_pg_text(r["exception_module"]),
            from_pg_text(r["exception_message"])),
        meta={} if meta is None else {
            from_pg_text(k): from_pg_text(v) for k, v in json.loads(meta).items()},
        **values,
    )


async def _keep_session(conn: asyncpg.Connection) -> None:
    """The live fold's pool releases a connection without asyncpg's reset query: a
    round trip after every batch, on the path of every event, to clear session state
    (settings, listeners, advisory locks, cursors) its writes never leave behind. Its
    staging table is temporary and emptied at each commit."""


def _upsert_offsets(table: str, n: int) -> str:
    """Offsets written from ``$n`` (the consumer group) and ``$n+1``..``$n+3`` (topics,
    partitions, next offsets); GREATEST: an offset never moves back (a zombie's batch)."""
    return (f"INSERT INTO {table} AS o (consumer_group, kafka_topic, kafka_partition, next_offset)"
            f" SELECT ${n}, t, p, n FROM unnest(${n + 1}::text[], ${n + 2}::int[],"
            f" ${n + 3}::bigint[]) AS u(t, p, n)"
            " ON CONFLICT (consumer_group, kafka_topic, kafka_partition) DO UPDATE"
            " SET next_offset = GREATEST(o.next_offset, EXCLUDED.next_offset), updated_at = now()")


def _check_offsets(offsets: Mapping[tuple[str, int], int]) -> None:
    for (topic, partition), offset in offsets.items():
        if not 0 <= partition < _INT32 or not 0 <= offset < _INT64:
            raise ValidationError(
                f"offset {offset} for {topic}[{partition}]: partitions and offsets are >= 0")


class HistoryStore(PooledStore):
    """The history table and the offsets table of one schema (``pool``: see PooledStore)."""

    application_name = "resultlog-history"

    def __init__(self, settings: Settings, pool: asyncpg.Pool | None = None, *,
                 partitions_ahead_days: int = PARTITIONS_AHEAD_DAYS,
                 durable_commits: bool = True) -> None:
        super().__init__(settings, pool)
        if not durable_commits and pool is not None:
            raise ConfigurationError(
                "HistoryStore(durable_commits=False) sets synchronous_commit on connections "
                "of its own: do not pass it a shared pool")
        self.durable_commits = durable_commits
        # With asynchronous commits a PostgreSQL crash can lose the last commits, and a
        # crash breaks every connection. So before a new connection's first write the
        # writer is shown what the history holds (consumer group, topic, partition ->
        # next offset) and may refuse to go on (the live fold raises HistoryRewound).
        self.verify_positions: Callable[[dict[tuple[str, str, int], int]], None] | None = None
        self._unverified: set[int] = set()  # server pids of connections not yet shown
        self._ahead = partitions_ahead_days
        self._known_days: set[int] = set()
        self._ahead_done_for: int | None = None  # the day the ahead window was last made
        s = quote_ident(settings.postgres_schema)
        self._ms_to_ts = f"{s}.ms_to_timestamptz"
        self._history = f"{s}.{names.HISTORY_TABLE}"
        self._offsets = f"{s}.{names.OFFSETS_TABLE}"
        self._select = _SELECT_EVENT.format(schema=s, history=self._history)
        stage = names.HISTORY_STAGE_TABLE
        self._create_stage = (
            "SET LOCAL client_min_messages = warning;"
            f"CREATE TEMP TABLE IF NOT EXISTS {stage} ("
            + ", ".join(f"{n} {t}" for n, t in _STAGE_COLUMNS)
            + ") ON COMMIT DELETE ROWS"
        )
        # ORDER BY the unique index's order: two writers inserting overlapping batches
        # (a zombie processor after a rebalance) take its entries in the same order and
        # so cannot deadlock. ON CONFLICT DO NOTHING also skips duplicates within a batch.
        select_cols = ", ".join(
            f"{self._ms_to_ts}(ts_ms)" if n == "ts_ms" else n for n in _STAGE_NAMES)
        self._insert_new = (
            f"INSERT INTO {self._history} ({', '.join(_EVENT_COLUMNS)})"
            f" SELECT {select_cols} FROM {stage} ORDER BY ts_ms, event_id"
        )
        self._insert = self._insert_new + " ON CONFLICT (ts, event_id) DO NOTHING"
        # A large batch is first inserted without ON CONFLICT (a quarter of the insert's
        # cost), under a savepoint: docs/history.md, "Offsets, in the same transaction".
        self._expect_new = True
        self._upsert_offsets = _upsert_offsets(self._offsets, 1)
        # Small batches (the common case at low rates): rows and offsets in ONE statement,
        # atomic by itself, so a batch costs one round trip instead of seven (BEGIN,
        # staging table, COPY, INSERT, offsets, COMMIT). Latency, not throughput, is
        # what this buys; large batches keep the COPY path.
        arrays = ", ".join(f"${i + 1}::{t}[]" for i, (_, t) in enumerate(_STAGE_COLUMNS))
        k = len(_STAGE_COLUMNS)
        self._insert_small = (
            f"WITH ins AS (INSERT INTO {self._history} ({', '.join(_EVENT_COLUMNS)})"
            f" SELECT {select_cols} FROM unnest({arrays}) AS s({', '.join(_STAGE_NAMES)})"
            " ORDER BY ts_ms, event_id ON CONFLICT (ts, event_id) DO NOTHING RETURNING 1),"
            f" off AS ({_upsert_offsets(self._offsets, k + 1)}) SELECT count(*) FROM ins"
        )

    # -- lifetime -------------------------------------------------------------------

    async def start(self) -> None:
        """Open the pool (unless one was given). Without ``durable_commits`` its
        connections commit asynchronously (``synchronous_commit = off``), which only a
        writer that records its read positions in the same transactions and can read a
        lost tail again may use: the live fold (docs/processor.md, "Asynchronous history
        commits")."""
        if self._pool is None:
            self._pool = await create_pool(
                self.settings, application_name=self.application_name,
                server_settings=None if self.durable_commits else {"synchronous_commit": "off"},
                init=self._opened, reset=None if self.durable_commits else _keep_session)
            self._own_pool = True

    async def _opened(self, conn: asyncpg.Connection) -> None:
        if not self.durable_commits:
            self._unverified.add(conn.get_server_pid())

    async def _verify(self, conn: asyncpg.Connection) -> None:
        """On a connection's first write: show the writer what the history holds."""
        if self.verify_positions is None or not self._unverified:
            return
        pid = conn.get_server_pid()
        if pid not in self._unverified:
            return
        rows = await conn.fetch(
            f"SELECT consumer_group, kafka_topic, kafka_partition, next_offset FROM {self._offsets}")
        self._unverified.discard(pid)
        self.verify_positions({(from_pg_text(r["consumer_group"]), r["kafka_topic"],
                                r["kafka_partition"]): r["next_offset"] for r in rows})

    # -- schema ---------------------------------------------------------------------

    async def migrate(self) -> list[int]:
        """Create or upgrade the schema (idempotent, safe concurrently) and make the
        partitions for yesterday through :data:`PARTITIONS_AHEAD_DAYS` days ahead.
        Returns the migration versions this call applied."""
        migrations.load_migrations()  # file errors are not connection errors: outside
        with translate_errors(self.settings):
            async with self.pool.acquire() as conn:
                applied: list[int] = await migrations.migrate(conn, self.settings.postgres_schema)
        self._known_days.clear()
        self._ahead_done_for = None
        await self._ensure_days(set())
        return applied

    async def ensure_partitions(self, from_ms: int, to_ms: int) -> list[str]:
        """Make the daily partitions covering ``from_ms`` .. ``to_ms`` (inclusive);
        returns the names of those this call created."""
        days = range(partitions.day_of(from_ms), partitions.day_of(to_ms) + 1)
        return await self._ensure_days(set(days))

    async def _ensure_days(self, days: set[int]) -> list[str]:
        today = partitions.day_of(time.time_ns() // 1_000_000)
        if self._ahead_done_for != today:
            days = days | set(range(today - 1, today + self._ahead + 1))
        missing = days - self._known_days
        if not missing:
            return []
        with self._guard():
            async with self.pool.acquire() as conn:
                created: list[str] = await partitions.ensure_partitions(
                    conn, self.settings.postgres_schema, missing)
        self._known_days |= missing
        self._ahead_done_for = today
        return created

    # -- writing --------------------------------------------------------------------

    async def write_batch(self, events: Sequence[StoredEvent],
                          offsets: Mapping[tuple[str, int], int], *,
                          consumer_group: str) -> int:
        """Insert ``events`` and record ``offsets`` in one transaction; returns how many
        rows were new (duplicates of rows already present, or within the batch, are
        skipped).

        ``offsets``: (topic, partition) -> the next offset to read (the highest offset
        consumed + 1) for ``consumer_group``. An offset never moves backwards. Either
        everything is written or nothing is.
        """
        rows = [history_row(s.event, s.topic, s.partition, s.offset) for s in events]
        days = {partitions.day_of(s.event.timestamp) for s in events}
        return await self.write_rows(rows, days, offsets, consumer_group=consumer_group)

    async def write_rows(self, rows: Sequence[tuple[Any, ...]], days: set[int],
                         offsets: Mapping[tuple[str, int], int], *,
                         consumer_group: str) -> int:
        """:meth:`write_batch` for rows already built by :func:`history_row` (or
        ``schemas/taskrows.read_rows``); ``days``: the partition days they fall on."""
        if not rows and not offsets:
            return 0
        _check_offsets(offsets)
        # Sorted, so that two writers lock offset rows in the same order.
        keys = sorted(offsets)
        offset_args = ([t for t, _ in keys], [p for _, p in keys],
                       [offsets[k] for k in keys])
        for attempt in range(1, _WRITE_ATTEMPTS + 1):
            await self._ensure_days(days)
            try:
                with self._guard():
                    return await self._write(rows, consumer_group, offset_args)
            except StoreUnavailable:
                # Replace every pooled connection before the caller retries, so none
                # left over from the lost server is used again.
                await self.pool.expire_connections()
                raise
            except asyncpg.CheckViolationError as exc:
                # "no partition of relation ... found for row": a partition this process
                # thought existed was dropped (e.g. pruned), or is being (pending detach:
                # the next _ensure_days raises PartitionDetaching, and the caller waits).
                # Forget what we knew, retry.
                if "no partition" not in str(exc) or attempt == _WRITE_ATTEMPTS:
                    raise
                self._known_days.clear()
            except asyncpg.DeadlockDetectedError:
                if attempt == _WRITE_ATTEMPTS:
                    raise
        raise AssertionError("unreachable")

    async def _write(self, rows: Sequence[tuple[Any, ...]], consumer_group: str,
                     offset_args: tuple[list[str], list[int], list[int]]) -> int:
        inserted = 0
        if 0 < len(rows) <= SMALL_BATCH_ROWS and offset_args[0]:
            columns = [list(col) for col in zip(*rows)]
            async with self._connection() as conn:
                await self._verify(conn)
                count: int = await conn.fetchval(
                    self._insert_small, *columns, to_pg_text(consumer_group), *offset_args)
            return count
        async with self._connection() as conn:
            await self._verify(conn)
            async with conn.transaction():
                if rows:
                    await conn.execute(self._create_stage)
                    await conn.copy_records_to_table(
                        names.HISTORY_STAGE_TABLE, records=rows, columns=_STAGE_NAMES)
                    inserted = await self._insert_staged(conn, len(rows))
                if offset_args[0]:
                    await conn.execute(self._upsert_offsets, to_pg_text(consumer_group),
                                       *offset_args)
        return inserted

    async def _insert_staged(self, conn: asyncpg.Connection, staged: int) -> int:
        status: str
        if self._expect_new:
            try:
                # Never released: the commit releases it.
                status = await conn.execute("SAVEPOINT insert_new; " + self._insert_new)
                return int(status.rsplit(" ", 1)[1])  # "INSERT 0 <n>"
            except asyncpg.UniqueViolationError:
                self._expect_new = False
                await conn.execute("ROLLBACK TO SAVEPOINT insert_new")
        status = await conn.execute(self._insert)
        inserted = int(status.rsplit(" ", 1)[1])
        self._expect_new = inserted == staged
        return inserted

    # -- offsets --------------------------------------------------------------------

    async def committed_offsets(self, consumer_group: str, topic: str) -> dict[int, int]:
        """partition -> next offset to read, for the partitions ``consumer_group`` has
        written history for (absent: start from the beginning, or policy)."""
        rows = await self._fetch(
            f"SELECT kafka_partition, next_offset FROM {self._offsets}"
            " WHERE consumer_group = $1 AND kafka_topic = $2",
            to_pg_text(consumer_group), topic)
        return {r["kafka_partition"]: r["next_offset"] for r in rows}

    async def reset_offsets(self, consumer_group: str) -> int:
        """Forget every offset of ``consumer_group``; returns how many rows went."""
        status = await self._execute(
            f"DELETE FROM {self._offsets} WHERE consumer_group = $1", to_pg_text(consumer_group))
        return int(status.rsplit(" ", 1)[1])

    # -- reading --------------------------------------------------------------------

    async def history(self, task_id: str) -> list[TaskEvent]:
        """Every event of ``task_id``, in transition order (the fold's precedence)."""
        rows = await self._fetch(
            f"{self._select} WHERE task_id = $1 ORDER BY token", to_pg_text(task_id))
        return [_event(r) for r in rows]

    async def latest(self, task_id: str) -> TaskEvent | None:
        """The event of ``task_id`` that wins the fold (not the folded view: sticky
        fields such as args stay on the event that carried them)."""
        rows = await self._fetch(
            f"{self._select} WHERE task_id = $1 ORDER BY token DESC LIMIT 1", to_pg_text(task_id))
        return _event(rows[0]) if rows else None

    async def count(self) -> int:
        rows = await self._fetch(f"SELECT count(*) AS n FROM {self._history}")
        n: int = rows[0]["n"]
        return n

    async def all_events(self, page_rows: int = _PAGE_ROWS) -> AsyncIterator[TaskEvent]:
        """Every event, ordered by (timestamp, event_id), read in pages.

        Keyset pages rather than one cursor: no transaction stays open and no
        connection is held between pages, however slowly the caller consumes.
        """
        after: tuple[int, Any] | None = None
        while True:
            if after is None:
                rows = await self._fetch(
                    f"{self._select} ORDER BY ts, event_id LIMIT $1", page_rows)
            else:
                # The plain "ts >=" lets the planner skip earlier partitions; the row
                # comparison alone would not.
                rows = await self._fetch(
                    f"{self._select} WHERE ts >= {self._ms_to_ts}($1)"
                    f" AND (ts, event_id) > ({self._ms_to_ts}($1), $2)"
                    " ORDER BY ts, event_id LIMIT $3", after[0], after[1], page_rows)
            for r in rows:
                yield _event(r)
            if len(rows) < page_rows:
                return
            after = (rows[-1]["ts_ms"], rows[-1]["event_id"])

    async def reset(self) -> None:
        """Empty the history (every partition; they stay attached), for ``replay
        --fresh``. What triggers on the history keep (the task summary, the rollups)
        goes with it, in the same statement, and so does every consumer group's
        position: a position says what the history holds, and it holds nothing now.
        (Until 1 Dec 2026 they were kept: a replay killed after this, then a processor
        started instead of the replay again, resumed at the old end, and the history
        lacked what the replay had not written yet, for good.)"""
        s = quote_ident(self.settings.postgres_schema)
        kept = ", ".join(f"{s}.{t}" for t in (names.TASK_SUMMARY_TABLE, names.TASK_MINUTES_TABLE,
                                               names.TASK_RUNTIMES_TABLE))
        await self._execute(f"TRUNCATE {self._history}, {kept}, {self._offsets}")

    # -- helpers --------------------------------------------------------------------

    async def _execute(self, query: str, *args: Any) -> str:
        with self._guard():
            status: str = await self.pool.execute(query, *args)
        return status


def stored(events: Iterable[TaskEvent], topic: str = names.DEFAULT_EVENTS_TOPIC,
           partition: int = 0, first_offset: int = 0) -> list[StoredEvent]:
    """``events`` as read one after another from one partition (tests, tools)."""
    return [StoredEvent(e, topic, partition, first_offset + i) for i, e in enumerate(events)]
