"""Replay rebuilds both stores exactly from the log; verify proves it (issue 6)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from resultlog import names
from resultlog.errors import ReplayRefused, StoreUnavailable, ValidationError
from resultlog.processors.replay import clear_redis_view, replay
from resultlog.processors.verify import verify
from resultlog.errors import ChordError
from resultlog.producers import Emitter
from resultlog.chords.declare import declare_chord
from resultlog.schemas.event import ExceptionInfo, TaskEvent
from resultlog.settings import Settings
from resultlog.views import HistoryStore, RedisView, ResultBackend
from tests.conftest import pg_connection
from tests.integration.processes import ProcessorProcess
from tests.integration.test_pipeline import eventually

pytestmark = pytest.mark.integration

# Event time of the workload: recent past (Kafka refuses record timestamps more than
# log.message.timestamp.after.max.ms = 1 h ahead), well inside the one-day TTL.
BASE_MS = (int(time.time()) - 4 * 3600) * 1000


async def workload(settings: Settings, n: int = 60, base_ms: int = BASE_MS, tag: str = "w") -> int:
    """Successes, failures, retries and revocations; returns how many events it emitted."""
    events: list[TaskEvent] = []
    for i in range(n):
        task = f"{tag}-{i}"

        def ev(state: str, **fields: Any) -> None:
            events.append(TaskEvent.create(task, state, timestamp=base_ms + i, **fields))

        ev("RECEIVED", task_name="job", args=[i])
        ev("STARTED")
        kind = i % 4
        if kind == 0:
            ev("SUCCESS", result={"i": i}, runtime=0.5)
        elif kind == 1:  # kept a week (the event's own TTL), not the settings' day
            ev("FAILURE", exc=ExceptionInfo.from_exception(ValueError(f"bad {i}")),
               result_ttl=7 * 86_400_000)
        elif kind == 2:
            ev("RETRY", exc=ExceptionInfo.from_exception(TimeoutError("slow")))
            ev("STARTED", attempt=1)
            ev("SUCCESS", result=i, attempt=1)
        else:
            ev("REVOKED", result_ttl=0)  # kept for ever
    async with Emitter(settings) as em:
        for event in events:
            await em.emit(event)
    return len(events)


async def history_holds(settings: Settings, events: int) -> bool:
    """Whether the history holds exactly ``events`` events (not while it does not exist)."""
    async with HistoryStore(settings) as store:
        try:
            return await store.count() == events
        except Exception:
            return False


async def fill_through_processor(settings: Settings, events: int,
                                 also: Callable[[], Awaitable[None]] | None = None) -> None:
    """Run a processor until both stores hold ``events`` events (and ``also`` returned:
    for what the processor does after the stores, such as chord views)."""
    with ProcessorProcess(settings) as proc:
        await eventually(lambda: history_holds(settings, events),
                         f"{events} events in the history\n{proc.output()[-2000:]}")
        view = RedisView(settings)
        try:
            async def redis_done() -> bool:
                offsets = await view.committed_offsets(settings.consumer_group, settings.events_topic)
                async with HistoryStore(settings) as store:
                    pg = await store.committed_offsets(settings.consumer_group, settings.events_topic)
                # The view records every assigned partition, also those with no events.
                return all(offsets.get(p, -1) >= o for p, o in pg.items())
            await eventually(redis_done, "Redis caught up with the history")
        finally:
            await view.close()
        if also is not None:
            await also()


async def redis_snapshot(settings: Settings) -> dict[str, Any]:
    """Every task and chord hash under the prefix, with its absolute expiry
    (bookkeeping such as offsets excluded)."""
    client = Redis.from_url(settings.redis_url)
    out: dict[str, Any] = {}
    try:
        patterns = (names.task_key_pattern(settings.redis_prefix), names.chord_key(settings.redis_prefix, "*"))
        for pattern in patterns:
            async for key in client.scan_iter(match=pattern):
                fields = await client.hgetall(key)
                expiry = await client.execute_command("PEXPIRETIME", key)
                out[key.decode()] = (sorted(fields.items()), expiry)
    finally:
        await client.aclose()
    return out


async def history_snapshot(settings: Settings) -> list[tuple[Any, ...]]:
    async with pg_connection(settings.postgres_dsn) as conn:
        rows = await conn.fetch(f'SELECT * FROM "{settings.postgres_schema}".{names.HISTORY_TABLE} ORDER BY event_id')
    return [tuple(r.values()) for r in rows]


async def chords(settings: Settings) -> int:
    """A chord that completes, one that fails (fail fast), one still open; returns events."""
    events = 0
    async with Emitter(settings) as em:
        for chord_id, size, fail_at, finish in (("c-ok", 4, None, 4), ("c-bad", 4, 1, 4), ("c-open", 3, None, 2)):
            await declare_chord(em, chord_id, size, callback="tasks.total")
            events += 1
            for i in range(finish):
                task = f"{chord_id}-m{i}"
                member = {"chord_id": chord_id, "chord_size": size, "chord_index": i}
                if i == fail_at:
                    await em.emit(TaskEvent.create(task, "FAILURE", timestamp=BASE_MS + 500 + i,
                                                   exc=ExceptionInfo("KeyError", "builtins", "x"), **member))
                else:
                    await em.emit(TaskEvent.create(task, "SUCCESS", result=i * 10,
                                                   timestamp=BASE_MS + 500 + i, **member))
                events += 1
    return events


async def test_replay_rebuilds_both_stores_exactly_and_verify_agrees(settings: Settings) -> None:
    n = await workload(settings)
    chord_events = await chords(settings)
    members = chord_events - 3  # declarations are not task events

    async def chord_views() -> None:
        # While the processor runs: its chord aggregator follows the stores, and each
        # chord's traffic is on its own partition (c-open's may lag the others').
        async with ResultBackend(settings) as backend:
            assert await backend.AioChordResult("c-ok").get(timeout=60) == [0, 10, 20, 30]
            with pytest.raises(ChordError):
                await backend.AioChordResult("c-bad").get(timeout=60)

        async def open_chord_counted() -> bool:
            async with ResultBackend(settings) as backend:
                return await backend.AioChordResult("c-open").completed_count() == 2
        await eventually(open_chord_counted, "the open chord's progress")

    await fill_through_processor(settings, n + members, also=chord_views)
    n += members
    redis_before, history_before = await redis_snapshot(settings), await history_snapshot(settings)
    assert len(history_before) == n and len(redis_before) == 60 + members + 3
    # Each expiry as the winner's own TTL (or the settings') says: compared below too.
    expiries = {redis_before[names.task_key(settings.redis_prefix, f"w-{i}")][1] for i in range(4)}
    assert expiries == {BASE_MS + 2 + settings.result_ttl_s * 1000, BASE_MS + 1 + 7 * 86_400_000,
                        BASE_MS + 0 + settings.result_ttl_s * 1000, -1}

    report = await verify(settings)
    assert report.ok, [d.render() for d in report.differences]

    async with HistoryStore(settings) as store:
        live = await store.committed_offsets(settings.consumer_group, settings.events_topic)
    summary = await replay(settings, fresh=True, progress=False)
    assert summary.stats.read == n + 3  # + the chord declarations, which are not history rows
    assert summary.stats.inserted == n and summary.stats.dead_letters == 0
    assert await redis_snapshot(settings) == redis_before
    assert await history_snapshot(settings) == history_before
    # The live processor's positions in the history: forgotten with it, then recorded
    # again at the replay's end, which is where the processor had left them.
    async with HistoryStore(settings) as store:
        assert await store.committed_offsets(settings.consumer_group, settings.events_topic) == live

    # Run again over the rebuilt stores: nothing new, nothing changed.
    again = await replay(settings, progress=False)
    assert again.stats.inserted == 0 and again.stats.duplicates == n
    assert await redis_snapshot(settings) == redis_before


async def test_verify_names_exactly_the_corrupted_tasks(settings: Settings) -> None:
    n = await workload(settings, n=20)
    await fill_through_processor(settings, n)
    client = Redis.from_url(settings.redis_url)
    try:
        await client.hset(names.task_key(settings.redis_prefix, "w-0"), "state", "STARTED")
        await client.delete(names.task_key(settings.redis_prefix, "w-5"))
    finally:
        await client.aclose()
    async with pg_connection(settings.postgres_dsn) as conn:
        await conn.execute(
            f"DELETE FROM \"{settings.postgres_schema}\".{names.HISTORY_TABLE} WHERE task_id = 'w-9' AND state = 'FAILURE'")
    report = await verify(settings)
    assert sorted((d.store, d.task_id) for d in report.differences) == [
        ("postgres", "w-9"), ("redis", "w-0"), ("redis", "w-5")]
    wrong = next(d for d in report.differences if d.task_id == "w-0")
    assert wrong.expected["state"] == "SUCCESS" and wrong.actual["state"] == "STARTED"
    # A replay over the live stores fills what is missing (the deleted key and row)
    # but cannot see a value corrupted under an unchanged order token: that takes
    # --fresh, which rebuilds from nothing.
    await replay(settings, progress=False)
    assert [(d.store, d.task_id) for d in (await verify(settings)).differences] == [("redis", "w-0")]
    await replay(settings, fresh=True, progress=False)
    assert (await verify(settings)).ok


async def test_a_fresh_view_clears_its_own_keys_and_nobody_elses(settings: Settings) -> None:
    # A prefix with glob characters, and keys of other applications that a SCAN for
    # "prefix*" used to match: one that the unescaped glob matches, and ones that merely
    # start with the prefix (as "app10:..." starts with "app1").
    base = settings.redis_prefix.rstrip(":")
    prefix = f"{base}[x]?"
    ours = [names.task_key(prefix, "a"), names.chord_key(prefix, "c"), names.offsets_key(prefix, "g"),
            f"{prefix}chordfire:e1",  # a Celery body's fire mark, as processors kept them until 1 Dec 2026
            names.worker_key(prefix, "w1"),
            names.workers_index_key(prefix), names.view_batch_marker_key(prefix, "g", "b1")]
    kept = [f"{base}xY:precious", f"{prefix}0:precious", f"{prefix}taskish", f"{base}:task:a"]
    async with Redis.from_url(settings.redis_url) as client:
        for key in ours + kept:
            await client.set(key, "1")
        try:
            fresh = dataclasses.replace(settings, redis_prefix=prefix)
            assert await clear_redis_view(fresh) == len(ours)
            assert [k for k in ours + kept if await client.exists(k)] == kept
        finally:
            await client.delete(*ours, *kept)


async def test_replay_from_a_timestamp_rebuilds_only_what_follows(settings: Settings) -> None:
    early = await workload(settings, n=8, base_ms=BASE_MS, tag="early")
    late = await workload(settings, n=8, base_ms=BASE_MS + 3_600_000, tag="late")
    await fill_through_processor(settings, early + late)
    summary = await replay(settings, fresh=True, from_timestamp_ms=BASE_MS + 1_800_000, progress=False)
    assert summary.stats.read == late
    async with RedisView(settings) as view:
        ids = await view.task_ids()
    assert ids and all(t.startswith("late-") for t in ids)
    async with HistoryStore(settings) as store:
        assert await store.count() == late


async def test_replay_refuses_while_a_processor_is_live_unless_forced(settings: Settings) -> None:
    n = await workload(settings, n=4)
    with ProcessorProcess(settings) as proc:
        await eventually(lambda: history_holds(settings, n),
                         f"the processor folded\n{proc.output()[-1500:]}")
        with pytest.raises(ReplayRefused, match="live processor"):
            await replay(settings, progress=False)
        forced = await replay(settings, force=True, progress=False)
        assert forced.stats.read == n and forced.stats.inserted == 0


async def test_a_fresh_forced_replay_beside_a_live_processor_keeps_what_it_wrote_meanwhile(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--fresh --force`` with a processor live: events the processor wrote after the
    replay planned its slice and before it emptied the stores were deleted, then never
    replayed (the slice ended before them, the processor had moved past them): the
    history lost them for good. The interleaving is made, not waited for: the stores
    are emptied only once the live processor has written events past the plan."""
    n = await workload(settings, n=8)
    with ProcessorProcess(settings) as proc:
        await eventually(lambda: history_holds(settings, n), f"the processor folded\n{proc.output()[-1500:]}")
        late: list[int] = []

        async def clear_once_more_is_written(s: Settings) -> None:
            late.append(await workload(settings, n=4, tag="late"))
            await eventually(lambda: history_holds(settings, n + late[0]),
                             f"the live processor wrote the late events\n{proc.output()[-1500:]}")
            await clear_redis_view(s)

        monkeypatch.setattr("resultlog.processors.replay.clear_redis_view", clear_once_more_is_written)
        await replay(settings, fresh=True, force=True, jobs=1, progress=False)
        assert late, "the replay emptied no store"
        await eventually(lambda: history_holds(settings, n + late[0]),
                         f"the history holds every event of the log\n{proc.output()[-1500:]}")
    report = await verify(settings, redis=False)
    assert report.ok and report.events == n + late[0], report.differences


