"""Fault injection: a stream of events into a private stack, one fault, then what the
stores hold. Shared by ``bench/faults.py`` (prints one row per fault) and
``tests/faults/`` (asserts every row reads 0 lost, 0 duplicated, 0 wrong).

A run: a private stack (``resultlog.devstack.private``: its own Kafka, Redis and
PostgreSQL on free ports, so killing them disturbs nobody), the processor(s) as child
processes, and two emitter child processes each emitting STARTED then SUCCESS for
10,000 tasks at a steady rate (40,000 events). An event counts as *accepted* once its
``emit(wait=True)`` returned (Kafka acknowledged it, acks=all); an emit that fails is
retried with the same event (same event_id), as a worker's retry would. When a share of
the stream has been accepted, the fault is injected; afterwards:

- ``lost``: accepted events missing from the history;
- ``duplicates``: history rows beyond one per event_id;
- ``wrong``: tasks whose Redis view is missing or not the latest accepted state;
- ``recovery_s``: from the fault until the view held every task accepted until the
  fault was over and a second more (a view lost with Redis is rebuilt by the
  processor: no manual step).

Run an emitter by hand: ``python -m bench.faultkit emit OUT PREFIX TASKS RATE`` (settings
from ``RESULTLOG_*``).
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import redis.asyncio

from resultlog.devstack.private import PrivateStack, private_stack
from resultlog.errors import ResultlogError
from resultlog.producers import Emitter
from resultlog.chords.declare import declare_chord
from resultlog.producers.topics import ensure_topics
from resultlog.chords.records import ChordCompleted
from resultlog.schemas.event import TaskEvent
from resultlog.schemas.states import State
from resultlog.settings import Settings
from resultlog.views import RedisView
from tests.integration.processes import ProcessorProcess

EMITTERS = 2
TASKS_PER_EMITTER = 10_000  # two events each: 40,000 events in all
TASKS_PER_S = 1_000  # per emitter: 4,000 events/s in all, a 10 s stream
WINDOW = 200  # emits in flight per emitter
INJECT_AT = 0.3  # the fault comes once this share of the stream was accepted
SNAPSHOT_AFTER_S = 1.0  # see run_fault: what "the view complete again" covers
SETTLE_S = 240.0  # the longest a run waits for the view to be complete
# What the processor logs at the end of a view rebuild (processors/rebuild.py).
_REBUILT = re.compile(r"view rebuild done: \d+ events in [\d.]+ s")


@dataclass
class Row:
    fault: str
    accepted: int = 0
    history_rows: int = 0
    duplicates: int = 0
    lost: int = 0
    wrong: int = 0
    recovery_s: float | None = None
    note: str = ""
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicates or self.wrong or self.problems)

    HEADER = ("| fault | events accepted | history rows | duplicates | lost | tasks wrong or "
              "missing in the view | view complete again after | note |\n"
              "|---|---|---|---|---|---|---|---|")

    def render(self) -> str:
        rec = "never" if self.recovery_s is None else f"{self.recovery_s:.1f} s"
        note = "; ".join([self.note, *self.problems]) if self.problems else self.note
        return (f"| {self.fault} | {self.accepted:,} | {self.history_rows:,} | {self.duplicates} | "
                f"{self.lost} | {self.wrong} | {rec} | {note} |")


@dataclass
class Run:
    """One fault run's moving parts, handed to the fault's injector."""

    stack: PrivateStack
    settings: Settings
    processors: list[ProcessorProcess]
    outs: list[Path]
    note: list[str] = field(default_factory=list)
    killed_for_good: set[int] = field(default_factory=set)  # processors the fault stopped

    def accepted_count(self) -> int:
        return sum(_count_lines(p) for p in self.outs)

    async def wait(self, check: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not await check():
            if time.monotonic() > deadline:
                raise AssertionError(f"fault run gave up waiting for: {what}")
            await asyncio.sleep(0.1)

    async def history_count(self) -> int:
        try:
            conn = await asyncpg.connect(self.settings.postgres_dsn)
        except (OSError, asyncpg.PostgresError):
            return -1
        try:
            return int(await conn.fetchval(
                f'SELECT count(*) FROM "{self.settings.postgres_schema}".task_events'))
        except asyncpg.PostgresError:
            return -1
        finally:
            await conn.close()


Injector = Callable[[Run], Awaitable[None]]


@dataclass(frozen=True)
class Fault:
    name: str
    inject: Injector
    brokers: int = 1
    processors: int = 1
    chord: bool = False  # a 10,000-member chord folds through the fault, hook counted


def _count_lines(path: Path) -> int:
    try:
        with path.open("rb") as f:
            return sum(1 for _ in f)
    except FileNotFoundError:
        return 0


def _accepted(paths: list[Path]) -> dict[str, tuple[str, str]]:
    """event_id -> (task_id, state) of every accepted event."""
    out: dict[str, tuple[str, str]] = {}
    for path in paths:
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 3:
                out[parts[0]] = (parts[1], parts[2])
    return out


_RANK = {"STARTED": 1, "SUCCESS": 2}


def expected_states(accepted: dict[str, tuple[str, str]]) -> dict[str, str]:
    """task_id -> the state its view must show: the highest accepted."""
    out: dict[str, str] = {}
    for task_id, state in accepted.values():
        if _RANK.get(state, 0) > _RANK.get(out.get(task_id, ""), 0):
            out[task_id] = state
    return out


async def view_mismatches(settings: Settings, expected: dict[str, str], *,
                          at_least: bool = False) -> int:
    """How many tasks' views are missing or not in the expected state (-1: Redis down).
    ``at_least``: a later state than expected counts as right (the stream goes on)."""
    ids = sorted(expected)
    bad = 0
    try:
        async with RedisView(settings) as view:
            for i in range(0, len(ids), 2000):
                chunk = ids[i:i + 2000]
                for task_id, v in zip(chunk, await view.get_many(chunk)):
                    if v is None:
                        bad += 1
                    elif at_least:
                        bad += _RANK.get(v.state.value, 0) < _RANK[expected[task_id]]
                    else:
                        bad += v.state.value != expected[task_id]
    except ResultlogError:
        return -1
    return bad


# -- the emitter child ---------------------------------------------------------------------

async def emit_stream(settings: Settings, out_path: Path, prefix: str, tasks: int, rate: float) -> None:
    """STARTED then SUCCESS for ``tasks`` tasks at ``rate`` tasks/s; each acknowledged
    event is appended to ``out_path`` as ``event_id task_id state``."""
    loop = asyncio.get_running_loop()
    window = asyncio.Semaphore(WINDOW)
    with out_path.open("a", buffering=1) as out:
        async with Emitter(settings) as em:
            async def one(event: TaskEvent) -> None:
                delay = 0.05
                try:
                    while True:
                        try:
                            await em.emit(event, wait=True)
                            out.write(f"{event.event_id} {event.task_id} {event.state.value}\n")
                            return
                        except ResultlogError as exc:
                            if not exc.retriable:
                                raise
                            await asyncio.sleep(delay)
                            delay = min(delay * 2, 2.0)
                finally:
                    window.release()

            pending: list[asyncio.Task[None]] = []
            start = loop.time()
            for i in range(tasks):
                ahead = start + i / rate - loop.time()
                if ahead > 0:
                    await asyncio.sleep(ahead)
                task_id = f"{prefix}-{i}"
                for event in (TaskEvent.create(task_id, State.STARTED, task_name="fault.t"),
                              TaskEvent.create(task_id, State.SUCCESS, result=i, task_name="fault.t")):
                    await window.acquire()
                    pending.append(loop.create_task(one(event)))
            await asyncio.gather(*pending)


def _child_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESULTLOG_")}
    return {**env, **settings.to_env(), "PYTHONUNBUFFERED": "1"}


def _root() -> str:
    return str(Path(__file__).resolve().parents[1])


# -- a run ------------------------------------------------------------------------------

async def run_fault(fault: Fault, *, tasks: int = TASKS_PER_EMITTER, rate: float = TASKS_PER_S,
                    quiet: bool = True) -> Row:
    out = (lambda _line: None) if quiet else print
    row = Row(fault.name)
    workdir = Path(tempfile.mkdtemp(prefix="resultlog-fault-"))
    async with private_stack(brokers=fault.brokers, out=out) as stack:
        settings = stack.settings.replace(
            chord_hook=f"{__name__}:count_hook" if fault.chord else "")
        await ensure_topics(settings, settings.events_topic, settings.dead_letter_topic,
                            settings.chords_topic, settings.chord_completions_topic)
        processors = [ProcessorProcess(settings).start() for _ in range(fault.processors)]
        outs = [workdir / f"emitter-{i}.accepted" for i in range(EMITTERS)]
        run = Run(stack, settings, processors, outs)
        emitters: list[subprocess.Popen[bytes]] = []
        try:
            async def folding() -> bool:
                return all("resuming at" in p.output() for p in processors)
            await run.wait(folding, "the processors assigned their partitions")
            for i, path in enumerate(outs):
                with (workdir / f"emitter-{i}.log").open("ab") as log:
                    emitters.append(subprocess.Popen(
                        [sys.executable, "-m", "bench.faultkit", "emit", str(path), f"e{i}",
                         str(tasks), str(rate)],
                        env=_child_env(settings), stdout=log, stderr=subprocess.STDOUT,
                        cwd=_root()))
            total = EMITTERS * tasks * 2

            async def enough() -> bool:
                if any(e.poll() not in (None, 0) for e in emitters):
                    raise AssertionError("an emitter died: " + _tails(workdir))
                return run.accepted_count() >= INJECT_AT * total
            await run.wait(enough, "the stream under way")
            fault_at = time.monotonic()
            chord = asyncio.create_task(_chord_through(run)) if fault.chord else None
            await fault.inject(run)
            # What must become visible: everything accepted until the fault was over and
            # a second more (events the fault kept from being folded, e.g. those of a
            # dead processor's partitions until the group notices).
            await asyncio.sleep(max(0.0, fault_at + SNAPSHOT_AFTER_S - time.monotonic()))
            before = expected_states(_accepted(outs))

            async def recovered() -> bool:
                return await view_mismatches(settings, before, at_least=True) == 0
            try:
                await run.wait(recovered, "the view holding what was accepted before the fault",
                               SETTLE_S)
                row.recovery_s = time.monotonic() - fault_at
            except AssertionError as exc:
                row.problems.append(str(exc))
            for e in emitters:
                code = await asyncio.to_thread(e.wait, SETTLE_S)
                if code != 0:
                    row.problems.append(f"an emitter exited with {code}: {_tails(workdir)}")
            if chord is not None:
                row.problems += await chord
            accepted = _accepted(outs)
            row.accepted = len(accepted)
            expected = expected_states(accepted)

            async def complete() -> bool:
                return await view_mismatches(settings, expected) == 0 and \
                    await run.history_count() >= len(accepted)
            try:
                await run.wait(complete, "every accepted event in both stores", SETTLE_S)
            except AssertionError as exc:
                row.problems.append(str(exc))
            for i, p in enumerate(processors):
                if i not in run.killed_for_good and not p.alive():
                    row.problems.append(f"processor {i} died: {p.output()[-1500:]}")
            row.wrong = await view_mismatches(settings, expected)
            if row.wrong < 0:
                row.problems.append("Redis did not answer at the end")
            row.history_rows, row.duplicates, row.lost = await _history_figures(
                settings, set(accepted))
            for p in processors:
                run.note += [m.group(0) for m in _REBUILT.finditer(p.output())]
            row.note = "; ".join(run.note)
        finally:
            for e in emitters:
                if e.poll() is None:
                    e.kill()
            for p in run.processors:
                p.stop()
            if not row.ok:
                row.problems.append(f"processor output: {run.processors[0].log}")
            else:
                for p in run.processors:
                    p.log.unlink(missing_ok=True)
    return row


def _tails(workdir: Path) -> str:
    return " | ".join(p.read_text(errors="replace")[-1500:] for p in sorted(workdir.glob("*.log")))


async def _history_figures(settings: Settings, accepted: set[str]) -> tuple[int, int, int]:
    conn = await asyncpg.connect(settings.postgres_dsn)
    try:
        # event_id is a uuid column; the emitters wrote the hex form.
        ids = [r[0].hex for r in await conn.fetch(
            f'SELECT event_id FROM "{settings.postgres_schema}".task_events')]
    finally:
        await conn.close()
    distinct = set(ids)
    return len(ids), len(ids) - len(distinct), len(accepted - distinct)


# -- the chord that folds through a fault --------------------------------------------------

CHORD_ID = "fault-chord"
CHORD_SIZE = 10_000


def count_hook(completion: ChordCompleted) -> None:
    """The processor's chord hook in chord faults: counts its runs in Redis."""
    import redis as sync_redis

    s = Settings.from_env()
    client = sync_redis.Redis.from_url(s.redis_url)
    try:
        client.incr(f"{s.redis_prefix}fault-hook:{completion.chord_id}")
    finally:
        client.close()


