"""Chords end to end: emitter -> events topic -> fold -> chords topic -> aggregator
(the real ``resultlog process`` child) -> Redis chord view, completions topic, hook."""

from __future__ import annotations

import asyncio
import os
import random
import re
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis
import redis.asyncio
from aiokafka import AIOKafkaConsumer, TopicPartition  # type: ignore[import-untyped]
from aiokafka.admin import AIOKafkaAdminClient  # type: ignore[import-untyped]
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType  # type: ignore[import-untyped]

from resultlog.errors import ChordError, CorruptResult, ResultNotSerializable
from resultlog.processors.deadletter import REASON_HEADER
from resultlog.producers import Emitter, declare_chord
from resultlog.producers.topics import ensure_topics, max_message_bytes
from resultlog.chords.records import ChordCompleted, ChordDeclared, completion_event_id
from resultlog.schemas.codec import Codec
from resultlog.schemas.event import ExceptionInfo, TaskEvent
from resultlog.schemas.states import State
from resultlog.settings import Settings
from resultlog.views import ResultBackend
from tests.integration.processes import ProcessorProcess
from tests.integration.test_pipeline import eventually, first_dead_letter, produce_raw

pytestmark = pytest.mark.integration

HOOK = "tests.integration.test_chords:count_hook"


def count_hook(completion: ChordCompleted) -> None:
    """The hook the child processor runs (RESULTLOG_CHORD_HOOK): counts runs in Redis."""
    s = Settings.from_env()
    client = redis.Redis.from_url(s.redis_url)
    try:
        client.incr(hook_key(s, completion.chord_id))
    finally:
        client.close()


def hook_key(settings: Settings, chord_id: str) -> str:
    return f"{settings.redis_prefix}test-hook:{chord_id}"


async def hook_runs(settings: Settings, chord_id: str) -> int:
    client = redis.asyncio.Redis.from_url(settings.redis_url)
    try:
        return int(await client.get(hook_key(settings, chord_id)) or 0)
    finally:
        await client.aclose()


async def read_completions(settings: Settings) -> list[ChordCompleted]:
    """Everything in the completions topic (read once the processor has stopped)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers,
                                enable_auto_commit=False)
    tps = [TopicPartition(settings.chord_completions_topic, p) for p in range(settings.topic_partitions)]
    await consumer.start()
    try:
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        codec = Codec()
        out: list[ChordCompleted] = []
        while [tp for tp in tps if await consumer.position(tp) < end[tp]]:
            for messages in (await consumer.getmany(timeout_ms=1000)).values():
                out += [ChordCompleted.decode(codec, m.value) for m in messages]
        return out
    finally:
        await consumer.stop()


def members(chord_id: str, size: int, *, failing: dict[int, Exception] | None = None) -> list[TaskEvent]:
    """Each member's SUCCESS (result index * 2) or FAILURE, as a worker would emit it."""
    out = []
    for i in range(size):
        task_id = f"{chord_id}-{i}"
        exc = (failing or {}).get(i)
        out.append(TaskEvent.create(
            task_id, State.SUCCESS if exc is None else State.FAILURE, result=i * 2,
            exc=None if exc is None else ExceptionInfo.from_exception(exc),
            chord_id=chord_id, chord_size=size, chord_index=i))
    return out


async def emit(settings: Settings, events: list[TaskEvent], *declarations: tuple[str, int]) -> None:
    async with Emitter(settings) as emitter:
        for chord_id, size in declarations:
            await declare_chord(emitter, chord_id, size, callback="tasks.sum")
        for event in events:
            await emitter.emit(event)
        await emitter.flush()


@pytest.fixture
def hooked(settings: Settings) -> Settings:
    return settings.replace(chord_hook=HOOK)


