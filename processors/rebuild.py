"""Rebuilding the gaps the live processor claimed in the Redis view (``views/coverage.py``)
from the log, into Redis only, while the live fold goes on (docs/processor.md, "The view
heals itself", says why that is safe and how a rebuild resumes).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Final

from resultlog.backoff import Backoff
from resultlog.background import cancel_and_wait
from resultlog.chords import fromlog
from resultlog.errors import ResultlogError, ViewLost
from resultlog.processors.logreader import LogReader, Slice
from resultlog.processors.sink import FoldSink
from resultlog.settings import Settings
from resultlog.views.coverage import RebuildChain, ViewCoverage
from resultlog.views.redis_view import RedisView

log = logging.getLogger("resultlog.processor")

#: How often a running rebuild logs its progress.
PROGRESS_EVERY_S: Final = 5.0


class ViewRebuilder:
    """Rebuilds claimed gaps of the Redis view, one round at a time, in the background."""

    def __init__(self, settings: Settings, coverage: ViewCoverage, view: RedisView) -> None:
        self.settings = settings
        self.coverage = coverage
        self.view = view
        # Only prepare() is used: decoding and row building, no stores of its own.
        self._rows = FoldSink(settings, consumer_group="", write_redis=False, write_history=False)
        self._pending: dict[int, tuple[int, int]] = {}
        # The chords mark (views/coverage.py) of a chord views' rebuild to run, and of
        # the one running: a claim finding the mark of the running one queues nothing.
        self._chords_lost: str | None = None
        self._chords_running: str | None = None
        self._task: asyncio.Task[None] | None = None
        self.rebuilding = False  # a rebuild is queued or running
        self.rebuilt = 0  # events folded by rebuilds, for logs and the metrics

    def add(self, gaps: Mapping[int, tuple[int, int]], *, chords_lost: str | None = None) -> None:
        """Rebuild ``gaps`` (partition -> [start, end)); a partition already queued keeps
        the union of both ranges. ``chords_lost``: the chords mark a claim found; the
        chord views are rebuilt (after the gaps) and then the mark removed."""
        for p, (start, end) in gaps.items():
            if start >= end:
                continue
            if p in self._pending:
                s0, e0 = self._pending[p]
                start, end = min(start, s0), max(end, e0)
            self._pending[p] = (start, end)
        if chords_lost is not None and chords_lost != self._chords_running:
            self._chords_lost = chords_lost
        if (self._pending or self._chords_lost is not None) and \
                (self._task is None or self._task.done()):
            self.rebuilding = True
            self._task = asyncio.get_running_loop().create_task(self._run(), name="view-rebuild")

    async def close(self) -> None:
        """Stop a rebuild in progress: its recorded progress lets the next start resume."""
        await cancel_and_wait(self._task)
        self._task = None
        self.rebuilding = False

    async def _run(self) -> None:
        backoff = Backoff()
        try:
            while self._pending or self._chords_lost is not None:
                gaps, self._pending = self._pending, {}
                chords, self._chords_lost = self._chords_lost, None
                try:
                    if gaps:
                        await self._rebuild(gaps)
                    if chords is not None:
                        await self._rebuild_chords(chords)
                    backoff.reset()
                except ResultlogError as exc:
                    # The gaps and the chords mark stay recorded in Redis, so another
                    # processor's claim (or this one's, at a restart) would find them; but
                    # nothing here claims a partition whose position is there, so a
                    # rebuild that gave up would leave the view not whole until then.
                    if not exc.retriable:
                        log.warning("view rebuild interrupted (%s); it resumes at the next claim", exc)
                        return
                    log.warning("view rebuild interrupted (%s); resuming from its recorded "
                                "progress in %.1f s", exc, backoff.delay)
                    await backoff.wait()
                    await self._resume(gaps, chords)
        finally:
            if not self._pending and self._chords_lost is None:
                self.rebuilding = False

    async def _resume(self, gaps: Mapping[int, tuple[int, int]], chords: str | None) -> None:
        """Queue again what an interrupted round was rebuilding: each gap from the progress
        the view records (a gap no longer recorded was finished, or lost with the view,
        whose next claim records it again), or whole if Redis cannot say yet."""
        try:
            recorded = (await self.coverage.read()).gaps
        except ResultlogError:
            self.add(gaps, chords_lost=chords)
            return
        self.add({p: recorded[p] for p in gaps if p in recorded}, chords_lost=chords)

    async def _rebuild_chords(self, mark: str) -> None:
        """Fold the whole chords topic into the chord views, then remove the chords mark
        ``mark``. Chord views are global: every processor that finds the mark rebuilds
        them, and two at once write the same values (the fold of one log: completions
        are the same fields, progress only rises), so the first to finish removes it."""
        self._chords_running = mark
        try:
            log.info("view rebuild: the chord views were lost with the view; rebuilding them "
                     "from %s", self.settings.chords_topic)
            n = await fromlog.rebuild_chord_views(self.settings)
            await self.coverage.chords_rebuilt(mark)
        finally:
            self._chords_running = None
        log.info("view rebuild: the views of %d chord(s) rebuilt from %s",
                 n, self.settings.chords_topic)

    async def _rebuild(self, gaps: dict[int, tuple[int, int]]) -> None:
        plan = Slice(self.settings.events_topic, {p: g[0] for p, g in gaps.items()},
                     {p: g[1] for p, g in gaps.items()})
        log.info("view rebuild: the Redis view lacks %d event(s) the log holds, in partition(s) %s; "
                 "rebuilding from the log while folding new events",
                 plan.total, ", ".join(f"{p} [{a}, {b})" for p, (a, b) in sorted(gaps.items())))
        started = time.monotonic()
        chain = self.coverage.chain()
        try:
            done = await self._fold(gaps, plan, chain, started)
        except ViewLost:
            # A write of this rebuild is not in the view (Redis restarted from its files or
            # failed over): start again from the progress the view still records, which
            # no lost write got past (``views/coverage.py``, ``RebuildChain``).
            recorded = (await self.coverage.read()).gaps
            log.warning("view rebuild: the Redis view lacks some of this rebuild's writes "
                        "(restarted or failed over?); rebuilding again from its recorded progress")
            self.add({p: recorded[p] for p in gaps if p in recorded})
            return
        if done is None:
            return
        await self.coverage.end(chain)
        seconds = time.monotonic() - started
        log.info("view rebuild done: %d events in %.1f s (%.0f events/s)", done, seconds,
                 done / seconds if seconds > 0 else 0.0)

    async def _fold(self, gaps: dict[int, tuple[int, int]], plan: Slice, chain: RebuildChain,
                    started: float) -> int | None:
        """Fold the slice into the view, recording progress after each batch; the events
        folded, or None if the view lost a partition again (its next claim starts over)."""
        last_report = started
        done = 0
        active = set(gaps)
        async with LogReader(self.settings) as reader:
            async for batch in reader.read(plan):
                prepared = self._rows.prepare(batch)
                await self.view.apply_rows(prepared.view_tasks, prepared.view_rows, chain=chain)
                done += prepared.read
                self.rebuilt += prepared.read
                for (_, p), next_offset in prepared.offsets.items():
                    if p not in active:
                        continue
                    answer = await self.coverage.advance(p, gaps[p][1], next_offset, chain)
                    if answer < 0:
                        log.warning("view rebuild: the view lost partition %d again; "
                                    "the next claim starts it over", p)
                        return None
                    if answer == 0:
                        active.discard(p)  # merged into a larger gap, queued by its claim
                now = time.monotonic()
                if now - last_report >= PROGRESS_EVERY_S:
                    last_report = now
                    log.info("view rebuild: %d of %d events (%.0f%%), %.0f events/s", done,
                             plan.total, 100.0 * done / max(plan.total, 1), done / (now - started))
        for p in active:
            # The slice is read to its end; a tail of control records (transactions)
            # has no record to report it, so close each gap explicitly.
            await self.coverage.advance(p, gaps[p][1], gaps[p][1], chain)
        return done
