"""Analytics over the history: a synthetic history with known answers, loaded through the
real pipeline (Emitter -> Kafka -> ``resultlog process`` -> Postgres), then the views,
``task_stats()``, the CLI and the examples of docs/analytics.md checked against it."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from resultlog import names
from resultlog.analytics_commands import parse_duration, parse_time, table
from resultlog.errors import ConfigurationError, InvalidTaskId, ValidationError
from resultlog.producers import Emitter
from resultlog.schemas.event import ExceptionInfo, TaskEvent
from resultlog.schemas.states import State
from resultlog.settings import Settings
from resultlog.views.analytics import Analytics, NameStats, check_window
from resultlog.views.history import HistoryStore
from resultlog.views.migrations import quote_ident
from tests.conftest import cleanup, pg_connection
from tests.integration.processes import ProcessorProcess
from tests.integration.test_pipeline import eventually

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "analytics.md"

UTC = timezone.utc
T0 = datetime(2025, 5, 6, 10, 0, tzinfo=UTC)  # the window: [10:00, 11:00)
T0_MS = int(T0.timestamp() * 1000)
MIN = 60_000
A, B = "shop.resize", "shop.email"
DOC_TASK = "0b7e6c52-4e0b-4d55-9c1d-2f8a1c3e9d47"  # the task docs/analytics.md looks up


def at(ms: int) -> datetime:
    return T0 + timedelta(milliseconds=ms)


def ev(task_id: str, state: str, ms: int, *, name: str | None = A, attempt: int = 0,
       runtime: float | None = None, exc: str | None = None, worker: str = "w1") -> TaskEvent:
    return TaskEvent.create(
        task_id, state, timestamp=T0_MS + ms, task_name=name, attempt=attempt, runtime=runtime,
        worker=worker, result=task_id if state == "SUCCESS" else None,
        exc=None if exc is None else ExceptionInfo(exc, "builtins", f"{exc} in {task_id}"),
    )


def dataset() -> list[TaskEvent]:
    """The history whose answers the tests assert (times from 10:00:00.000)."""
    e: list[TaskEvent] = []
    # First half hour, name A. Ten successes with runtimes 1..10 s; the first one's
    # outcome is exactly at 10:00:00.000 (the window includes its start).
    for i in range(1, 11):
        t = 0 if i == 1 else i * MIN
        e += [ev(f"a-ok-{i}", "RECEIVED", t - 2000), ev(f"a-ok-{i}", "STARTED", t - 1000),
              ev(f"a-ok-{i}", "SUCCESS", t, runtime=float(i), worker="w2")]
    # Retried once each, then succeeded (runtimes 11, 12); the RETRY reports none.
    for i, runtime in ((1, 11.0), (2, 12.0)):
        t = (10 + i) * MIN
        tid = f"a-retry-{i}" if i == 1 else DOC_TASK
        e += [ev(tid, "RECEIVED", t), ev(tid, "STARTED", t + 100),
              ev(tid, "RETRY", t + 200, exc="ValueError"),
              ev(tid, "STARTED", t + 5000, attempt=1, worker="w3"),
              ev(tid, "SUCCESS", t + 6000, attempt=1, runtime=runtime, worker="w3")]
    e += [ev("a-fail-1", "RECEIVED", 13 * MIN), ev("a-fail-1", "STARTED", 13 * MIN + 100),
          ev("a-fail-1", "FAILURE", 13 * MIN + 200, runtime=20.0, exc="KeyError")]
    e += [ev("a-revoked-1", "RECEIVED", 14 * MIN), ev("a-revoked-1", "REVOKED", 14 * MIN + 100)]
    # Only its RECEIVED names it: the outcome is counted under A all the same.
    e += [ev("a-nameless-1", "RECEIVED", 15 * MIN), ev("a-nameless-1", "STARTED", 15 * MIN + 100, name=None),
          ev("a-nameless-1", "SUCCESS", 15 * MIN + 200, name=None, runtime=13.0)]
    # Two outcomes for one attempt (a redelivered message run twice): the later wins.
    e += [ev("a-dup-1", "STARTED", 16 * MIN), ev("a-dup-1", "SUCCESS", 16 * MIN + 100, runtime=99.0),
          ev("a-dup-1", "SUCCESS", 16 * MIN + 200, runtime=14.0)]
    e += [ev("a-running-1", "RECEIVED", 17 * MIN), ev("a-running-1", "STARTED", 17 * MIN + 100)]
    # Second half hour, name A: runtimes 2, 4, 6, 8; the last outcome at 10:59:59.999.
    for i, runtime in enumerate((2.0, 4.0, 6.0, 8.0)):
        t = 60 * MIN - 1 if i == 3 else (31 + i) * MIN
        e += [ev(f"a-late-ok-{i}", "STARTED", t - 500), ev(f"a-late-ok-{i}", "SUCCESS", t, runtime=runtime)]
    # Name B, first half hour: three failures and one success.
    for i in range(3):
        e += [ev(f"b-fail-{i}", "STARTED", (20 + i) * MIN, name=B),
              ev(f"b-fail-{i}", "FAILURE", (20 + i) * MIN + 500, name=B, runtime=0.5, exc="SMTPError")]
    e += [ev("b-ok-1", "SUCCESS", 25 * MIN, name=B, runtime=0.25)]
    # No event of it carries a name.
    e += [ev("anon-1", "RECEIVED", 26 * MIN, name=None), ev("anon-1", "SUCCESS", 26 * MIN + 10, name=None, runtime=1.0)]
    # Just outside the window on either side.
    e += [ev("a-before", "SUCCESS", -1, runtime=100.0), ev("a-after", "SUCCESS", 60 * MIN, runtime=100.0)]
    return e


@dataclass(frozen=True)
class Loaded:
    settings: Settings
    events: list[TaskEvent]


@pytest.fixture(scope="module")
async def loaded(base_settings: Settings) -> AsyncIterator[Loaded]:
    tag = uuid.uuid4().hex[:12]
    settings = base_settings.replace(
        events_topic=f"t.{tag}", consumer_group=f"t.{tag}.group", redis_prefix=f"t{tag}:",
        postgres_schema=f"t_{tag}")
    events = dataset()
    try:
        async with Emitter(settings) as emitter:
            for event in events:
                await emitter.emit(event)
            await emitter.emit(events[2])  # a duplicate delivery: stored once
        with ProcessorProcess(settings) as proc:
            async def all_in() -> bool:
                async with HistoryStore(settings) as store:
                    try:
                        return await store.count() == len(events)
                    except ConfigurationError:  # not migrated yet
                        return False
            await eventually(all_in, f"{len(events)} events in the history\n{proc.output()[-2000:]}")
        yield Loaded(settings, events)
    finally:
        await cleanup(settings)


@pytest.fixture
async def analytics(loaded: Loaded) -> AsyncIterator[Analytics]:
    async with Analytics(loaded.settings) as a:
        yield a


def row(st: NameStats) -> tuple[object, ...]:
    return (st.task_name, st.bucket_start, st.bucket_end, st.outcomes, st.succeeded, st.failed,
            st.retried, st.revoked)


def percentile_cont(values: list[float], q: float) -> float:
    """PostgreSQL's percentile_cont: linear interpolation between the closest ranks."""
    s = sorted(values)
    pos = q * (len(s) - 1)
    lo = int(pos)
    return s[lo] if lo + 1 == len(s) else s[lo] + (pos - lo) * (s[lo + 1] - s[lo])