async def test_chords_of_1_10_and_10000_members_complete_once_with_results_in_order(hooked: Settings) -> None:
    sizes = {"one": 1, "ten": 10, "big": 10_000}
    events = [e for chord_id, n in sizes.items() for e in members(chord_id, n)]
    random.Random(5).shuffle(events)
    with ProcessorProcess(hooked) as proc:
        await emit(hooked, events, *sizes.items())
        async with ResultBackend(hooked) as backend:
            for chord_id, n in sizes.items():
                result = backend.AioChordResult(chord_id)
                assert await result.get(timeout=180) == [i * 2 for i in range(n)], proc.output()[-3000:]
                assert result.state == "SUCCESS" and await result.completed_count() == n
            for chord_id in sizes:
                await eventually(lambda: _runs_at_least(hooked, chord_id), f"hook ran for {chord_id}")
        proc.stop()
        assert "Traceback" not in proc.output(), proc.output()[-3000:]
    completions = await read_completions(hooked)
    assert Counter(c.chord_id for c in completions) == {chord_id: 1 for chord_id in sizes}
    for c in completions:
        assert c.event_id == completion_event_id(c.chord_id) and c.callback == "tasks.sum"
        assert c.result_values() == [i * 2 for i in range(sizes[c.chord_id])]
    assert [await hook_runs(hooked, chord_id) for chord_id in sizes] == [1, 1, 1]


async def _runs_at_least(settings: Settings, chord_id: str, n: int = 1) -> bool:
    return await hook_runs(settings, chord_id) >= n


async def test_a_hundred_interleaved_chords_complete_independently(settings: Settings) -> None:
    rnd = random.Random(7)
    sizes = {f"c{k}": rnd.randint(1, 12) for k in range(100)}
    events = [e for chord_id, n in sizes.items() for e in members(chord_id, n)]
    rnd.shuffle(events)
    with ProcessorProcess(settings) as proc:
        await emit(settings, events, *sizes.items())
        async with ResultBackend(settings) as backend:
            got = await asyncio.gather(*(backend.AioChordResult(c).get(timeout=120) for c in sizes))
        assert got == [[i * 2 for i in range(n)] for n in sizes.values()], proc.output()[-3000:]
        proc.stop()
    assert Counter(c.chord_id for c in await read_completions(settings)) == {c: 1 for c in sizes}


async def test_a_failing_member_fails_its_chord_at_once_naming_it(settings: Settings) -> None:
    """Members 0-4 succeed, 5 fails, 6-9 never finish: no hang waiting for them."""
    events = members("ch", 10, failing={5: KeyError("no such row")})[:6]
    with ProcessorProcess(settings) as proc:
        await emit(settings, events, ("ch", 10))
        async with ResultBackend(settings) as backend:
            result = backend.AioChordResult("ch")
            with pytest.raises(ChordError, match=r"member 5 \(task ch-5\) raised KeyError: 'no such row'") as info:
                await result.get(timeout=60)
            assert isinstance(info.value.__cause__, KeyError), proc.output()[-3000:]
            assert result.state == "FAILURE" and result.view.failed_member is not None
            assert result.view.failed_member.task_id == "ch-5"
            error = await result.get(propagate=False)
            assert isinstance(error, ChordError)
        # The sync flavour sees the same.
        with ResultBackend(settings) as sync_backend:
            with pytest.raises(ChordError, match="member 5"):
                sync_backend.ChordResult("ch").get(timeout=30)
        proc.stop()
    [completion] = await read_completions(settings)
    assert completion.state is State.FAILURE and completion.failed_member is not None
    assert completion.failed_member.exception == ExceptionInfo("KeyError", "builtins", "'no such row'")


async def test_with_wait_all_the_chord_fails_only_after_every_member(settings: Settings) -> None:
    events = members("wa", 4, failing={1: ValueError("bad")})
    with ProcessorProcess(settings) as proc:
        async with Emitter(settings) as emitter:
            await declare_chord(emitter, "wa", 4, wait_all=True)
            for event in events[:3]:
                await emitter.emit(event)
            await emitter.flush()
        async with ResultBackend(settings) as backend:
            result = backend.AioChordResult("wa")
            await eventually(lambda: _done(result, 3), "three members counted")
            assert result.state == "STARTED" and not await result.ready()
            await emit(settings, events[3:])
            with pytest.raises(ChordError, match=r"member 1 \(task wa-1\) raised ValueError: bad"):
                await result.get(timeout=60)
            assert (result.view.done, result.view.failed) == (4, 1), proc.output()[-3000:]


async def _done(result: object, n: int) -> bool:
    from resultlog.views import AioChordResult

    assert isinstance(result, AioChordResult)
    await result.refresh()
    return result.view.done >= n


