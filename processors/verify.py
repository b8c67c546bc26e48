"""Check that both views equal a fold of the log (or of the history table).

The expected state is computed from the source of truth with the pure fold
(:mod:`resultlog.schemas.fold`), independently of the code that wrote the views, and
compared task by task. A task whose result has expired by TTL is expected to be
absent from Redis. The chord views are checked against a fold of the chords topic, as
a rebuild of them would write it (:mod:`resultlog.chords.fromlog`).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from resultlog import names
from resultlog.chords.fromlog import ChordsFromLog, completed_view, progress_view
from resultlog.chords.store import ChordView, chord_expire_at, chord_view_from_hash
from resultlog.errors import ValidationError
from resultlog.processors.logreader import LogReader
from resultlog.processors.progress import Progress
from resultlog.redis_access import async_client, text, translated
from resultlog.schemas.codec import Codec
from resultlog.schemas.event import TaskEvent
from resultlog.schemas.fold import TaskView, expired, fold
from resultlog.settings import Settings
from resultlog.views.history import HistoryStore
from resultlog.views.redis_view import RedisView


@dataclass(frozen=True, slots=True)
class Difference:
    store: str  # "redis" or "postgres"
    task_id: str  # the task's id, or the chord's when ``what`` is "chord"
    expected: Any
    actual: Any
    what: str = "task"

    def render(self) -> str:
        return (f"{self.store}: {self.what} {self.task_id}\n    expected {self.expected}\n"
                f"    actual   {self.actual}")


@dataclass(slots=True)
class VerifyReport:
    tasks: int = 0
    chords: int = 0
    events: int = 0
    undecodable: int = 0
    differences: list[Difference] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.differences


async def events_from_log(settings: Settings, progress: bool = False) -> tuple[list[TaskEvent], int]:
    codec = Codec(max_bytes=settings.max_event_bytes)
    events: list[TaskEvent] = []
    bad = 0
    async with LogReader(settings) as reader:
        plan = await reader.plan()
        bar = Progress(plan.total, "read log") if progress else None
        async for batch in reader.read(plan):
            for rec in batch:
                try:
                    decoded = codec.decode_any(rec.value or b"")
                except Exception:  # undecodable records are the dead letters' business
                    bad += 1
                    continue
                # Other record types (chord declarations, worker heartbeats) are not
                # task events: neither view of tasks holds them.
                if isinstance(decoded, TaskEvent):
                    events.append(decoded)
            if bar is not None:
                bar.advance(len(batch))
        if bar is not None:
            bar.finish()
    return events, bad


# Tasks read from Redis per pipelined round trip.
_READ_CHUNK = 2000


async def verify(
    settings: Settings,
    *,
    redis: bool = True,
    history: bool = True,
    source: str = "log",
    progress: bool = False,
) -> VerifyReport:
    # Refused rather than reported "OK": a check that compares nothing proves nothing.
    if source not in ("log", "history"):
        raise ValidationError(f"source must be 'log' or 'history', not {source!r}")
    if not (redis or history):
        raise ValidationError("nothing to verify: choose the Redis view, the history, or both")
    if source == "history" and not redis:
        raise ValidationError("--source history with --history-only compares nothing: the "
                              "history is then both the expected state and what is checked; "
                              "check the history against the log (--source log)")
    report = VerifyReport()
    async with HistoryStore(settings) as store:
        if source == "log":
            events, report.undecodable = await events_from_log(settings, progress)
        else:
            events = [e async for e in store.all_events()]
        report.events = len(events)
        expected = fold(events)
        report.tasks = len(expected)
        if redis:
            await _compare_redis(settings, expected, report)
            await _compare_chords(settings, report)
        if history and source == "log":
            await _compare_history(store, events, report)
    return report


async def _read_views(view: RedisView, task_ids: list[str]) -> AsyncIterator[tuple[str, TaskView | None]]:
    """Each task's stored view, one pipelined round trip per chunk (one round trip per
    task took 66 s for 333,000 tasks)."""
    for i in range(0, len(task_ids), _READ_CHUNK):
        chunk = task_ids[i:i + _READ_CHUNK]
        for pair in zip(chunk, await view.get_many(chunk)):
            yield pair


def same(a: object, b: object) -> bool:
    """``a == b``, but with a NaN equal to a NaN: the contract's runtime is any double,
    and a NaN folded from the log and read back from a store is the log's value, which
    ``==`` never finds equal. The reprs are compared only when ``==`` says no (a float's
    repr is exact), so nothing that differs otherwise is found the same."""
    return a == b or repr(a) == repr(b)


async def _compare_redis(settings: Settings, expected: dict[str, TaskView], report: VerifyReport) -> None:
    now = int(time.time() * 1000)
    ttl_ms = settings.result_ttl_s * 1000
    async with RedisView(settings) as view:
        async for task_id, got in _read_views(view, list(expected)):
            want = expected[task_id]
            if expired(want, ttl_ms, now):
                continue  # gone by TTL, or about to be: both are right
            if got is None or not same(got.public(), want.public()):
                report.differences.append(Difference(
                    "redis", task_id, want.public(), None if got is None else got.public()))
        extra = [task_id for task_id in await view.task_ids() if task_id not in expected]
        async for task_id, got in _read_views(view, extra):
            report.differences.append(Difference(
                "redis", task_id, None, None if got is None else got.public()))


async def _compare_history(store: HistoryStore, events: list[TaskEvent], report: VerifyReport) -> None:
    want = {e.event_id: e for e in events}
    got = {e.event_id: e async for e in store.all_events()}
    for event_id in want.keys() | got.keys():
        a, b = want.get(event_id), got.get(event_id)
        if not same(a, b):
            task_id = (a or b).task_id  # type: ignore[union-attr]
            report.differences.append(Difference("postgres", task_id, a, b))


async def _compare_chords(settings: Settings, report: VerifyReport) -> None:
    """Each chord's Redis view against a fold of the chords topic (whatever ``source``
    says: the history holds no chords), as a rebuild would write it."""
    source = ChordsFromLog(settings)
    expected: dict[str, tuple[ChordView, int]] = {}  # the view, its latest outcome's time
    async for completion in source.completions():
        expected[completion.chord_id] = (completed_view(completion), completion.timestamp)
    for chord_id, progress in source.progress.items():
        expected[chord_id] = (progress_view(chord_id, progress), progress.timestamp)
    report.chords = len(expected)
    prefix = settings.redis_prefix
    client = async_client(settings)
    try:
        with translated("listing chords"):
            stored = [names.chord_id_from_key(prefix, text(key)) async for key in client.scan_iter(
                match=names.chord_key_pattern(prefix), count=1000, _type="hash")]
        chord_ids = list(expected) + [c for c in stored if c not in expected]
        for i in range(0, len(chord_ids), _READ_CHUNK):
            chunk = chord_ids[i:i + _READ_CHUNK]
            with translated("reading chords"):
                async with client.pipeline(transaction=False) as pipe:
                    for chord_id in chunk:
                        pipe.hgetall(names.chord_key(prefix, chord_id))
                    hashes = await pipe.execute()
            # Taken after the read: a chord dropped by its TTL meanwhile is then expired.
            now = int(time.time() * 1000)
            for chord_id, fields in zip(chunk, hashes):
                got = chord_view_from_hash(chord_id, fields) if fields else None
                if chord_id not in expected:
                    report.differences.append(Difference("redis", chord_id, None, got, "chord"))
                    continue
                want, latest = expected[chord_id]
                at = chord_expire_at(latest, settings.result_ttl_s)
                if at is not None and at <= now:
                    continue  # gone by TTL, or about to be: both are right
                if got != want:
                    report.differences.append(Difference("redis", chord_id, want, got, "chord"))
    finally:
        await client.aclose()