# -- task_stats() ---------------------------------------------------------------------


async def test_stats_per_half_hour_bucket(analytics: Analytics) -> None:
    rows = await analytics.stats(T0, T0 + timedelta(hours=1), bucket=timedelta(minutes=30))
    half = T0 + timedelta(minutes=30)
    end = T0 + timedelta(hours=1)
    assert [row(r) for r in rows] == [
        (B, T0, half, 4, 1, 3, 0, 0),
        (A, T0, half, 18, 14, 1, 2, 1),
        (A, half, end, 4, 4, 0, 0, 0),
        (None, T0, half, 1, 1, 0, 0, 0),
    ]
    b, a1, a2, anon = rows
    # A, first half hour: runtimes 1..14 and 20 (RETRY and REVOKED report none; of
    # a-dup-1's two outcomes only the winner's 14 counts, not 99).
    assert (a1.success_rate, a1.failure_rate, a1.retry_rate) == (14 / 18, 1 / 18, 2 / 18)
    assert a1.runtime_p50 == pytest.approx(8.0)
    assert a1.runtime_p95 == pytest.approx(15.8)  # 14 + 0.3 * (20 - 14)
    assert a1.runtime_p99 == pytest.approx(19.16)  # 14 + 0.86 * (20 - 14)
    assert (a2.runtime_p50, a2.runtime_p95, a2.runtime_p99) == pytest.approx((5.0, 7.7, 7.94))
    assert (b.success_rate, b.failure_rate, b.retry_rate) == (0.25, 0.75, 0.0)
    assert (b.runtime_p50, b.runtime_p95, b.runtime_p99) == pytest.approx((0.5, 0.5, 0.5))
    assert anon.runtime_p50 == 1.0


