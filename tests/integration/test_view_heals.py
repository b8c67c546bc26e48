"""The Redis view heals itself: a view that lost what it held is rebuilt from the log by
the processor, with no manual step, and readers are never told PENDING meanwhile.

These tests take the view away by deleting the test's own Redis keys (what a FLUSHDB or
a restart without persistence does to one deployment's prefix), so they can run on the
shared local stack; tests/faults/ kills real Redis servers of private stacks.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
import redis.asyncio

from resultlog import names
from resultlog.errors import BrokerUnavailable, ResultTimeout
from resultlog.processors.verify import verify
from resultlog.producers import Emitter
from resultlog.schemas.event import TaskEvent
from resultlog.schemas.states import State
from resultlog.settings import Settings
from resultlog.views import HistoryStore, RedisView, ResultBackend
from resultlog.processors.logreader import LogReader
from resultlog.processors.rebuild import ViewRebuilder
from resultlog.processors.replay import replay
from resultlog.views.coverage import CHORDS_LOST_FIELD, Claim, RebuildChain, ViewCoverage
from resultlog.views.history import stored
from tests.integration.processes import ProcessorProcess
from tests.integration.test_chords import emit, members
from tests.integration.test_pipeline import eventually

pytestmark = pytest.mark.integration


async def emit_successes(settings: Settings, prefix: str, n: int) -> list[str]:
    ids = [f"{prefix}-{i}" for i in range(n)]
    async with Emitter(settings) as em:
        for i, task_id in enumerate(ids):
            await em.success(task_id, i, task_name="heal.t")
    return ids


async def visible(settings: Settings, ids: list[str]) -> int:
    async with RedisView(settings) as view:
        views = await view.get_many(ids)
    return sum(1 for v in views if v is not None and v.state is State.SUCCESS)


async def drop_view(client: redis.asyncio.Redis, settings: Settings) -> int:
    """Delete every key of the test's view (tasks, positions): the view is gone."""
    keys = [k async for k in client.scan_iter(match=f"{settings.redis_prefix}*", count=1000)]
    return int(await client.unlink(*keys)) if keys else 0


async def view_whole(settings: Settings, client: redis.asyncio.Redis) -> bool:
    return await ViewCoverage(settings, client, settings.consumer_group).whole()


async def rebuilt(settings: Settings, client: redis.asyncio.Redis, ids: list[str],
                  proc: ProcessorProcess, what: str) -> None:
    """Wait until every task of ``ids`` is visible (``what`` names that wait in a failure,
    with the processor's output) and the view is whole again."""
    await eventually(lambda: _all(settings, ids), f"{what}\n{proc.output()[-3000:]}")
    await eventually(lambda: view_whole(settings, client), "the view whole again")


async def assert_verified(settings: Settings) -> None:
    """The view and the history agree with the log."""
    report = await verify(settings)
    assert report.ok, [d.render() for d in report.differences[:5]]


async def test_a_view_flushed_while_the_processor_runs_is_rebuilt(
        settings: Settings, redis_client: redis.asyncio.Redis) -> None:
    ids = await emit_successes(settings, "a", 2000)
    with ProcessorProcess(settings) as proc:
        await eventually(lambda: _all(settings, ids), f"all visible\n{proc.output()[-3000:]}")
        assert await drop_view(redis_client, settings) > 0
        assert await visible(settings, ids) == 0
        # No new event: the processor's check finds the positions gone by itself.
        await rebuilt(settings, redis_client, ids, proc, "all visible again after the flush")
        more = await emit_successes(settings, "b", 500)
        await eventually(lambda: _all(settings, more), "new events fold as before")
        assert "view rebuild done" in proc.output()
    await assert_verified(settings)


async def test_a_view_lost_while_the_processor_was_down_is_rebuilt_at_start(
        settings: Settings, redis_client: redis.asyncio.Redis) -> None:
    ids = await emit_successes(settings, "a", 1000)
    with ProcessorProcess(settings) as proc:
        await eventually(lambda: _all(settings, ids), f"all visible\n{proc.output()[-3000:]}")
    await drop_view(redis_client, settings)
    with ProcessorProcess(settings) as proc:
        await rebuilt(settings, redis_client, ids, proc, "all visible after the restart")
    await assert_verified(settings)


