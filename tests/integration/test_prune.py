"""Retention (``resultlog prune``) against the real PostgreSQL: exactly the rows older than
the cutoff go, whole days by dropping their partitions, the straddling day by DELETE.

Rows are written with ``HistoryStore.write_batch`` (the pipeline path is covered in
test_pipeline.py and test_analytics.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import datetime, timezone

import asyncpg  # type: ignore[import-untyped]
import pytest

from resultlog.errors import PartitionDetaching, ResultlogError, ValidationError
from resultlog.producers import Emitter
from resultlog.schemas.event import TaskEvent
from resultlog.settings import Settings
from resultlog.views import prune as prune_module
from resultlog.views.history import HistoryStore, stored
from resultlog.views.migrations import quote_ident
from resultlog.views.partitions import DAY_MS, civil_from_days, day_of, partition_name
from resultlog.views.prune import Removed, day_of_partition, days_from_civil, prune
from tests.integration.processes import ProcessorProcess
from tests.integration.test_analytics import cli
from tests.integration.test_history import partitions_of
from tests.integration.test_pipeline import eventually

D = day_of(int(datetime(2024, 3, 10, tzinfo=timezone.utc).timestamp() * 1000))
HOUR_MS = 3_600_000
CUTOFF = (D - 1) * DAY_MS + 12 * HOUR_MS  # 2024-03-09T12:00:00.000Z

# (ms, kept?) around every edge: day boundaries and the cutoff itself.
ROWS = [
    ((D - 3) * DAY_MS, False), ((D - 3) * DAY_MS + 1000, False), ((D - 2) * DAY_MS - 1, False),
    ((D - 2) * DAY_MS, False), ((D - 1) * DAY_MS - 1, False),
    ((D - 1) * DAY_MS, False), (CUTOFF - 1, False),
    (CUTOFF, True), (CUTOFF + 1, True), (D * DAY_MS - 1, True),
    (D * DAY_MS, True), (D * DAY_MS + 5, True),
]


def p(day: int) -> str:
    return partition_name(day)


@pytest.fixture
async def store(settings: Settings) -> AsyncIterator[HistoryStore]:
    async with HistoryStore(settings) as s:
        await s.migrate()
        yield s


async def load(store: HistoryStore, rows: list[tuple[int, bool]] = ROWS) -> dict[str, bool]:
    """Write one event per row; returns event id -> whether prune must keep it."""
    events = [TaskEvent.create(f"t{i}", "SUCCESS", timestamp=ms, result=i, task_name="n")
              for i, (ms, _) in enumerate(rows)]
    assert await store.write_batch(stored(events), {}, consumer_group="g") == len(rows)
    return {e.event_id: kept for e, (_, kept) in zip(events, rows)}


async def event_ids(store: HistoryStore) -> set[str]:
    return {e.event_id async for e in store.all_events()}


async def tables(store: HistoryStore) -> set[str]:
    rows = await store.pool.fetch(
        "SELECT relname FROM pg_class WHERE relnamespace = $1::regnamespace AND relkind = 'r'",
        quote_ident(store.settings.postgres_schema))
    return {r["relname"] for r in rows}


EXPECTED = [Removed(p(D - 3), 3, True), Removed(p(D - 2), 2, True), Removed(p(D - 1), 2, False)]


async def test_a_dry_run_reports_and_changes_nothing(store: HistoryStore) -> None:
    await load(store)
    before = (await event_ids(store), await partitions_of(store))
    lines: list[str] = []
    report = await prune(store.settings, CUTOFF, dry_run=True, log=lines.append)
    assert report.removed == EXPECTED and report.rows == 7 and report.dry_run
    assert lines == [f"would drop {p(D - 3)}: 3 rows", f"would drop {p(D - 2)}: 2 rows",
                     f"would delete 2 rows from {p(D - 1)} (older than the cutoff)",
                     "would forget 7 tasks in task_summary",
                     "would drop 6 rollup rows of the hours before the cutoff's"]
    assert (await event_ids(store), await partitions_of(store)) == before


async def test_prune_removes_exactly_what_is_older_than_the_cutoff(store: HistoryStore) -> None:
    kept = await load(store)
    before = await partitions_of(store)
    lines: list[str] = []
    report = await prune(store.settings, CUTOFF, log=lines.append)
    assert report.removed == EXPECTED and (report.rows, report.partitions_dropped) == (7, 2)
    assert lines == [
        f"detaching {p(D - 3)} (waits for queries that started before it)",
        f"dropped {p(D - 3)}: 3 rows",
        f"detaching {p(D - 2)} (waits for queries that started before it)",
        f"dropped {p(D - 2)}: 2 rows",
        f"deleted 2 rows from {p(D - 1)} (older than the cutoff)",
        "forgot 7 tasks in task_summary (latest event older than the cutoff)",
        "dropped 6 rollup rows of the hours before the cutoff's; recomputed its hour",
    ]
    # The rollups count exactly the events left (tests/integration/test_rollups.py
    # checks them against a recomputation).
    assert await store.pool.fetchval(
        f"SELECT sum(success) FROM {quote_ident(store.settings.postgres_schema)}.task_minutes"
    ) == sum(keep for _, keep in ROWS)
    # The row at the cutoff and everything after it stay; nothing else does.
    assert await event_ids(store) == {event_id for event_id, keep in kept.items() if keep}
    # One task per row: the summary keeps the tasks whose (only) event stayed.
    summary = await store.pool.fetch(
        f"SELECT task_id FROM {quote_ident(store.settings.postgres_schema)}.task_summary")
    assert sorted(r["task_id"] for r in summary) == sorted(
        f"t{i}" for i, (_, keep) in enumerate(ROWS) if keep)
    # Whole days dropped as tables; the partitions made ahead of today untouched.
    assert await partitions_of(store) == before - {p(D - 3), p(D - 2)}
    assert not {p(D - 3), p(D - 2)} & await tables(store)
    again = await prune(store.settings, CUTOFF)
    assert again.removed == [Removed(p(D - 1), 0, False)] and again.rows == 0


async def test_the_straddling_partition_is_trimmed_in_batches(store: HistoryStore) -> None:
    kept = await load(store, [((D - 1) * DAY_MS + i, False) for i in range(7)]
                      + [(CUTOFF + i, True) for i in range(3)])
    report = await prune(store.settings, CUTOFF, batch_rows=2)
    assert report.removed == [Removed(p(D - 1), 7, False)]
    assert await event_ids(store) == {event_id for event_id, keep in kept.items() if keep}


async def test_a_cutoff_at_midnight_drops_the_day_before_and_trims_nothing(store: HistoryStore) -> None:
    kept = await load(store, [((D - 1) * DAY_MS - 1, False), ((D - 1) * DAY_MS, True)])
    report = await prune(store.settings, (D - 1) * DAY_MS)
    assert report.removed == [Removed(p(D - 2), 1, True)]
    assert await event_ids(store) == {event_id for event_id, keep in kept.items() if keep}


async def test_a_writer_that_cached_a_pruned_partition_recreates_it(store: HistoryStore) -> None:
    await load(store)
    await prune(store.settings, CUTOFF)
    late = TaskEvent.create("late", "SUCCESS", timestamp=(D - 2) * DAY_MS + 7, result=1)
    # This store created p(D - 2) and still believes in it.
    assert await store.write_batch(stored([late]), {}, consumer_group="g") == 1
    assert p(D - 2) in await partitions_of(store)
    assert late.event_id in await event_ids(store)


async def _interrupted_detach(store: HistoryStore, name: str, *, marked: bool) -> None:
    """Leave ``name`` pending detach, as a DETACH CONCURRENTLY cancelled while it waited
    for an older reader does."""
    s = quote_ident(store.settings.postgres_schema)
    dsn = store.settings.postgres_dsn
    reader, detacher = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
    try:
        await reader.execute(f"BEGIN; SELECT count(*) FROM {s}.task_events")
        if marked:
            await detacher.execute(f"COMMENT ON TABLE {s}.{name} IS '{prune_module._MARK}'")
        await detacher.execute("SET statement_timeout = '500ms'")
        with pytest.raises(asyncpg.QueryCanceledError):
            await detacher.execute(f"ALTER TABLE {s}.task_events DETACH PARTITION {s}.{name} CONCURRENTLY")
        await reader.execute("ROLLBACK")
    finally:
        await reader.close()
        await detacher.close()
    pending = await store.pool.fetchval(
        "SELECT inhdetachpending FROM pg_inherits WHERE inhrelid = $1::regclass", f"{s}.{name}")
    assert pending is True


async def test_an_interrupted_detach_of_its_own_is_finished(store: HistoryStore) -> None:
    kept = await load(store)
    await _interrupted_detach(store, p(D - 3), marked=True)
    lines: list[str] = []
    report = await prune(store.settings, CUTOFF, log=lines.append)
    assert report.removed == EXPECTED
    assert lines[:2] == [f"finishing the interrupted detach of {p(D - 3)}", f"dropped {p(D - 3)}: 3 rows"]
    assert await event_ids(store) == {event_id for event_id, keep in kept.items() if keep}
    assert p(D - 3) not in await tables(store)


async def test_a_pending_detach_it_did_not_start_stops_it(store: HistoryStore) -> None:
    await load(store)
    await _interrupted_detach(store, p(D - 3), marked=False)
    with pytest.raises(ResultlogError, match=f"{p(D - 3)}.*FINALIZE"):
        await prune(store.settings, CUTOFF)
    assert p(D - 2) in await partitions_of(store)  # nothing was done


async def test_a_late_event_for_a_day_being_pruned_waits_for_the_drop(store: HistoryStore) -> None:
    """A partition pending detach takes no row, and no new partition can be made beside
    it: the write failed with a raw CheckViolationError ("no partition ... found for
    row"), which stopped the processor. It is a retriable PartitionDetaching naming the
    partition, until the prune has dropped it."""
    await load(store)
    await _interrupted_detach(store, p(D - 3), marked=True)
    late = TaskEvent.create("late", "SUCCESS", timestamp=(D - 3) * DAY_MS + 7, result=1)
    with pytest.raises(PartitionDetaching, match=rf"{p(D - 3)} \(pending detach\).*run `resultlog prune` again") as info:
        await store.write_batch(stored([late]), {}, consumer_group="g")
    assert info.value.retriable
    await prune(store.settings, CUTOFF)  # finishes the detach, drops the partition
    assert await store.write_batch(stored([late]), {}, consumer_group="g") == 1
    assert p(D - 3) in await partitions_of(store) and late.event_id in await event_ids(store)


async def test_a_late_event_for_a_day_detached_and_not_yet_dropped_waits_for_the_drop(store: HistoryStore) -> None:
    """Between its detach and its drop a pruned partition is a table with the
    partition's name: making the day's partition again failed with a raw
    DuplicateTableError."""
    await load(store)
    s = quote_ident(store.settings.postgres_schema)
    await store.pool.execute(f"COMMENT ON TABLE {s}.{p(D - 3)} IS '{prune_module._MARK}'")
    await store.pool.execute(f"ALTER TABLE {s}.task_events DETACH PARTITION {s}.{p(D - 3)}")
    late = TaskEvent.create("late", "SUCCESS", timestamp=(D - 3) * DAY_MS + 7, result=1)
    with pytest.raises(PartitionDetaching, match=rf"{p(D - 3)} \(detached, not dropped\)"):
        await store.write_batch(stored([late]), {}, consumer_group="g")
    await prune(store.settings, CUTOFF)
    assert await store.write_batch(stored([late]), {}, consumer_group="g") == 1
    assert late.event_id in await event_ids(store)


async def test_the_processor_waits_out_a_prune_of_a_late_events_day(store: HistoryStore) -> None:
    """The live fold with a late event for a day a prune is removing: it stopped the
    processor ("the fold engine failed: CheckViolationError"). It waits, then writes
    the late event and every one after it, in order."""
    settings = store.settings
    await load(store)
    await _interrupted_detach(store, p(D - 3), marked=True)
    late = TaskEvent.create("late", "SUCCESS", timestamp=(D - 3) * DAY_MS + 7, result=1)
    after = TaskEvent.create("after", "SUCCESS", result=2)
    with ProcessorProcess(settings) as proc:
        async with Emitter(settings) as emitter:
            await emitter.emit(late)
            await emitter.emit(after)
        await eventually(lambda: _said(proc, f"{p(D - 3)} (pending detach)"), "the processor waiting for the prune")
        assert proc.alive()
        await prune(settings, CUTOFF)
        await eventually(lambda: _holds(store, {late.event_id, after.event_id}),
                         f"both events written\n{proc.output()[-3000:]}")
        assert proc.alive(), proc.output()[-3000:]


async def _said(proc: ProcessorProcess, text: str) -> bool:
    return text in proc.output()


async def _holds(store: HistoryStore, ids: set[str]) -> bool:
    return ids <= await event_ids(store)


async def test_detached_tables_go_only_when_prune_marked_them(store: HistoryStore) -> None:
    await load(store)
    s = quote_ident(store.settings.postgres_schema)
    # A run that stopped between its detach and its drop, and an operator's archive.
    await store.pool.execute(f"COMMENT ON TABLE {s}.{p(D - 3)} IS '{prune_module._MARK}'")
    for name in (p(D - 3), p(D - 2)):
        await store.pool.execute(f"ALTER TABLE {s}.task_events DETACH PARTITION {s}.{name}")
    report = await prune(store.settings, CUTOFF)
    assert report.removed == [Removed(p(D - 3), 3, True), Removed(p(D - 1), 2, False)]
    assert p(D - 2) in await tables(store) and p(D - 3) not in await tables(store)


async def test_bad_cutoffs_are_refused(store: HistoryStore) -> None:
    future = time.time_ns() // 1_000_000 + 60_000
    with pytest.raises(ValidationError, match="future"):
        await prune(store.settings, future)
    with pytest.raises(ValidationError, match="ms since the epoch"):
        await prune(store.settings, -1)


async def test_a_schema_without_history_is_refused(settings: Settings) -> None:
    with pytest.raises(ResultlogError, match="no history table"):
        await prune(settings, CUTOFF)


def test_partition_names_map_back_to_their_days() -> None:
    for day in (0, D, days_from_civil(9999, 12, 31), days_from_civil(10000, 1, 1), -1):
        assert days_from_civil(*civil_from_days(day)) == day
    assert day_of_partition(p(D)) == D
    assert day_of_partition(p(days_from_civil(12345, 6, 7))) == days_from_civil(12345, 6, 7)
    for other in ("task_events_20240231", "task_events_2024031", "task_events", "task_events_x"):
        assert day_of_partition(other) is None


# -- the command line ------------------------------------------------------------------


async def test_cli_prune(store: HistoryStore) -> None:
    await load(store)
    before = await partitions_of(store)
    code, out, err = await cli(store.settings, "prune", "--older-than", "30d", "--dry-run")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("dry run: would remove events before ") and lines[0].endswith("(older than 30d)")
    assert lines[1:] == [f"would drop {p(d)}: {n} rows" for d, n in ((D - 3, 3), (D - 2, 2), (D - 1, 5), (D, 2))] + [
        "would forget 12 tasks in task_summary",
        "would drop 9 rollup rows of the hours before the cutoff's",
        "would remove 12 rows: 4 partition(s) dropped, 0 trimmed"]
    assert await partitions_of(store) == before
    code, out, err = await cli(store.settings, "prune", "--older-than", "30d")
    assert code == 0, err
    assert out.splitlines()[-1] == "removed 12 rows: 4 partition(s) dropped, 0 trimmed"
    assert await partitions_of(store) == before - {p(D - 3), p(D - 2), p(D - 1), p(D)}
    assert await store.count() == 0


@pytest.mark.parametrize(("value", "message"), [
    ("30x", "--older-than '30x': expected a duration such as 30d, 12h, 90m"),
    ("0d", "--older-than '0d': the duration must be more than zero"),
    ("-5d", "--older-than '-5d': expected a duration"),
])
async def test_cli_prune_refuses_bad_durations(settings: Settings, value: str, message: str) -> None:
    code, out, err = await cli(settings, "prune", f"--older-than={value}")
    assert code == 1 and err.startswith("resultlog: error: ") and message in err, err


async def test_concurrent_prunes_wait_for_each_other(store: HistoryStore) -> None:
    kept = await load(store)
    first, second = await asyncio.gather(prune(store.settings, CUTOFF), prune(store.settings, CUTOFF))
    assert sorted([first.rows, second.rows]) == [0, 7]
    assert await event_ids(store) == {event_id for event_id, keep in kept.items() if keep}