async def test_stats_one_bucket_for_the_window_and_one_name(analytics: Analytics) -> None:
    end = T0 + timedelta(hours=1)
    [a] = await analytics.stats(T0, end, name=A)
    assert row(a) == (A, T0, end, 22, 18, 1, 2, 1)
    runtimes = [float(i) for i in range(1, 15)] + [20.0, 2.0, 4.0, 6.0, 8.0]
    for q, got in ((0.5, a.runtime_p50), (0.95, a.runtime_p95), (0.99, a.runtime_p99)):
        assert got == pytest.approx(percentile_cont(runtimes, q))
    assert (a.success_rate, a.retry_rate) == (18 / 22, 2 / 22)
    every = await analytics.stats(T0, end)
    assert [(r.task_name, r.outcomes) for r in every] == [(B, 4), (A, 22), (None, 1)]
    assert await analytics.stats(T0, end, name="no.such.task") == []


async def test_stats_window_edges(analytics: Analytics) -> None:
    # [10:00:00.000, 10:00:00.001) holds exactly a-ok-1's outcome; the events at
    # 09:59:59.999 and 11:00:00.000 are outside [10:00, 11:00).
    [first] = await analytics.stats(T0, at(1))
    assert (first.task_name, first.outcomes, first.runtime_p50) == (A, 1, 1.0)
    [last] = await analytics.stats(at(60 * MIN - 1), at(60 * MIN))
    assert (last.outcomes, last.runtime_p50) == (1, 8.0)
    outside = await analytics.stats(at(-1), T0) + await analytics.stats(at(60 * MIN), at(60 * MIN + 1))
    assert [(r.outcomes, r.runtime_p50) for r in outside] == [(1, 100.0), (1, 100.0)]


async def test_stats_agree_with_the_attempts_view(analytics: Analytics, loaded: Loaded) -> None:
    s = quote_ident(loaded.settings.postgres_schema)
    rows = await analytics.pool.fetch(
        f"SELECT task_name, count(*) AS n, count(*) FILTER (WHERE outcome = 'SUCCESS') AS ok"
        f" FROM {s}.attempts WHERE finished >= $1 AND finished < $2 GROUP BY task_name"
        " ORDER BY task_name NULLS LAST", T0, T0 + timedelta(hours=1))
    stats = await analytics.stats(T0, T0 + timedelta(hours=1))
    assert [(r["task_name"], r["n"], r["ok"]) for r in rows] == [
        (st.task_name, st.outcomes, st.succeeded) for st in stats]