async def _chord_through(run: Run) -> list[str]:
    """Emit a 10,000-member chord while the fault happens; then check it completed once
    and its hook ran once. Returns the problems found."""
    s = run.settings
    async with Emitter(s) as em:
        await declare_chord(em, CHORD_ID, CHORD_SIZE, callback="fault.sum")
        for i in range(CHORD_SIZE):
            await em.emit(TaskEvent.create(f"{CHORD_ID}-{i}", State.SUCCESS, result=i,
                                           chord_id=CHORD_ID, chord_size=CHORD_SIZE, chord_index=i))
        await em.flush()
    client = redis.asyncio.Redis.from_url(s.redis_url)
    try:
        async def hooked() -> bool:
            try:
                return int(await client.get(f"{s.redis_prefix}fault-hook:{CHORD_ID}") or 0) >= 1
            except (OSError, redis.RedisError):
                return False
        try:
            await run.wait(hooked, "the chord's hook", SETTLE_S)
        except AssertionError as exc:
            return [str(exc)]
        from resultlog.views import ResultBackend
        async with ResultBackend(s) as backend:
            results = await backend.AioChordResult(CHORD_ID).get(timeout=60)
        problems = []
        if results != list(range(CHORD_SIZE)):
            problems.append("the chord's results are not the members' in order")
        completions = await _completions(s)
        runs = int(await client.get(f"{s.redis_prefix}fault-hook:{CHORD_ID}") or 0)
        run.note.append(f"chord of {CHORD_SIZE:,}: {completions} completion(s), hook ran {runs}x")
        if completions != 1 or runs != 1:
            problems.append(f"chord completed {completions}x, hook ran {runs}x (want 1, 1)")
        return problems
    finally:
        await client.aclose()