async def test_duplicated_and_shuffled_members_do_not_change_the_outcome(settings: Settings) -> None:
    codec = Codec()
    sizes = {"d1": 5, "d2": 30}
    events = [e for chord_id, n in sizes.items() for e in members(chord_id, n)]
    records: list[tuple[bytes | None, bytes]] = [(e.task_id.encode(), codec.encode(e)) for e in events]
    records += [(c.encode(), ChordDeclared.create(c, n).encode(codec)) for c, n in sizes.items()]
    rnd = random.Random(11)
    records += rnd.choices(records, k=len(records))  # declarations may come twice too
    rnd.shuffle(records)
    with ProcessorProcess(settings) as proc:
        await produce_raw(settings, records)
        async with ResultBackend(settings) as backend:
            for chord_id, n in sizes.items():
                assert await backend.AioChordResult(chord_id).get(timeout=120) == [i * 2 for i in range(n)], \
                    proc.output()[-3000:]
        proc.stop()
    assert Counter(c.chord_id for c in await read_completions(settings)) == {"d1": 1, "d2": 1}


async def test_members_before_the_declaration_count(settings: Settings) -> None:
    with ProcessorProcess(settings) as proc:
        await emit(settings, members("late", 3))
        async with ResultBackend(settings) as backend:
            result = backend.AioChordResult("late")
            await eventually(lambda: _done(result, 3), "members counted before the declaration")
            assert result.state == "STARTED" and result.size == 3
            await emit(settings, [], ("late", 3))
            assert await result.get(timeout=60) == [0, 2, 4], proc.output()[-3000:]