def test_bad_windows_are_refused_naming_the_problem() -> None:
    with pytest.raises(ValidationError, match="empty"):
        check_window(T0, T0, None)
    with pytest.raises(ValidationError, match="timezone-aware"):
        check_window(datetime(2025, 1, 1), T0, None)
    with pytest.raises(ValidationError, match="positive"):
        check_window(T0, T0 + timedelta(hours=1), timedelta(0))
    with pytest.raises(ValidationError, match="buckets"):
        check_window(T0, T0 + timedelta(days=30), timedelta(seconds=1))


# -- tasks and attempts ----------------------------------------------------------------


async def test_the_tasks_view_is_the_fold_with_totals(analytics: Analytics) -> None:
    retried = await analytics.task("a-retry-1")
    assert retried is not None
    assert (retried.task_name, retried.state, retried.worker, retried.retries) == (A, State.SUCCESS, "w3", 1)
    assert (retried.first_seen, retried.started, retried.finished) == (at(11 * MIN), at(11 * MIN + 100), at(11 * MIN + 6000))
    assert (retried.runtime, retried.exception_type) == (11.0, None)

    failed = await analytics.task("a-fail-1")
    assert failed is not None
    assert (failed.state, failed.exception_type, failed.exception_message) == (State.FAILURE, "KeyError", "KeyError in a-fail-1")
    assert (failed.finished, failed.runtime) == (at(13 * MIN + 200), 20.0)

    revoked = await analytics.task("a-revoked-1")
    assert revoked is not None
    assert (revoked.state, revoked.started, revoked.finished, revoked.runtime) == (State.REVOKED, None, at(14 * MIN + 100), None)

    running = await analytics.task("a-running-1")
    assert running is not None
    assert (running.state, running.started, running.finished) == (State.STARTED, at(17 * MIN + 100), None)

    nameless = await analytics.task("a-nameless-1")
    dup = await analytics.task("a-dup-1")
    anon = await analytics.task("anon-1")
    assert nameless is not None and dup is not None and anon is not None
    assert (nameless.task_name, nameless.runtime) == (A, 13.0)  # named by its RECEIVED
    assert (dup.runtime, dup.finished) == (14.0, at(16 * MIN + 200))  # the winner's alone
    assert anon.task_name is None
    assert await analytics.task("never-seen") is None


async def test_the_tasks_view_has_one_row_per_task(analytics: Analytics, loaded: Loaded) -> None:
    s = quote_ident(loaded.settings.postgres_schema)
    n = await analytics.pool.fetchval(f"SELECT count(*) FROM {s}.tasks")
    assert n == len({e.task_id for e in loaded.events})
    states = dict(await analytics.pool.fetch(f"SELECT state, count(*) FROM {s}.tasks GROUP BY state"))
    assert states == {"SUCCESS": 22, "FAILURE": 4, "REVOKED": 1, "STARTED": 1}


async def test_the_attempts_view(analytics: Analytics) -> None:
    first, second = await analytics.attempts("a-retry-1")
    assert (first.attempt, first.outcome, first.state, first.worker) == (0, State.RETRY, State.RETRY, "w1")
    assert (first.started, first.finished, first.runtime) == (at(11 * MIN + 100), at(11 * MIN + 200), None)
    assert (first.exception_type, first.task_name) == ("ValueError", A)
    assert (second.attempt, second.outcome, second.runtime, second.exception_type) == (1, State.SUCCESS, 11.0, None)
    assert (second.first_seen, second.started, second.finished) == (at(11 * MIN + 5000), at(11 * MIN + 5000), at(11 * MIN + 6000))
    [running] = await analytics.attempts("a-running-1")
    assert (running.outcome, running.finished, running.state) == (None, None, State.STARTED)
    assert await analytics.attempts("never-seen") == []


async def test_transitions_in_fold_order_with_offsets(analytics: Analytics) -> None:
    steps = await analytics.transitions("a-retry-1")
    assert [(t.event.state, t.event.attempt, t.offset_s) for t in steps] == [
        (State.RECEIVED, 0, 0.0), (State.STARTED, 0, 0.1), (State.RETRY, 0, 0.2),
        (State.STARTED, 1, 5.0), (State.SUCCESS, 1, 6.0)]
    assert await analytics.transitions("never-seen") == []
    with pytest.raises(InvalidTaskId):
        await analytics.task("")