async def _completions(settings: Settings) -> int:
    from tests.integration.test_chords import read_completions

    return sum(1 for c in await read_completions(settings) if c.chord_id == CHORD_ID)


# -- the faults -----------------------------------------------------------------------------

async def kafka_restart(run: Run) -> None:
    await run.stack.kill("kafka")
    await run.stack.start("kafka")


async def redis_restart(run: Run) -> None:
    await run.stack.kill("redis")
    await run.stack.start("redis")  # empty: it runs without persistence


async def redis_flushdb(run: Run) -> None:
    client = redis.asyncio.Redis.from_url(run.settings.redis_url)
    try:
        await client.flushdb()
    finally:
        await client.aclose()


async def postgres_restart(run: Run) -> None:
    await run.stack.kill("postgres")
    await run.stack.start("postgres")


async def processor_killed_three_times(run: Run) -> None:
    proc = run.processors[0]
    for _ in range(3):
        before = await run.history_count()
        proc.kill()
        proc.start()

        async def progressed() -> bool:
            return await run.history_count() > before
        await run.wait(progressed, "the restarted processor folding")


async def one_of_two_processors_killed(run: Run) -> None:
    run.processors[1].kill()
    run.killed_for_good.add(1)


async def chord_aggregator_killed(run: Run) -> None:
    """The processor (fold and chord aggregator) SIGKILLed while the chord is folding."""
    client = redis.asyncio.Redis.from_url(run.settings.redis_url)
    try:
        async def chord_started() -> bool:
            from resultlog import names
            done = await client.hget(names.chord_key(run.settings.redis_prefix, CHORD_ID), "done")
            return int(done or 0) >= CHORD_SIZE // 8
        await run.wait(chord_started, "part of the chord folded")
    finally:
        await client.aclose()
    run.processors[0].kill()
    run.processors[0].start()