class StopAfterFirstBatch:
    """An ``on_batch`` that counts what it is told of, then interrupts the replay."""

    class Interrupt(Exception):
        pass

    def __init__(self) -> None:
        self.seen = 0

    def __call__(self, stats: Any) -> None:
        self.seen += stats.read
        raise self.Interrupt


async def interrupted_fresh_replay(settings: Settings, batch_records: int
                                   ) -> tuple[int, list[tuple[Any, ...]], int]:
    """Both stores filled by a processor, then a ``--fresh`` replay interrupted after its
    first batch; returns the events, the history before, and what the replay read."""
    n = await workload(settings, n=40)
    await fill_through_processor(settings, n)
    before = await history_snapshot(settings)
    stop = StopAfterFirstBatch()
    # One consumer in this process, so that what was counted is exactly what was
    # written (concurrent consumers may land a write the interruption did not count).
    with pytest.raises(StopAfterFirstBatch.Interrupt):
        await replay(settings, fresh=True, batch_records=batch_records, jobs=1, consumers=1,
                     progress=False, on_batch=stop)
    assert 0 < stop.seen < n
    return n, before, stop.seen


async def test_an_interrupted_replay_resumes_where_it_stopped(settings: Settings) -> None:
    n, before, seen = await interrupted_fresh_replay(settings, 50)
    rest = await replay(settings, resume=True, progress=False)
    assert rest.stats.read == n - seen
    assert await history_snapshot(settings) == before
    assert (await verify(settings)).ok