async def test_the_sql_objects_carry_the_names_in_names_py(loaded: Loaded) -> None:
    async with pg_connection(loaded.settings.postgres_dsn) as conn:
        schema = loaded.settings.postgres_schema
        views = {r[0] for r in await conn.fetch(
            "SELECT table_name FROM information_schema.views WHERE table_schema = $1", schema)}
        functions = {r[0] for r in await conn.fetch(
            "SELECT routine_name FROM information_schema.routines WHERE routine_schema = $1", schema)}
        tables = {r[0] for r in await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = $1"
            " AND table_type = 'BASE TABLE' AND table_name NOT LIKE $2", schema,
            names.HISTORY_TABLE + "\\_%")}
        triggers = {r[0] for r in await conn.fetch(
            "SELECT DISTINCT trigger_name FROM information_schema.triggers"
            " WHERE event_object_schema = $1", schema)}
    assert views == {names.TASKS_VIEW, names.ATTEMPTS_VIEW, names.WORKER_SESSIONS_VIEW}
    assert names.TASK_STATS_FUNCTION in functions
    assert names.REBUILD_ROLLUPS_FUNCTION in functions
    assert tables == {names.HISTORY_TABLE, names.OFFSETS_TABLE, names.MIGRATIONS_TABLE,
                      names.WORKER_HEARTBEATS_TABLE, names.TASK_SUMMARY_TABLE,
                      names.TASK_MINUTES_TABLE, names.TASK_RUNTIMES_TABLE,
                      names.CHORD_HOOK_CLAIMS_TABLE, names.CHORD_BODY_FIRES_TABLE}
    # The rollups' trigger reads names the summary's has just folded: it must fire later.
    assert {names.TASK_SUMMARY_TRIGGER, names.ROLLUPS_TRIGGER} <= triggers
    assert names.TASK_SUMMARY_TRIGGER < names.ROLLUPS_TRIGGER


# -- the command line ------------------------------------------------------------------


async def cli(settings: Settings, *args: str) -> tuple[int, str, str]:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("RESULTLOG_")},
           **settings.to_env()}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "resultlog", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def cli_lines(settings: Settings, *args: str) -> list[str]:
    """The lines of ``resultlog *args``, which must succeed."""
    code, out, err = await cli(settings, *args)
    assert code == 0, err
    return out.splitlines()


async def test_cli_status(loaded: Loaded) -> None:
    out = await cli_lines(loaded.settings, "status", "a-fail-1")
    lines = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in out)
    assert lines == {
        "task": "a-fail-1", "name": A, "state": "FAILURE", "worker": "w1", "retries": "0",
        "first seen": "2025-05-06T10:13:00.000Z", "started": "2025-05-06T10:13:00.100Z",
        "finished": "2025-05-06T10:13:00.200Z", "runtime": "20.000s",
        "exception": "KeyError: KeyError in a-fail-1",
    }
    code, out, err = await cli(loaded.settings, "status", "never-seen")
    assert (code, out) == (1, "")
    assert "task 'never-seen' is not in the history" in err


async def test_cli_history(loaded: Loaded) -> None:
    assert await cli_lines(loaded.settings, "history", "a-retry-1") == [
        "task a-retry-1: 5 events",
        " offset  time                      state     attempt  worker  runtime  exception",
        "+0.000s  2025-05-06T10:11:00.000Z  RECEIVED        0  w1",
        "+0.100s  2025-05-06T10:11:00.100Z  STARTED         0  w1",
        "+0.200s  2025-05-06T10:11:00.200Z  RETRY           0  w1               ValueError: ValueError in a-retry-1",
        "+5.000s  2025-05-06T10:11:05.000Z  STARTED         1  w3",
        "+6.000s  2025-05-06T10:11:06.000Z  SUCCESS         1  w3      11.000s",
    ]
    code, out, err = await cli(loaded.settings, "history", "never-seen")
    assert code == 1 and "not in the history" in err