async def test_a_view_that_went_back_to_an_older_copy_is_caught_up(
        settings: Settings, redis_client: redis.asyncio.Redis) -> None:
    """A failover to a lagging replica: positions still there but behind, tasks missing.
    The next live write finds its batch does not follow the view's position."""
    first = await emit_successes(settings, "a", 800)
    with ProcessorProcess(settings) as proc:
        await eventually(lambda: _all(settings, first), f"all visible\n{proc.output()[-3000:]}")
        okey = names.offsets_key(settings.redis_prefix, settings.consumer_group)
        positions = await redis_client.hgetall(okey)
        await drop_view(redis_client, settings)
        # The "older copy": every partition's position back at 0, no task.
        await redis_client.hset(okey, mapping={k: 0 for k in positions})
        later = await emit_successes(settings, "b", 800)
        await rebuilt(settings, redis_client, first + later, proc, "older and newer all visible")
    await assert_verified(settings)


async def test_a_flush_under_load_loses_nothing(
        settings: Settings, redis_client: redis.asyncio.Redis) -> None:
    with ProcessorProcess(settings) as proc:
        async def stream() -> list[str]:
            ids: list[str] = []
            async with Emitter(settings) as em:
                for i in range(6000):
                    ids.append(f"s-{i}")
                    await em.success(ids[-1], i)
                    if i % 500 == 0:
                        await asyncio.sleep(0.05)  # a stream, not one burst
            return ids

        producing = asyncio.create_task(stream())
        await eventually(lambda: _some(settings, "s-", 1000), "the stream folding")
        await drop_view(redis_client, settings)
        ids = await producing
        await rebuilt(settings, redis_client, ids, proc, "every task visible")
    await assert_verified(settings)


async def test_readers_fall_back_to_the_history_while_the_view_is_not_whole(
        settings: Settings, redis_client: redis.asyncio.Redis) -> None:
    """No processor: the history holds a finished task, Redis holds nothing (a lost view
    not yet rebuilt). The reader says SUCCESS, not PENDING, sync and asyncio alike."""
    t = int(time.time() * 1000)
    done = [TaskEvent.create("done", State.STARTED, timestamp=t - 5),
            TaskEvent.create("done", State.SUCCESS, timestamp=t, result=42)]
    async with HistoryStore(settings) as store:
        await store.migrate()
        await store.write_batch(stored(done, settings.events_topic), {},
                                consumer_group=settings.consumer_group)
    assert not await view_whole(settings, redis_client)
    async with ResultBackend(settings) as backend:
        r = backend.AioAsyncResult("done")
        assert await r.get(timeout=5) == 42
        assert r.state == "SUCCESS"
        unknown = backend.AioAsyncResult("unknown")
        assert not await unknown.exists() and unknown.state == "PENDING"
    with ResultBackend(settings) as backend:
        assert backend.AsyncResult("done").state == "SUCCESS"
        assert backend.AsyncResult("done").get(timeout=5) == 42
        assert backend.AsyncResult("unknown").state == "PENDING"


async def test_the_history_fallback_expires_a_task_as_the_view_would(
        settings: Settings, redis_client: redis.asyncio.Redis) -> None:
    """While the view is not whole, a task the history holds is shown until its winner's
    expiry: its own TTL when it carries one (0: never), else the reader's result_ttl_s."""
    t = int(time.time() * 1000) - 10_000  # ten seconds ago
    s = settings.replace(result_ttl_s=5)
    events = [TaskEvent.create("by-setting", State.SUCCESS, timestamp=t, result=1),
              TaskEvent.create("own-short", State.SUCCESS, timestamp=t, result=2, result_ttl=1000),
              TaskEvent.create("own-long", State.SUCCESS, timestamp=t, result=3, result_ttl=60_000),
              TaskEvent.create("own-never", State.SUCCESS, timestamp=t, result=4, result_ttl=0)]
    async with HistoryStore(s) as store:
        await store.migrate()
        await store.write_batch(stored(events, s.events_topic), {}, consumer_group=s.consumer_group)
    assert not await view_whole(s, redis_client)
    with ResultBackend(s) as backend:
        states = {e.task_id: backend.AsyncResult(e.task_id).state for e in events}
    assert states == {"by-setting": "PENDING", "own-short": "PENDING",
                      "own-long": "SUCCESS", "own-never": "SUCCESS"}