async def test_a_processor_started_after_an_interrupted_fresh_replay_completes_the_history(
        settings: Settings) -> None:
    """``replay --fresh`` stopped part way (killed), then the processor started instead
    of the replay again, as a supervisor does: the history kept the live processor's
    positions at the old end, so the processor resumed there, and what the replay had
    not written yet was missing from the history for good (a fault audit: 95,000 of
    150,000 events). Emptying the history now forgets the positions in it."""
    n, before, _ = await interrupted_fresh_replay(settings, 20)
    with ProcessorProcess(settings) as proc:
        await eventually(lambda: history_holds(settings, n),
                         f"the history holds every event again\n{proc.output()[-1500:]}")
    assert await history_snapshot(settings) == before
    report = await verify(settings)
    assert report.ok, [d.render() for d in report.differences]


async def test_worker_processes_interrupted_then_resumed_rebuild_exactly(settings: Settings) -> None:
    """With worker processes, an interruption stops them wherever they are; what each
    one finished stays recorded, and --resume completes the rebuild."""
    n = await workload(settings, n=120)
    await fill_through_processor(settings, n)
    before = await history_snapshot(settings)
    views = await redis_snapshot(settings)

    stop = StopAfterFirstBatch()

    with pytest.raises(StopAfterFirstBatch.Interrupt):
        await replay(settings, fresh=True, batch_records=20, jobs=2, consumers=1,
                     progress=False, on_batch=stop)
    assert 0 < stop.seen < n
    rest = await replay(settings, resume=True, jobs=2, progress=False)
    # The workers may have written more than the parent heard of before stopping them.
    assert rest.stats.read <= n - stop.seen
    assert await history_snapshot(settings) == before
    assert await redis_snapshot(settings) == views
    assert (await verify(settings)).ok