async def test_a_processor_killed_mid_chord_completes_it_once_after_restart(hooked: Settings) -> None:
    """SIGKILL while a 10,000-member chord is half folded; the restart finishes it."""
    size = 10_000
    events = members("big", size)
    random.Random(3).shuffle(events)
    first, second = events[: size // 2], events[size // 2:]
    proc = ProcessorProcess(hooked).start()
    try:
        await emit(hooked, first, ("big", size))
        async with ResultBackend(hooked) as backend:
            result = backend.AioChordResult("big")
            await eventually(lambda: _done(result, size // 8), "part of the chord folded")
            proc.kill()
            killed_at = result.view.done
            await emit(hooked, second)
            # Duplicates of members folded before the kill, as a re-read would bring.
            await emit(hooked, first[:500])
            proc.start()
            assert await result.get(timeout=240) == [i * 2 for i in range(size)], proc.output()[-5000:]
            assert killed_at < size
            await eventually(lambda: _runs_at_least(hooked, "big"), "the hook ran")
        proc.stop()
    finally:
        proc.stop()
        proc.log.unlink(missing_ok=True)
    completions = await read_completions(hooked)
    assert [c.chord_id for c in completions] == ["big"]
    assert await hook_runs(hooked, "big") == 1


async def _lose_redis(settings: Settings) -> None:
    """Redis restarted empty: every key under the prefix goes (but the test's hook counts)."""
    client = redis.asyncio.Redis.from_url(settings.redis_url)
    try:
        keep = hook_key(settings, "")
        keys = [k async for k in client.scan_iter(match=f"{settings.redis_prefix}*")
                if not k.decode().startswith(keep)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


async def _rewind_hooks_agent(settings: Settings) -> None:
    """The hooks' agent's committed offsets on the completions topic back to 0, as if it
    had died before committing any: its next start reads every completion again."""
    from resultlog import names

    tps = [TopicPartition(settings.chord_completions_topic, p) for p in range(settings.topic_partitions)]
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers,
                                group_id=names.faust_group(settings.consumer_group),
                                enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(tps)
        before = {tp: await consumer.committed(tp) for tp in tps}
        assert sum(o or 0 for o in before.values()) > 0, before  # the agent had committed
        await consumer.commit({tp: 0 for tp in tps})
    finally:
        await consumer.stop()


async def test_hooks_do_not_run_again_when_completions_come_again_after_redis_lost_everything(
        hooked: Settings) -> None:
    """At most once (docs/chords.md, "Once"), whatever Redis keeps: chords complete and
    their hooks run; the processor stops; `replay --fresh` rebuilds the stores; Redis
    loses every key; the hooks' agent reads every completion again (its offsets rewound,
    as after a crash before its periodic commit, or the aggregator publishing again).
    Each hook still ran once. (With the claims in Redis, every one ran twice.)"""
    from resultlog.processors.replay import replay

    chord_ids = [f"again-{i}" for i in range(6)]
    events = [e for chord_id in chord_ids for e in members(chord_id, 2)]
    with ProcessorProcess(hooked) as proc:
        await emit(hooked, events, *((chord_id, 2) for chord_id in chord_ids))
        for chord_id in chord_ids:
            await eventually(lambda: _runs_at_least(hooked, chord_id),
                             f"hook ran for {chord_id}\n{proc.output()[-3000:]}")
        proc.stop()
        await replay(hooked, fresh=True, progress=False)
        await _lose_redis(hooked)
        await _rewind_hooks_agent(hooked)
        proc.start()

        async def all_seen_again() -> bool:
            out = proc.output()
            for chord_id in chord_ids:
                if (f"chord {chord_id}: hooks already ran" not in out
                        and await hook_runs(hooked, chord_id) < 2):
                    return False
            return True
        await eventually(all_seen_again, f"every completion read again\n{proc.output()[-3000:]}")
        proc.stop()
        assert "Traceback" not in proc.output(), proc.output()[-3000:]
    assert {chord_id: await hook_runs(hooked, chord_id) for chord_id in chord_ids} == {
        chord_id: 1 for chord_id in chord_ids}


async def test_a_completion_the_hooks_were_waiting_to_claim_when_stopped_is_put_back(
        hooked: Settings) -> None:
    """The hooks' agent stopped (cancelled) while it waits to claim a completion
    (PostgreSQL down or slow: here the claim's row held by an open transaction): faust
    acks the record an agent is cancelled on and commits it at the stop, so the next
    processor never read it and the chord's hooks never ran (docs/chords.md, a fault
    audit). The agent now puts the completion back on the completions topic, the same
    record, before it stops: the next processor claims it and runs the hooks."""
    import time

    from resultlog import names
    from resultlog.chords.hookclaims import HookClaims
    from resultlog.processors.app import Processor
    from tests.conftest import pg_connection

    await ensure_topics(hooked, hooked.chord_completions_topic)
    completion = ChordCompleted(
        event_id=completion_event_id("held"), chord_id="held", state=State.SUCCESS, size=1,
        done=1, failed=0, timestamp=int(time.time() * 1000), results="[2]")
    record = completion.encode(Codec())
    claims = HookClaims(hooked)
    await claims.start()  # the claims table, as the agent's start makes it
    await claims.close()

    async def completions_topic() -> AsyncIterator[bytes]:
        yield record
        await asyncio.Event().wait()  # nothing more comes

    table = f'"{hooked.postgres_schema}".{names.CHORD_HOOK_CLAIMS_TABLE}'
    async with pg_connection(hooked.postgres_dsn) as conn, \
            pg_connection(hooked.postgres_dsn) as watcher:

        async def claim_waits() -> bool:
            # Waiting for a transaction: ours, the only one open on the table. (Asked
            # outside it: a transaction sees pg_stat_activity as at its first look.)
            return bool(await watcher.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'transactionid' "
                "AND application_name = 'resultlog-chord-hooks' AND datname = current_database()"))

        holder = conn.transaction()
        await holder.start()
        try:  # the claim's INSERT waits for this transaction, which never commits
            await conn.execute(
                f"INSERT INTO {table} (event_id, chord_id, claimed_by, expires_at) "
                "VALUES ($1, 'held', 'the test', now() + interval '1 hour')", completion.event_id)
            agent = asyncio.create_task(Processor(hooked).chords.run_hooks(completions_topic()))
            await eventually(claim_waits, "the hooks' agent waiting to claim")
            agent.cancel()
            with pytest.raises(asyncio.CancelledError):
                await agent
        finally:
            await holder.rollback()
    assert [c.event_id for c in await read_completions(hooked)] == [completion.event_id]
    assert await hook_runs(hooked, "held") == 0


async def test_get_waits_by_push_and_times_out(settings: Settings) -> None:
    from resultlog.errors import ResultTimeout

    async with ResultBackend(settings) as backend:
        result = backend.AioChordResult("never")
        with pytest.raises(ResultTimeout, match="did not complete"):
            await result.get(timeout=0.3)
        assert await result.ready() is False and result.state == "PENDING"


async def test_the_docs_example_runs(settings: Settings) -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "chords.md").read_text()
    blocks = re.findall(r"(<!-- not run[^>]*-->\n\s*)?```python\n(.*?)```", doc, re.S)
    runnable = [code for skip, code in blocks if not skip]
    assert len(runnable) == 1
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("RESULTLOG_")}, **settings.to_env()}
    with ProcessorProcess(settings) as proc:
        done = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-c", runnable[0]], env=env, capture_output=True,
            text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-3000:] + proc.output()[-2000:]


