"""The Redis view (fold.lua through RedisView) against a real Redis: it IS schemas.fold."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
import redis.asyncio
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from resultlog import names
from resultlog.errors import InvalidTaskId, ViewLost
from resultlog.schemas.event import ExceptionInfo, TaskEvent, now_ms
from resultlog.schemas.fold import fold
from resultlog.schemas.states import LATEST_DATETIME_MS, RECORD_STATES, State
from resultlog.settings import Settings
from resultlog.schemas.taskrows import view_row
from resultlog.views.coverage import Claim, ViewCoverage
from resultlog.views.redis_view import SCRIPT, RedisView, script_call_rows, view_from_push
from tests.unit.strategies import task_events

pytestmark = pytest.mark.integration

DAY_MS = 86_400_000
_examples = itertools.count()


@pytest.fixture
async def view(settings: Settings) -> AsyncIterator[RedisView]:
    async with RedisView(settings.replace(result_ttl_s=0)) as v:
        yield v


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[redis.asyncio.Redis]:
    c = redis.asyncio.Redis.from_url(settings.redis_url, decode_responses=True)
    yield c
    await c.aclose()


def ev(task_id: str, state: State | str, ts: int, **fields: Any) -> TaskEvent:
    return TaskEvent.create(task_id, state, timestamp=ts, **fields)


def key(settings: Settings, task_id: str) -> str:
    return names.task_key(settings.redis_prefix, task_id)


# -- the view equals the fold -----------------------------------------------------------


@hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    events=st.lists(task_events(), min_size=1, max_size=30),
    data=st.data(),
)
async def test_any_order_duplication_and_batching_folds_to_the_spec(
    settings: Settings, events: list[TaskEvent], data: st.DataObject
) -> None:
    # One key space per example (the fixture's prefix is per test; its cleanup covers these).
    s = settings.replace(redis_prefix=f"{settings.redis_prefix}{next(_examples)}:", result_ttl_s=0)
    rnd = data.draw(st.randoms(use_true_random=False))
    delivered = events + data.draw(st.lists(st.sampled_from(events), max_size=15))
    rnd.shuffle(delivered)
    cuts = sorted(data.draw(st.sets(st.integers(1, len(delivered)), max_size=6)))
    batches = [delivered[a:b] for a, b in zip([0, *cuts], [*cuts, len(delivered)]) if a < b]

    # Any number of tasks per fold call: a batch of more is folded in parts.
    async with RedisView(s, part_tasks=data.draw(st.integers(1, 4))) as v:
        for batch in batches:
            await v.apply(batch)
        expected = fold(events)
        assert await v.task_ids() == sorted(expected)
        for task_id, want in expected.items():
            got = await v.get(task_id)
            # The whole view, bookkeeping included: tokens of the winner and of each sticky field.
            assert got == want
        # A full redelivery changes nothing.
        assert await v.apply(delivered) == 0


async def test_several_events_of_one_task_in_one_batch(view: RedisView) -> None:
    t = 1_700_000_000_000
    received = ev("t", State.RECEIVED, t, task_name="add", args=[1, 2], worker="w1")
    started = ev("t", State.STARTED, t + 1, worker="w2")
    success = ev("t", State.SUCCESS, t + 2, result=3, worker="w2", runtime=0.25)
    late_retry = ev("t", State.RETRY, t + 9)  # same attempt, lower rank: loses
    assert await view.apply([success, late_retry, received, started]) == 1
    got = await view.get("t")
    assert got == fold([received, started, success, late_retry])["t"]
    assert got is not None
    assert (got.state, got.result, got.task_name, got.args, got.worker, got.runtime) == (
        State.SUCCESS, "3", "add", "[1,2]", "w2", 0.25)
    assert await view.apply([received, started]) == 0


async def test_a_live_batch_of_many_tasks_is_written_in_parts_and_its_position_recorded_once_whole(
    settings: Settings, client: redis.asyncio.Redis
) -> None:
    s = settings.replace(result_ttl_s=0)
    topic, t = s.events_topic, 1_700_000_000_000
    events = [ev(f"t{i % 7}", state, t + i, attempt=i // 14, result=i)
              for i, state in enumerate([State.STARTED, State.SUCCESS] * 14)]
    ids, rows = [e.task_id for e in events], [view_row(e, 0) for e in events]
    in_parts = RedisView(s, part_tasks=2)
    in_one = RedisView(s.replace(redis_prefix=f"{s.redis_prefix}one:"))
    try:
        for v in (in_parts, in_one):
            await v.apply([], {(topic, 0): 10}, consumer_group="g")
            assert await v.apply_rows(ids, rows, {(topic, 0): 38}, consumer_group="g",
                                      starts={(topic, 0): 10}) == 7
        expected = fold(events)
        for task_id in expected:
            assert await in_parts.get(task_id) == await in_one.get(task_id) == expected[task_id]
        assert await in_parts.committed_offsets("g", topic) == {0: 38}
        assert [k async for k in client.scan_iter(match=f"{s.redis_prefix}viewbatch:*")] == []
    finally:
        await in_parts.close()
        await in_one.close()


async def test_a_part_of_a_batch_writes_only_after_the_parts_before_it(
    settings: Settings, client: redis.asyncio.Redis
) -> None:
    s = settings.replace(result_ttl_s=0)
    topic, t = s.events_topic, 1_700_000_000_000
    offsets, starts = {(topic, 0): 30}, {(topic, 0): 10}
    marker = names.view_batch_marker_key(s.redis_prefix, "g", "batch")

    async def part(task_id: str, number: int, last: bool) -> Any:
        row = view_row(ev(task_id, State.SUCCESS, t, result=number), 0)
        keys, args = script_call_rows(s, [task_id], [row], offsets, "g", starts, (marker, number, last))
        return await client.eval(SCRIPT, len(keys), *keys, *args)

    async with RedisView(s) as view:
        await view.apply([], {(topic, 0): 10}, consumer_group="g")
        # The second part, with the first not in the view (lost, or never written).
        assert await part("second", 1, True) == -1
        assert await view.get("second") is None
        assert await view.committed_offsets("g", topic) == {0: 10}
        # The first part: written, counted in the marker, no position yet.
        assert await part("first", 0, False) == 1
        assert await client.get(marker) == "1"
        assert await view.committed_offsets("g", topic) == {0: 10}
        # The last part: written, the position recorded, the marker gone.
        assert await part("second", 1, True) == 1
        assert (await view.get("second")) is not None
        assert await view.committed_offsets("g", topic) == {0: 30}
        assert await client.exists(marker) == 0


async def test_the_chords_mark_is_set_with_the_claim_that_found_no_record(
    settings: Settings, client: redis.asyncio.Redis
) -> None:
    """Set by the claim that found the offsets hash gone and recorded a gap, in the same
    call; found again by later claims; removed only with the token it was set with."""
    coverage = ViewCoverage(settings, client, "g", settings.events_topic)
    assert (await coverage.claim({0: Claim(begin=5, resume=5)})).chords_lost is None
    await client.delete(coverage.key)
    first = await coverage.claim({0: Claim(begin=0, resume=30)})
    assert first.gaps == {0: (0, 30)} and first.chords_lost is not None
    later = await coverage.claim({0: Claim(begin=0, resume=40), 1: Claim(begin=0, resume=9)})
    assert later.chords_lost == first.chords_lost and later.gaps == {0: (0, 30), 1: (0, 9)}
    assert not await coverage.chords_rebuilt("another token")
    assert await coverage.chords_rebuilt(first.chords_lost)
    assert (await coverage.claim({1: Claim(begin=0, resume=9)})).chords_lost is None
    assert (await coverage.read()).gaps == {0: (0, 30), 1: (0, 9)}


async def test_a_rebuild_whose_write_the_view_lost_records_no_progress_past_it(
    settings: Settings, client: redis.asyncio.Redis
) -> None:
    """A Redis that restarts from its files or fails over loses its latest writes; a
    rebuild going on afterwards must neither write on top of the hole nor record progress
    past it (the gap would be closed over events the view never got)."""
    s = settings.replace(result_ttl_s=0)
    topic, t = s.events_topic, 1_700_000_000_000
    coverage = ViewCoverage(s, client, "g", topic)
    gaps = (await coverage.claim({0: Claim(begin=0, resume=30)})).gaps
    assert gaps == {0: (0, 30)}

    def rows(*task_ids: str) -> tuple[list[str], list[list[Any]]]:
        return list(task_ids), [view_row(ev(i, State.SUCCESS, t, result=i), 0) for i in task_ids]

    async with RedisView(s, client, part_tasks=2) as view:
        chain = coverage.chain()
        # Two calls (three tasks, two per call), each counted.
        assert await view.apply_rows(*rows("a", "b", "c"), chain=chain) == 3
        assert chain.written == 2
        assert await coverage.advance(0, 30, 10, chain) == 1
        assert (await coverage.read()).gaps == {0: (10, 30)}
        # The next call lands, then Redis goes back to a copy from before it: the task
        # and the marker's later count are gone, the progress recorded before it is not.
        assert await view.apply_rows(*rows("d"), chain=chain) == 1
        await client.delete(names.task_key(s.redis_prefix, "d"))
        await client.set(chain.key, "2")
        with pytest.raises(ViewLost):
            await coverage.advance(0, 30, 20, chain)
        with pytest.raises(ViewLost):
            await view.apply_rows(*rows("e"), chain=chain)
        assert await view.get("e") is None
        assert (await coverage.read()).gaps == {0: (10, 30)}
        # A new chain (the rebuild starting again from the recorded progress) goes on.
        again = coverage.chain()
        assert await view.apply_rows(*rows("d", "e"), chain=again) == 2
        assert await coverage.advance(0, 30, 30, again) == 1
        assert (await coverage.read()).gaps == {}
        await coverage.end(again)
        assert await client.exists(again.key) == 0


async def test_apply_counts_tasks_whose_view_changed(view: RedisView) -> None:
    t = 1_700_000_000_000
    a, b = ev("a", State.RECEIVED, t), ev("b", State.RECEIVED, t)
    assert await view.apply([]) == 0
    assert await view.apply([a, b, a]) == 2
    assert await view.apply([a, b]) == 0
    # Only a sticky field arrives (an older event carrying args): still a change.
    older = ev("a", State.RECEIVED, t - 1, args=[7])
    assert await view.apply([older]) == 1
    got = await view.get("a")
    assert got is not None and got.event_id == a.event_id and got.args == "[7]"


async def test_a_winner_without_a_field_clears_it(view: RedisView) -> None:
    t = 1_700_000_000_000
    retry = ev("t", State.RETRY, t, worker="w", exc=ExceptionInfo("E", "m", "boom"), traceback="tb")
    again = ev("t", State.RECEIVED, t + 1, attempt=1)
    await view.apply([retry])
    await view.apply([again])
    got = await view.get("t")
    assert got is not None
    assert (got.state, got.attempt, got.worker, got.exception, got.traceback) == (
        State.RECEIVED, 1, None, None, None)


async def test_values_round_trip_exactly(view: RedisView) -> None:
    e = ev("t-ü/1", State.FAILURE, 1_700_000_000_000, worker="", runtime=0.1 + 0.2,
           exc=ExceptionInfo("Err", "pkg.mod", "naïve \x00 ☃ \n"), traceback="",
           eta=LATEST_DATETIME_MS, meta={"k": "v"})
    await view.apply([e])
    assert await view.get("t-ü/1") == fold([e])["t-ü/1"]


async def test_reads_and_forget(view: RedisView, settings: Settings) -> None:
    t = now_ms()
    await view.apply([ev("a", State.SUCCESS, t, result=1), ev("b", State.STARTED, t)])
    many = await view.get_many(["b", "nope", "a"])
    assert [None if v is None else v.state for v in many] == [State.STARTED, None, State.SUCCESS]
    assert await view.get("nope") is None
    assert await view.forget("a") is True
    assert await view.forget("a") is False
    assert await view.get("a") is None
    assert await view.task_ids() == ["b"]
    for bad in ("", " ", "x" * 256, 5):
        with pytest.raises(InvalidTaskId):
            await view.get(bad)  # type: ignore[arg-type]


async def test_script_is_reloaded_after_script_flush(view: RedisView, client: redis.asyncio.Redis) -> None:
    await client.script_flush()
    assert await view.apply([ev("t", State.RECEIVED, now_ms())]) == 1


# -- expiry follows the log -------------------------------------------------------------


async def test_expiry_is_the_winner_timestamp_plus_ttl(settings: Settings, client: redis.asyncio.Redis) -> None:
    s = settings.replace(result_ttl_s=3600)
    now = now_ms()
    async with RedisView(s) as v:
        await v.apply([ev("t", State.STARTED, now - 1000)])
        assert await client.pexpiretime(key(s, "t")) == now - 1000 + 3_600_000
        # A new winner moves the expiry, even to an earlier timestamp (attempt ranks first).
        await v.apply([ev("t", State.RECEIVED, now - 5000, attempt=1)])
        assert await client.pexpiretime(key(s, "t")) == now - 5000 + 3_600_000
        # A losing event (even a newer one, or one adding a sticky field) leaves it alone.
        await v.apply([ev("t", State.SUCCESS, now, attempt=0, task_name="x")])
        assert await client.pexpiretime(key(s, "t")) == now - 5000 + 3_600_000


async def test_ttl_zero_never_expires(settings: Settings, client: redis.asyncio.Redis) -> None:
    now = now_ms()
    async with RedisView(settings.replace(result_ttl_s=60)) as v:
        await v.apply([ev("t", State.STARTED, now)])
    assert await client.pttl(key(settings, "t")) > 0
    async with RedisView(settings.replace(result_ttl_s=0)) as v:
        await v.apply([ev("old", State.SUCCESS, 1_000_000_000_000, result=1)])
        assert await client.pttl(key(settings, "old")) == -1
        # A new winner under ttl 0 removes an expiry set before.
        await v.apply([ev("t", State.SUCCESS, now, result=1)])
    assert await client.pttl(key(settings, "t")) == -1


async def test_an_events_own_ttl_wins_and_expiry_follows_the_winner(
        settings: Settings, client: redis.asyncio.Redis) -> None:
    """TaskEvent v3's result_ttl_ms: the winner's own TTL, else the view's; 0 never."""
    s = settings.replace(result_ttl_s=3600)
    now = now_ms()
    async with RedisView(s) as v:
        await v.apply([replace(ev("t", State.STARTED, now - 3), result_ttl_ms=60_000)])
        assert await client.pexpiretime(key(s, "t")) == now - 3 + 60_000
        # A winner with no TTL of its own takes the view's.
        await v.apply([ev("t", State.RETRY, now - 2)])
        assert await client.pexpiretime(key(s, "t")) == now - 2 + 3_600_000
        # 0: for ever, though the view's TTL is not.
        await v.apply([replace(ev("t", State.SUCCESS, now - 1, result=1), result_ttl_ms=0)])
        assert await client.pexpiretime(key(s, "t")) == -1
        # A losing event's TTL changes nothing.
        await v.apply([replace(ev("t", State.STARTED, now), result_ttl_ms=5)])
        assert await client.pexpiretime(key(s, "t")) == -1
    async with RedisView(s.replace(result_ttl_s=0)) as v:
        # A view that never expires still expires an event that says so.
        await v.apply([replace(ev("u", State.SUCCESS, now, result=1), result_ttl_ms=90_000)])
        assert await client.pexpiretime(key(s, "u")) == now + 90_000