class ViewLosingTheRebuildsFirstWrites(RedisView):
    """A view whose Redis goes back, right after a rebuild's first ``apply_rows``, to a
    copy from before it: what a restart from its files or a failover to a lagging replica
    does. The tasks written and the chain's later count are gone, nothing else."""

    lost: list[str] = []

    async def apply_rows(self, task_ids: Sequence[str], rows: Sequence[list[Any]],
                         offsets: Mapping[tuple[str, int], int] | None = None, *,
                         consumer_group: str | None = None,
                         starts: Mapping[tuple[str, int], int] | None = None,
                         chain: RebuildChain | None = None) -> int:
        before = None if chain is None else chain.written
        changed = await super().apply_rows(task_ids, rows, offsets, consumer_group=consumer_group,
                                           starts=starts, chain=chain)
        if chain is not None and not self.lost:
            self.lost = list(dict.fromkeys(task_ids))
            prefix = self.settings.redis_prefix
            await self.client.delete(*(names.task_key(prefix, t) for t in self.lost))
            if before:
                await self.client.set(chain.key, str(before))
            else:
                await self.client.delete(chain.key)
        return changed


async def test_a_rebuild_whose_writes_redis_lost_starts_again_from_its_recorded_progress(
        settings: Settings, redis_client: redis.asyncio.Redis) -> None:
    ids = await emit_successes(settings, "a", 600)
    async with LogReader(settings) as reader:
        plan = await reader.plan()
    coverage = ViewCoverage(settings, redis_client, settings.consumer_group)
    gaps = (await coverage.claim({p: Claim(plan.start[p], plan.end[p]) for p in plan.end})).gaps
    assert sum(end - start for start, end in gaps.values()) == 600
    async with ViewLosingTheRebuildsFirstWrites(settings) as view:
        rebuilder = ViewRebuilder(settings, coverage, view)
        try:
            rebuilder.add(gaps)

            async def finished() -> bool:
                return not rebuilder.rebuilding

            await eventually(finished, "the rebuild to finish")
        finally:
            await rebuilder.close()
        assert view.lost, "the simulated loss took nothing"
    # Without the chain, the progress recorded after the lost writes would close the
    # gaps over them: a view calling itself whole without those tasks.
    assert await visible(settings, ids) == len(ids)
    assert await view_whole(settings, redis_client)


async def _all(settings: Settings, ids: list[str]) -> bool:
    return await visible(settings, ids) == len(ids)


async def _some(settings: Settings, prefix: str, n: int) -> bool:
    async with RedisView(settings) as view:
        return len([t for t in await view.task_ids() if t.startswith(prefix)]) >= n


async def test_a_forgotten_task_stays_forgotten_when_the_view_is_rebuilt(
        settings: Settings, redis_client: redis.asyncio.Redis) -> None:
    """forget() as an event (state FORGOTTEN, a TaskForgotten record): the rebuilt view,
    the history fallback and verify all agree that the task is gone, while its
    neighbour, not forgotten, comes back."""
    ids = await emit_successes(settings, "f", 2)
    kept, forgotten = ids
    async with Emitter(settings) as em:
        await em.emit_state(forgotten, "FORGOTTEN", wait=True)
    with ProcessorProcess(settings) as proc:
        await eventually(lambda: _all(settings, [kept]), f"visible\n{proc.output()[-3000:]}")
        await eventually(lambda: _state_in_view(settings, forgotten, State.FORGOTTEN),
                         "the forget folded")
        async with ResultBackend(settings) as backend:
            assert not await backend.AioAsyncResult(forgotten).exists()
            # While the view is gone, readers fall back to the history: still forgotten.
            await drop_view(redis_client, settings)
            assert not await backend.AioAsyncResult(forgotten).exists()
            await eventually(lambda: view_whole(settings, redis_client), "the view whole again")
            await eventually(lambda: _all(settings, [kept]), "the neighbour rebuilt")
            assert await _state_in_view(settings, forgotten, State.FORGOTTEN)
            assert not await backend.AioAsyncResult(forgotten).exists()
            assert await backend.AioAsyncResult(kept).get(timeout=5) == 0
    await assert_verified(settings)