async def _changelog(settings: Settings) -> dict[bytes, bytes | None]:
    """The aggregator's changelog as it stands: key -> latest value (None: removed)."""
    from resultlog import names

    topic = names.chord_state_changelog_topic(settings.consumer_group)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(settings.topic_partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        latest: dict[bytes, bytes | None] = {}
        while [tp for tp in tps if await consumer.position(tp) < end[tp]]:
            for messages in (await consumer.getmany(timeout_ms=1000)).values():
                latest.update((m.key, m.value) for m in messages)
        return latest
    finally:
        await consumer.stop()


async def test_a_completed_chords_state_is_removed_once_its_result_expires(settings: Settings) -> None:
    """The aggregator's table does not keep completed chords forever: a TTL after the
    completion, the next record of the chord's partition removes its summary."""
    from resultlog.producers.partitioner import partition_for

    s = settings.replace(result_ttl_s=3)
    first = "expiring"
    # A chord on the same partition of the chords topic, to come after the TTL.
    later = next(c for c in (f"later-{i}" for i in range(1000))
                 if partition_for(c.encode(), s.topic_partitions)
                 == partition_for(first.encode(), s.topic_partitions))
    summary = b'"c:' + first.encode() + b'"'  # the table's keys are JSON
    with ProcessorProcess(s) as proc:
        async def completed(chord_id: str) -> bool:
            return any(c.chord_id == chord_id for c in await read_completions(s))

        # A first chord, so that the processor's start-up is not part of the TTL: a
        # completion already older than the TTL (log time) is removed at once.
        async with Emitter(s) as em:
            await declare_chord(em, "warm-up", 1)
            await em.success("warm-up-0", 1, chord_id="warm-up", chord_size=1, chord_index=0)
        await eventually(lambda: completed("warm-up"), f"the processor ready\n{proc.output()[-3000:]}")
        async with Emitter(s) as em:
            await declare_chord(em, first, 1)
            await em.success(f"{first}-0", 1, chord_id=first, chord_size=1, chord_index=0)
        await eventually(lambda: completed(first), f"the chord's completion\n{proc.output()[-3000:]}")

        async def summary_kept() -> bool:
            return (await _changelog(s)).get(summary) is not None
        await eventually(summary_kept, "the completed chord's summary in the changelog")

        await asyncio.sleep(s.result_ttl_s + 0.5)  # until the summary is due
        async with Emitter(s) as em:
            await declare_chord(em, later, 2)

        async def summary_removed() -> bool:
            log = await _changelog(s)
            return summary in log and log[summary] is None
        await eventually(summary_removed, f"the summary's removal\n{proc.output()[-3000:]}")


async def test_a_chord_of_the_largest_size_fails_fast_and_chords_after_it_complete(settings: Settings) -> None:
    """A chord of 2**31 - 1 members costs what its members do: the aggregator (on the
    fold's event loop) walked the declared size, and stalled the processor at every start."""
    n = 2**31 - 1
    with ProcessorProcess(settings) as proc:
        async with Emitter(settings) as emitter:
            await declare_chord(emitter, "big", n, wait=True)
            await emitter.failure("big-0", ValueError("x"), chord_id="big", chord_size=n, chord_index=0)
            for _ in range(2):  # a redelivered member of an undeclared chord recounts it
                await emitter.success("dup-0", 1, chord_id="dup", chord_size=n, chord_index=0)
            await emitter.flush()
        await emit(settings, members("after", 2), ("after", 2))
        async with ResultBackend(settings) as backend:
            with pytest.raises(ChordError, match=r"member 0 \(task big-0\) raised ValueError: x"):
                await backend.AioChordResult("big").get(timeout=60)
            assert await backend.AioChordResult("after").get(timeout=60) == [0, 2], proc.output()[-3000:]
            dup = backend.AioChordResult("dup")
            await eventually(lambda: _done(dup, 1), "the repeated member counted")
            assert (dup.state, dup.view.done, dup.size) == ("STARTED", 1, n)
            assert await backend.AioAsyncResult("dup-0").get(timeout=60) == 1  # tasks fold on


async def test_a_member_entry_over_the_changelog_limit_is_cut_and_chords_after_it_complete(
    settings: Settings,
) -> None:
    """A control character is 1 byte in the event and 6 in the changelog's JSON: the
    member's entry (5.4 MB) was refused by the changelog and retried for ever, and no chord
    completed after it. The entry is cut to fit; the chord fails fast naming the member."""
    message = "\x01" * 900_000 + "end"
    with ProcessorProcess(settings) as proc:
        async with Emitter(settings) as emitter:
            await emitter.failure("ctl-0", ValueError(message), chord_id="ctl", chord_size=2,
                                  chord_index=0, wait=True)
            await declare_chord(emitter, "ctl", 2)
            await emitter.flush()
        await emit(settings, members("after", 2), ("after", 2))
        async with ResultBackend(settings) as backend:
            with pytest.raises(ChordError, match=r"member 0 \(task ctl-0\) raised ValueError") as info:
                await backend.AioChordResult("ctl").get(timeout=60)
            assert "truncated from 900003 bytes" in str(info.value) and str(info.value).endswith("end")
            assert await backend.AioChordResult("after").get(timeout=60) == [0, 2], proc.output()[-3000:]
            # The member's own view keeps its message whole.
            with pytest.raises(ValueError) as raised:
                await backend.AioAsyncResult("ctl-0").get(timeout=60)
            assert str(raised.value) == message
        proc.stop()
    completions = {c.chord_id: c for c in await read_completions(settings)}
    failed = completions["ctl"].failed_member
    assert failed is not None and failed.exception is not None and failed.exception.type == "ValueError"


async def test_a_declaration_too_large_for_the_changelog_is_dead_lettered_and_chords_after_it_complete(
    settings: Settings,
) -> None:
    """Callback kwargs of 900,000 raw control characters (no JSON writer leaves them raw):
    within the event limit, but 5.4 MB in the chord's summary, which the changelog refused
    and the aggregator retried for ever, so no chord completed after it. The declaration
    is refused, with its reason, and the fold goes on."""
    await ensure_topics(settings, settings.events_topic, settings.dead_letter_topic)
    codec = Codec()
    decl = ChordDeclared.create("ctl-decl", 1, callback="tasks.sum")
    object.__setattr__(decl, "callback_kwargs", "\x01" * 900_000)  # past the model's checks
    await produce_raw(settings, [(b"ctl-decl", decl.encode(codec))])
    with ProcessorProcess(settings) as proc:
        await emit(settings, members("after", 2), ("after", 2))
        async with ResultBackend(settings) as backend:
            assert await backend.AioChordResult("after").get(timeout=60) == [0, 2], proc.output()[-3000:]
    letter = await first_dead_letter(settings)
    assert letter.key == b"ctl-decl"
    reason = dict(letter.headers)[REASON_HEADER].decode()
    assert "chord ctl-decl: its declaration takes" in reason and "limit" in reason, reason


def unchecked_member(codec: Codec, chord_id: str, index: int, result: str) -> tuple[bytes, bytes]:
    """A member's SUCCESS (of a 2-member chord) holding ``result`` as its result text, past
    the model's checks: what another producer's record may hold, as produced."""
    event = TaskEvent.create(f"{chord_id}-{index}", State.SUCCESS, result=0,
                             chord_id=chord_id, chord_size=2, chord_index=index)
    object.__setattr__(event, "result", result)
    return event.task_id.encode(), codec.encode(event)


async def test_a_member_whose_result_is_not_one_json_value_fails_its_chord_naming_it(settings: Settings) -> None:
    """The members' results were spliced as text: members ``1,2`` and ``3`` made a
    2-member chord return [1, 2, 3], and ``{"a":1}]`` with ``[9`` (together valid), a
    word, or 5,000 digits a JSONDecodeError or ValueError from ChordResult.get(). Each
    such member now fails its chord, named, and chords after them complete."""
    cases = {"chx": ("1,2", "3"), "halves": ('{"a":1}]', "[9"), "word": ("nope", "3"),
             "digits": ("9" * 5000, "3")}
    codec = Codec()
    with ProcessorProcess(settings) as proc:
        await produce_raw(settings, [unchecked_member(codec, chord_id, i, text)
                                     for chord_id, texts in cases.items() for i, text in enumerate(texts)])
        await emit(settings, members("after", 2), *((chord_id, 2) for chord_id in cases), ("after", 2))
        async with ResultBackend(settings) as backend:
            for chord_id in cases:
                pattern = rf"member 0 \(task {chord_id}-0\) raised ResultNotSerializable: the result of task"
                with pytest.raises(ChordError, match=pattern) as info:
                    await backend.AioChordResult(chord_id).get(timeout=60)
                assert isinstance(info.value.__cause__, ResultNotSerializable), proc.output()[-3000:]
                with pytest.raises(ChordError, match=pattern):  # the sync flavour reads the same
                    await asyncio.to_thread(backend.ChordResult(chord_id).get, 60)
            assert await backend.AioChordResult("after").get(timeout=60) == [0, 2], proc.output()[-3000:]
        proc.stop()
        assert "Traceback" not in proc.output(), proc.output()[-3000:]
    completions = {c.chord_id: c for c in await read_completions(settings)}
    for chord_id in cases:  # what the hooks and the completions' followers see
        failed = completions[chord_id].failed_member
        assert failed is not None and failed.exception is not None and failed.index == 0
        assert failed.exception.type == "ResultNotSerializable" and completions[chord_id].results is None
    assert completions["after"].result_values() == [0, 2]


async def test_results_stored_before_they_were_checked_read_as_a_codec_error_naming_the_chord(
    settings: Settings,
) -> None:
    """A chord view completed before the aggregator checked its members' results (or by
    another writer) may hold results that do not read back: a CorruptResult naming the
    chord, not json's own error."""
    from resultlog import names
    from resultlog.chords.store import completion_fields

    done = ChordCompleted(completion_event_id("old"), "old", State.SUCCESS, 2, 2, 0, 5, results='[{"a":1}],[9]')
    client = redis.asyncio.Redis.from_url(settings.redis_url)
    try:
        await client.hset(names.chord_key(settings.redis_prefix, "old"),
                          mapping=completion_fields(done))
    finally:
        await client.aclose()
    async with ResultBackend(settings) as backend:
        with pytest.raises(CorruptResult, match=r"chord old's stored results are not JSON text"):
            await backend.AioChordResult("old").get(timeout=10)
        with pytest.raises(CorruptResult, match=r"chord old's stored results are not JSON text"):
            await asyncio.to_thread(backend.ChordResult("old").get, 10)


async def _set_topic_config(settings: Settings, topic: str, config: dict[str, str]) -> None:
    """Set ``config`` on ``topic`` (its other settings back to the broker's defaults)
    and return once the broker describes it so: it applies the change a moment after
    the controller accepted it."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, config)])

        async def applied() -> bool:
            [response] = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, topic, dict.fromkeys(config))])
            [(_, _, _, _, entries, *_)] = response.resources
            return {e[0]: e[1] for e in entries if e[0] in config} == config
        await eventually(applied, f"{topic}'s config {config} applied")
    finally:
        await admin.close()


async def test_a_completion_the_broker_refuses_stops_the_processor_naming_it_and_is_sent_after_the_fix(
        settings: Settings) -> None:
    """The completions topic's limit lowered under a running processor: the broker
    refuses the completion, which retrying cannot change. The aggregator retried it for
    good (a warning every 5 s, every chord after it held up); it must stop the worker
    naming the refusal, and the completion, not lost, must be sent once the limit is
    raised again and the processor restarted."""
    topic = settings.chord_completions_topic
    size = 4
    big = [TaskEvent.create(f"big-{i}", State.SUCCESS, result="x" * 1_000, chord_id="big",
                            chord_size=size, chord_index=i) for i in range(size)]
    proc = ProcessorProcess(settings).start()
    try:
        await emit(settings, members("warm-up", 1), ("warm-up", 1))
        async with ResultBackend(settings) as backend:
            assert await backend.AioChordResult("warm-up").get(timeout=120) == [0], proc.output()[-3000:]
        await _set_topic_config(settings, topic, {"max.message.bytes": "2000"})
        await emit(settings, big, ("big", size))

        async def stopped() -> bool:
            return not proc.alive()
        await eventually(stopped, f"the processor stopped\n{proc.output()[-3000:]}", timeout_s=120)
        said = proc.output()
        assert "DeliveryRefused" in said and repr(topic) in said and "MessageSizeTooLarge" in said, said[-3000:]
        # Restarted before the topic is fixed, it says what to fix.
        proc.start()
        await eventually(stopped, f"the processor refused to start\n{proc.output()[-3000:]}", timeout_s=120)
        assert f"Kafka topic {topic!r} takes records of at most 2000 bytes" in proc.output(), proc.output()[-3000:]

        await _set_topic_config(settings, topic, {"max.message.bytes": str(max_message_bytes(settings))})
        proc.start()
        async with ResultBackend(settings) as backend:
            assert await backend.AioChordResult("big").get(timeout=120) == ["x" * 1_000] * size
        await eventually(lambda: _completed(settings, "big"), f"big's completion sent\n{proc.output()[-3000:]}")
        proc.stop()
    finally:
        proc.stop()
        proc.log.unlink(missing_ok=True)
    assert Counter(c.chord_id for c in await read_completions(settings)) == {"warm-up": 1, "big": 1}


async def _completed(settings: Settings, chord_id: str) -> bool:
    return any(c.chord_id == chord_id for c in await read_completions(settings))


async def test_a_member_too_large_to_forward_fails_its_chord_and_the_fold_goes_on(settings: Settings) -> None:
    """Another producer's member, keyless and just under the events topic's limit: keyed
    by its 255-character chord id for the chords topic, it was over that topic's limit,
    and the broker's refusal stopped the processor at every start (nothing emitted after
    it visible). It is forwarded as failing with EventTooLarge; its own view keeps it.
    A declaration as large goes to the dead letters, saying why."""
    await ensure_topics(settings, settings.events_topic, settings.dead_letter_topic)
    chord_id, limit = "c" * 255, max_message_bytes(settings)
    codec = Codec(max_bytes=2 * limit)  # past the emitters' limit, as another producer may be
    n = limit - 2_000
    while len(value := codec.encode(TaskEvent.create(
            "huge-member", State.SUCCESS, result="x" * n, chord_id=chord_id, chord_size=2,
            chord_index=0))) < limit - 150:
        n += limit - 150 - len(value)
    # A declaration as large, of another chord: refused to the dead letters, with why.
    decl = ChordDeclared.create("d" * 255, 1, callback="tasks.sum")
    n_kwargs = limit - 2_000
    while True:
        object.__setattr__(decl, "callback_kwargs", f'"{"k" * n_kwargs}"')  # past the model's checks
        if len(declared := decl.encode(codec)) >= limit - 150:
            break
        n_kwargs += limit - 150 - len(declared)
    await produce_raw(settings, [(None, value), (None, declared)])
    async with Emitter(settings) as emitter:
        await declare_chord(emitter, chord_id, 2)
        await emitter.success("after-the-huge-one", 1)
    with ProcessorProcess(settings) as proc:
        async with ResultBackend(settings) as backend:
            assert await backend.AioAsyncResult("after-the-huge-one").get(timeout=60) == 1, \
                proc.output()[-3000:]
            with pytest.raises(ChordError, match=r"member 0 \(task huge-member\) raised EventTooLarge: "
                                                 r"the SUCCESS outcome of task huge-member takes"):
                await backend.AioChordResult(chord_id).get(timeout=60)
            assert await backend.AioAsyncResult("huge-member").get(timeout=10) == "x" * n
        assert proc.alive(), proc.output()[-3000:]
    reason = dict((await first_dead_letter(settings)).headers)[REASON_HEADER].decode()
    assert f"chord {'d' * 255}: its ChordDeclared record takes" in reason, reason