async def test_an_event_older_than_the_ttl_is_not_kept(settings: Settings, client: redis.asyncio.Redis) -> None:
    s = settings.replace(result_ttl_s=60)
    now = now_ms()
    async with RedisView(s) as v, client.pubsub() as pubsub:
        await pubsub.subscribe(names.task_done_channel(s.redis_prefix, "old"))
        assert await v.apply([ev("old", State.SUCCESS, now - 61_000, result=1)]) == 0
        assert await v.get("old") is None
        assert await client.exists(key(s, "old")) == 0
        # A live task whose new winner is already expired goes away: that is a change.
        await v.apply([ev("t", State.STARTED, now)])
        assert await v.apply([ev("t", State.RECEIVED, now - 61_000, attempt=1)]) == 1
        assert await v.get("t") is None
        # Nothing was published for the task that was never kept.
        msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
        assert msg is None


# -- push on ready ----------------------------------------------------------------------


async def test_publishes_each_change_of_a_tasks_winner(view: RedisView, client: redis.asyncio.Redis, settings: Settings) -> None:
    channel = names.task_done_channel(settings.redis_prefix, "t")
    t = now_ms()

    async with client.pubsub() as pubsub:
        await pubsub.subscribe(channel)
        assert (await pubsub.get_message(timeout=1))["type"] == "subscribe"

        async def next_message() -> Any:
            msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.3)
            if msg is None:
                return None
            pushed = view_from_push("t", msg["data"])  # the message carries the view
            assert pushed == await view.get("t")
            assert pushed is not None
            return msg["channel"], pushed.state.value

        # Not only ready states: Celery's get(on_message=...) hears the others.
        await view.apply([ev("t", State.RECEIVED, t), ev("t", State.STARTED, t + 1)])
        assert await next_message() == (channel, "STARTED")  # one message a batch
        assert await next_message() is None
        await view.apply([ev("t", State.RECEIVED, t + 9)])  # a loser is not news
        assert await next_message() is None
        success = ev("t", State.SUCCESS, t + 2, result=1)
        await view.apply([success, ev("other", State.STARTED, t)])
        assert await next_message() == (channel, "SUCCESS")
        assert await next_message() is None
        await view.apply([success])  # a duplicate is not news
        assert await next_message() is None
        await view.apply([ev("t", State.REVOKED, t + 3)])  # a new ready winner is
        assert await next_message() == (channel, "REVOKED")
        # Several events in one batch: one message, with the final state.
        await view.apply([ev("t", State.REVOKED, t + 4, attempt=1), ev("t", State.SUCCESS, t + 5, attempt=1)])
        assert await next_message() == (channel, "REVOKED")
        assert await next_message() is None


async def test_concurrent_batches_never_regress(settings: Settings) -> None:
    s = settings.replace(result_ttl_s=0)
    rnd = random.Random(7)
    t = 1_700_000_000_000
    events = [ev(f"t{i % 5}", rnd.choice(RECORD_STATES), t + rnd.randrange(5), attempt=rnd.randrange(3),
                 result=1, worker=f"w{i}") for i in range(200)]
    async with RedisView(s) as a, RedisView(s) as b:
        chunks = [events[i:i + 7] for i in range(0, len(events), 7)]
        await asyncio.gather(*(v.apply(c) for v, c in zip(itertools.cycle([a, b]), chunks)))
        for task_id, want in fold(events).items():
            assert await a.get(task_id) == want


async def test_a_large_result_is_announced_not_pushed(view: RedisView, client: redis.asyncio.Redis, settings: Settings) -> None:
    async with client.pubsub() as pubsub:
        await pubsub.subscribe(names.task_done_channel(settings.redis_prefix, "big"))
        await pubsub.get_message(timeout=1)
        await view.apply([ev("big", State.SUCCESS, now_ms(), result="x" * 70_000)])
        msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
        assert msg is not None and msg["data"] == "SUCCESS"
        assert view_from_push("big", msg["data"]) is None