async def _state_in_view(settings: Settings, task_id: str, state: State) -> bool:
    async with RedisView(settings) as view:
        raw = await view.get(task_id)
    return raw is not None and raw.state is state


async def chords_read_back(settings: Settings, sizes: Mapping[str, int], timeout_s: float) -> None:
    async with ResultBackend(settings) as backend:
        got = await asyncio.gather(*(backend.AioChordResult(c).get(timeout=timeout_s) for c in sizes))
    assert got == [[i * 2 for i in range(n)] for n in sizes.values()]


async def chords_mark(settings: Settings, client: redis.asyncio.Redis) -> bytes | None:
    okey = names.offsets_key(settings.redis_prefix, settings.consumer_group)
    return await client.hget(okey, CHORDS_LOST_FIELD)  # type: ignore[no-any-return]


async def test_chord_views_lost_with_the_view_are_rebuilt_after_a_processor_died_mid_rebuild(
        settings: Settings, redis_client: redis.asyncio.Redis) -> None:
    """Redis restarted empty; the first processor to start claimed the view (its gaps
    recorded) and was killed before it rebuilt anything. The next processor finds the
    offsets hash there, with gaps: it must still rebuild the chord views, which only the
    claim that found the hash gone could know were lost. (Found by a fault audit: every
    completed chord read PENDING for good, ChordResult.get() timing out.)"""
    sizes = {f"c{k}": 3 for k in range(20)}
    await completed_then_view_dropped(settings, redis_client, sizes)
    # What the killed processor left: its claim, exactly as it makes it at assignment
    # (from the log's beginning to the history's position), and nothing rebuilt.
    async with LogReader(settings) as reader:
        plan = await reader.plan()
    async with HistoryStore(settings) as store:
        history = await store.committed_offsets(settings.consumer_group, settings.events_topic)
    coverage = ViewCoverage(settings, redis_client, settings.consumer_group)
    await coverage.claim({p: Claim(plan.start[p], history.get(p, plan.start[p]))
                          for p in range(settings.topic_partitions)})
    assert (await coverage.read()).gaps, "the claim recorded no gap"
    with ProcessorProcess(settings) as proc:
        await eventually(lambda: view_whole(settings, redis_client),
                         f"the view whole again\n{proc.output()[-3000:]}")
        try:
            await chords_read_back(settings, sizes, 30)
        except ResultTimeout as exc:
            raise AssertionError(f"chord views not rebuilt: {exc}\n{proc.output()[-3000:]}") from exc
        after = await emit_successes(settings, "after", 5)
        await eventually(lambda: _all(settings, after), "a task emitted afterwards visible")
        # The mark goes once the chord views are rebuilt: a later claim rebuilds nothing.
        await eventually(lambda: _no_mark(settings, redis_client), "the chords mark removed")
        assert "the views of 20 chord(s) rebuilt" in proc.output()
    await assert_verified(settings)


async def completed_then_view_dropped(settings: Settings, client: redis.asyncio.Redis,
                                      sizes: dict[str, int]) -> None:
    """Chords of ``sizes`` completed by a processor, which stops; then the view is gone."""
    with ProcessorProcess(settings):
        await emit(settings, [e for c, n in sizes.items() for e in members(c, n)], *sizes.items())
        await chords_read_back(settings, sizes, 60)
    await drop_view(client, settings)


async def _no_mark(settings: Settings, client: redis.asyncio.Redis) -> bool:
    return await chords_mark(settings, client) is None