async def test_a_worker_process_failure_is_raised_with_its_own_error(settings: Settings) -> None:
    from resultlog.processors.logreader import Slice
    from resultlog.processors.replayworkers import run_shares

    broken = settings.replace(postgres_dsn="postgresql://nobody@127.0.0.1:9/none")
    shares = [Slice(settings.events_topic, {0: 0}, {0: 1}), Slice(settings.events_topic, {1: 0}, {1: 1})]
    with pytest.raises(StoreUnavailable) as caught:
        await run_shares(broken, "g.replay", shares, processes=2, redis=True, history=True,
                         batch_records=10, on_batch=lambda stats: None)
    assert "127.0.0.1:9" in str(caught.value)


def _cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("RESULTLOG_")},
           **settings.to_env()}
    return subprocess.run([sys.executable, "-m", "resultlog", *args], env=env,
                          capture_output=True, text=True, timeout=300, check=False)


async def test_the_replay_and_verify_commands(settings: Settings) -> None:
    """What docs/replay.md tells a user to run, as a user runs it."""
    n = await workload(settings, n=30)
    await fill_through_processor(settings, n)
    before = await history_snapshot(settings)
    views = await redis_snapshot(settings)

    done = await asyncio.to_thread(_cli, settings, "replay", "--fresh", "--jobs", "2")
    assert done.returncode == 0, done.stderr
    assert f"replayed {n:,} events" in done.stdout and "0 sent to dead letters" in done.stdout
    assert await history_snapshot(settings) == before
    assert await redis_snapshot(settings) == views
    checked = await asyncio.to_thread(_cli, settings, "verify")
    assert checked.returncode == 0, checked.stdout + checked.stderr

    bad = await asyncio.to_thread(_cli, settings, "replay", "--jobs", "0")
    assert bad.returncode == 1
    assert "jobs must be between 1 and 64, not 0" in bad.stderr