async def partition_leader_killed(run: Run) -> None:
    leader = await run.stack.partition_leader(run.settings.events_topic, 0)
    await run.stack.kill_broker(leader)
    run.note.append(f"node {leader}, leader of partition 0, killed; RF 3, min ISR 2")


FAULTS: dict[str, Fault] = {f.name: f for f in (
    Fault("Kafka broker SIGKILL + restart", kafka_restart),
    Fault("Redis SIGKILL + restart empty", redis_restart),
    Fault("Redis FLUSHDB while running", redis_flushdb),
    Fault("PostgreSQL SIGKILL + restart", postgres_restart),
    Fault("processor SIGKILLed 3 times", processor_killed_three_times),
    Fault("one of two processors SIGKILLed", one_of_two_processors_killed, processors=2),
    Fault("chord aggregator SIGKILLed mid-chord", chord_aggregator_killed, chord=True),
    Fault("3-broker cluster: partition leader SIGKILLed", partition_leader_killed, brokers=3),
)}


def main(argv: list[str]) -> int:
    if len(argv) == 5 and argv[0] == "emit":
        out, prefix, tasks, rate = argv[1:]
        asyncio.run(emit_stream(Settings.from_env(), Path(out), prefix, int(tasks), float(rate)))
        return 0
    print("usage: python -m bench.faultkit emit OUT PREFIX TASKS RATE", file=sys.stderr)
    return 2



if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