async def test_the_chords_mark_stays_until_a_chord_rebuild_finishes(
        settings: Settings, redis_client: redis.asyncio.Redis,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A chord views' rebuild interrupted (Kafka or Redis unavailable) leaves the mark,
    and goes on by itself once they are back (it stopped, and waited for a claim that
    nothing made while the view's positions were there); two processors rebuilding
    them at once both finish, and the view ends with the chords the log completed."""
    sizes = {f"i{k}": 2 for k in range(5)}
    await completed_then_view_dropped(settings, redis_client, sizes)
    coverage = ViewCoverage(settings, redis_client, settings.consumer_group)
    claimed = await coverage.claim({p: Claim(0, 1) for p in range(settings.topic_partitions)})
    assert claimed.chords_lost is not None
    # Another claim (another processor's) finds the same mark; no new one is set.
    assert (await coverage.claim({0: Claim(0, 1)})).chords_lost == claimed.chords_lost

    from resultlog.chords import fromlog
    real = fromlog.rebuild_chord_views

    attempts: list[int] = []

    async def unavailable(s: Settings) -> int:
        attempts.append(1)
        raise BrokerUnavailable("the chords topic cannot be read (simulated)")

    async with RedisView(settings) as view:
        monkeypatch.setattr(fromlog, "rebuild_chord_views", unavailable)
        first = ViewRebuilder(settings, coverage, view)
        first.add({}, chords_lost=claimed.chords_lost)
        await eventually(lambda: _tried(attempts, 2), "the interrupted rebuild to try again")
        assert first.rebuilding
        assert await chords_mark(settings, redis_client) == claimed.chords_lost.encode()
        monkeypatch.setattr(fromlog, "rebuild_chord_views", real)
        await eventually(lambda: _done(first), "the rebuild to finish by itself")
        assert await chords_mark(settings, redis_client) is None
        await chords_read_back(settings, sizes, 5)
        # The view lost again: a new mark, and two processors rebuilding at once.
        await drop_view(redis_client, settings)
        again = (await coverage.claim({p: Claim(0, 1) for p in range(settings.topic_partitions)})).chords_lost
        assert again is not None and again != claimed.chords_lost
        both = [ViewRebuilder(settings, coverage, view) for _ in range(2)]
        try:
            for r in both:
                r.add({}, chords_lost=again)
            await eventually(lambda: _done(*both), "both chord rebuilds to finish")
        finally:
            for r in (first, *both):
                await r.close()
    assert await chords_mark(settings, redis_client) is None
    await chords_read_back(settings, sizes, 5)


async def _tried(attempts: list[int], n: int) -> bool:
    return len(attempts) >= n


async def _done(*rebuilders: ViewRebuilder) -> bool:
    return not any(r.rebuilding for r in rebuilders)


async def _chord_done(settings: Settings, client: redis.asyncio.Redis, chord_id: str, done: int) -> bool:
    return await client.hget(names.chord_key(settings.redis_prefix, chord_id), "done") == str(done).encode()


async def test_verify_checks_the_chord_views(
        settings: Settings, redis_client: redis.asyncio.Redis) -> None:
    """verify compares every chord's view with a fold of the chords topic: a chord view
    lost, changed or not in the log is a difference, and a replay mends them. (Before,
    it checked tasks only, and said OK over a view whose completed chords all read
    PENDING: a fault audit's find.)"""
    sizes = {f"v{k}": 3 for k in range(3)}
    with ProcessorProcess(settings):
        # One more chord with one member of three in: its view is progress, not an outcome.
        await emit(settings, [e for c, n in sizes.items() for e in members(c, n)]
                   + members("v-partial", 3)[:1], *sizes.items(), ("v-partial", 3))
        await chords_read_back(settings, sizes, 60)
        await eventually(lambda: _chord_done(settings, redis_client, "v-partial", 1),
                         "the unfinished chord's progress in its view")
    report = await verify(settings)
    assert report.ok, [d.render() for d in report.differences]
    assert report.chords == 4

    prefix = settings.redis_prefix
    await redis_client.delete(names.chord_key(prefix, "v0"))
    await redis_client.hset(names.chord_key(prefix, "v1"), "state", "PENDING")
    await redis_client.hset(names.chord_key(prefix, "v-partial"), "done", "2")
    await redis_client.hset(names.chord_key(prefix, "stray"), mapping={"state": "PENDING", "size": "2"})
    report = await verify(settings)
    assert sorted((d.what, d.task_id) for d in report.differences) == [
        ("chord", "stray"), ("chord", "v-partial"), ("chord", "v0"), ("chord", "v1")]
    assert (await verify(settings, redis=False)).ok  # the history holds no chords

    await replay(settings, fresh=True, force=True, history=False, progress=False)
    report = await verify(settings)
    assert report.ok, [d.render() for d in report.differences]
    await chords_read_back(settings, sizes, 5)