async def test_cli_stats(loaded: Loaded) -> None:
    assert await cli_lines(loaded.settings, "stats", "--since", "2025-05-06T10:00:00Z",
                           "--until", "2025-05-06T11:00Z", "--bucket", "30m", "--name", A) == [
        "task 'shop.resize' from 2025-05-06T10:00:00.000Z to 2025-05-06T11:00:00.000Z, per 30m",
        "name         bucket                    count  ok  failed  retried  revoked    ok%  fail%  retry%     p50      p95      p99",
        "shop.resize  2025-05-06T10:00:00.000Z     18  14       1        2        1   77.8    5.6    11.1  8.000s  15.800s  19.160s",
        "shop.resize  2025-05-06T10:30:00.000Z      4   4       0        0        0  100.0    0.0     0.0  5.000s   7.700s   7.940s",
    ]
    out = await cli_lines(loaded.settings, "stats", "--since", "2025-05-06T10:00:00Z",
                          "--until", "2025-05-06T11:00Z")
    assert [line.split()[:2] for line in out[2:]] == [[B, "4"], [A, "22"], ["(unnamed)", "1"]]


@pytest.mark.parametrize(("args", "message"), [
    (["stats", "--since", "5x"], "--since '5x': expected a duration back from now"),
    (["stats", "--bucket", "0m"], "--bucket '0m': the duration must be more than zero"),
    (["stats", "--since", "2025-05-06T11:00Z", "--until", "2025-05-06T10:00Z"], "the window is empty"),
    (["stats", "--name", ""], "--name must not be empty"),
    # A command line's bytes that were not UTF-8 (Python's lone surrogates).
    (["stats", "--name", "\udcff"], "--name '\\udcff' is not valid Unicode text"),
    (["status", "\udcff"], "task id '\\udcff' is not valid Unicode text"),
    (["status", ""], "task id must not be empty"),
    # Beyond what a timedelta holds: refused by the cap, not an OverflowError.
    (["stats", "--since", "999999999w999999999w"], "--since '999999999w999999999w': at most"),
    (["stats", "--bucket", "999999999w999999999w"], "--bucket '999999999w999999999w': at most"),
    (["prune", "--older-than", "999999999w999999999w", "--dry-run"], "at most 36500 days"),
    # Outside what the history holds (asyncpg: out of range, or sent as -infinity).
    (["stats", "--since", "0001-01-01"], "--since '0001-01-01': before 1970-01-01T00:00:00.000Z"),
    (["stats", "--since", "0001-01-01T00:00:00+05:00"], "before 1970-01-01T00:00:00.000Z"),
    (["stats", "--until", "9999-12-31T23:59:59-05:00"], "after 9999-12-31T23:59:59.999Z"),
])
async def test_cli_refuses_bad_input_clearly(settings: Settings, args: list[str], message: str) -> None:
    code, out, err = await cli(settings, *args)
    assert code == 1
    assert err.startswith("resultlog: error: ") and message in err, err


async def test_cli_on_a_schema_without_history_says_what_to_do(settings: Settings) -> None:
    code, _, err = await cli(settings, "status", "x")
    assert code == 1 and "RESULTLOG_POSTGRES_SCHEMA" in err and "resultlog process" in err