async def all_keys(settings: Settings) -> set[bytes]:
    """Every key under the prefix, bookkeeping (offsets, coverage) included."""
    client = Redis.from_url(settings.redis_url)
    try:
        return {key async for key in client.scan_iter(match=f"{settings.redis_prefix}*")}
    finally:
        await client.aclose()


@pytest.mark.parametrize(("args", "message"), [
    (["replay", "--fresh", "--batch", "0"], "batch must be at least 1 (records per write batch), not 0"),
    (["replay", "--fresh", "--from-offsets", "99:0"], "partition 99 is not in topic"),
    (["replay", "--fresh", "--from-offsets", "0:1000000"],
     "offset 1000000 of partition 0 is past the end of topic"),
    (["replay", "--fresh", "--from-offsets", "0:1,0:2"], "--from-offsets '0:1,0:2': partition 0 is given twice"),
    (["replay", "--fresh", "--from-offsets", ""], "--from-offsets '': expected PARTITION:OFFSET"),
    (["replay", "--fresh", "--from-offsets", "0:\u00b2"], "--from-offsets '0:\u00b2': expected PARTITION:OFFSET"),
    (["replay", "--fresh", "--from-timestamp", "0001-01-01"],
     "--from-timestamp '0001-01-01': before the epoch (1970-01-01T00:00:00Z)"),
    (["replay", "--fresh", "--from-timestamp", "99999999999999999999"],
     "--from-timestamp '99999999999999999999': after 9999-12-31T23:59:59.999Z"),
    (["replay", "--fresh", "--from-timestamp", ""], "--from-timestamp '': expected ISO 8601"),
    (["replay", "--fresh", "--from-timestamp", "\u00b2"], "--from-timestamp '\u00b2': expected ISO 8601"),
    (["replay", "--fresh", "--resume"], "--fresh and --resume: choose one"),
    (["verify", "--max-report", "-1"], "--max-report must be 0 or more, not -1"),
    (["verify", "--redis-only", "--history-only"],
     "argument --history-only: not allowed with argument --redis-only"),
    (["verify", "--source", "history", "--history-only"],
     "--source history with --history-only compares nothing"),
])
async def test_bad_options_are_refused_before_anything_is_deleted(
        settings: Settings, args: list[str], message: str) -> None:
    """A replay refuses a bad option before it empties anything (--fresh): a bad batch
    size, partition, offset or time once emptied the stores and only then failed."""
    n = await workload(settings, n=12)
    await replay(settings, jobs=1, progress=False)
    views, history, keys = (await redis_snapshot(settings), await history_snapshot(settings),
                            await all_keys(settings))
    assert len(history) == n and views

    done = await asyncio.to_thread(_cli, settings, *args)
    # 1: refused by resultlog; 2: a usage error, refused by the parser.
    assert done.returncode in (1, 2), done.stdout + done.stderr
    assert await redis_snapshot(settings) == views, done.stderr
    assert await history_snapshot(settings) == history, done.stderr
    assert await all_keys(settings) == keys, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr, done.stderr
    if done.returncode == 1:
        assert done.stderr.startswith("resultlog: error: "), done.stderr


@pytest.mark.parametrize(("options", "message"), [
    ({"batch_records": 0}, "batch must be at least 1 (records per write batch), not 0"),
    ({"from_timestamp_ms": -1}, "from_timestamp_ms -1: before the epoch"),
    ({"from_offsets": {0: -1}}, "offset -1 of partition 0 is negative"),
    ({"from_offsets": {0: 10**6}}, "offset 1000000 of partition 0 is past the end of topic"),
    ({"from_offsets": {-1: 0}}, "partition -1 is not in topic"),
    ({"resume": True}, "--fresh and --resume: choose one"),
])
async def test_replay_refuses_a_bad_start_before_it_empties_the_stores(
        settings: Settings, options: dict[str, Any], message: str) -> None:
    n = await workload(settings, n=12)
    await replay(settings, jobs=1, progress=False)
    views, history = await redis_snapshot(settings), await history_snapshot(settings)
    assert len(history) == n and views
    with pytest.raises(ValidationError, match=re.escape(message)):
        await replay(settings, fresh=True, jobs=1, progress=False, **options)
    assert await redis_snapshot(settings) == views
    assert await history_snapshot(settings) == history