def test_durations_and_times() -> None:
    assert parse_duration("30d", "--x") == timedelta(days=30)
    assert parse_duration("12h", "--x") == timedelta(hours=12)
    assert parse_duration("90m", "--x") == timedelta(minutes=90)
    assert parse_duration("1h30m", "--x") == timedelta(minutes=90)
    for bad in ("", "30", "d", "-1d", "1.5h", "30 days", "0s", "99999999d", "36501d",
                "999999999w999999999w"):
        with pytest.raises(ValidationError, match="--x"):
            parse_duration(bad, "--x")
    assert parse_duration("36500d", "--x") == timedelta(days=36_500)
    assert parse_time("1h", "--since", T0) == T0 - timedelta(hours=1)
    assert parse_time("2025-05-06T10:00", "--since", T0) == T0  # naive means UTC
    assert parse_time("2025-05-06T12:00+02:00", "--since", T0) == T0
    # From the epoch to the last millisecond of 9999, in UTC whatever the zone given.
    assert parse_time("1970-01-01", "--since", T0) == datetime(1970, 1, 1, tzinfo=UTC)
    assert parse_time("1970-01-01T05:00+05:00", "--since", T0) == datetime(1970, 1, 1, tzinfo=UTC)
    assert parse_time("9999-12-31T23:59:59.999Z", "--until", T0) == datetime(
        9999, 12, 31, 23, 59, 59, 999_000, tzinfo=UTC)
    for early in ("0001-01-01", "0001-01-01T00:00:00+05:00", "1969-12-31T23:59:59.999999Z",
                  "1970-01-01T04:59:59+05:00"):
        with pytest.raises(ValidationError, match=re.escape(f"--since {early!r}: before 1970-01-01T")):
            parse_time(early, "--since", T0)
    # A duration back past the epoch means from the epoch: nothing is older.
    assert parse_time("36500d", "--since", T0) == datetime(1970, 1, 1, tzinfo=UTC)
    for late in ("9999-12-31T23:59:59.999999", "9999-12-31T23:59:59-05:00",
                 "9999-12-31T23:59:59.999001Z"):
        with pytest.raises(ValidationError, match=re.escape(f"--until {late!r}: after 9999-12-31T")):
            parse_time(late, "--until", T0)
    assert table(["a", "n"], [["x", "1"], ["yy", "10"]], right=[1]) == "a    n\nx    1\nyy  10"


# -- the documentation -----------------------------------------------------------------

_SESSION = re.compile(r"^\$ resultlog (?P<args>.*)\n(?P<out>(?:(?!```).+\n)*)", re.M)


def doc_sessions() -> list[tuple[list[str], list[str]]]:
    """(arguments, expected output lines) of each ``$ resultlog stats|history|status``
    in docs/analytics.md (prune's example is from the benchmark's history, not this one)."""
    return [(shlex.split(m["args"]), m["out"].splitlines()) for m in _SESSION.finditer(DOC.read_text())
            if m["args"].split()[0] in ("stats", "history", "status")]


def test_the_doc_shows_every_read_command() -> None:
    assert sorted({args[0] for args, _ in doc_sessions()}) == ["history", "stats", "status"]


@pytest.mark.parametrize("index", range(len(doc_sessions())))
async def test_doc_command_prints_what_the_doc_shows(loaded: Loaded, index: int) -> None:
    args, expected = doc_sessions()[index]
    assert await cli_lines(loaded.settings, *args) == expected

_SQL_BLOCK = re.compile(r"```sql\n(?P<sql>.*?)```", re.S)


def doc_examples() -> list[str]:
    return [m["sql"] for m in _SQL_BLOCK.finditer(DOC.read_text())]


def test_the_doc_has_examples() -> None:
    assert len(doc_examples()) >= 6


@pytest.mark.parametrize("index", range(len(doc_examples())))
async def test_doc_example_runs(loaded: Loaded, index: int) -> None:
    """Every SQL block of docs/analytics.md runs against the loaded history (with the
    test's schema in place of ``resultlog``) and returns rows."""
    sql = re.sub(r"\bresultlog\.", quote_ident(loaded.settings.postgres_schema) + ".",
                 doc_examples()[index])
    # The examples look at "the last hour": here, the hour of the loaded history.
    sql = sql.replace("now()", "timestamptz '2025-05-06 11:00:00+00'")
    async with pg_connection(loaded.settings.postgres_dsn) as conn:
        rows = await conn.fetch(sql)
    assert rows, sql
