"""The chord views a fold of the chords topic gives: to rebuild them, or to check them.

The chords topic is the chord aggregator's input, in the order it folded it, so folding
it again gives the same outcomes (fail-fast counts included), with the live aggregator's
cuts (``entries.py``). Both the rebuild (a view lost, ``resultlog replay``) and
``resultlog verify`` read it here, so that what verify expects is what a rebuild writes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from resultlog.chords.changelog import max_value_bytes
from resultlog.chords.fold import ChordFold
from resultlog.chords.records import ChordCompleted, ChordProgress
from resultlog.chords.store import STARTED, ChordStore, ChordView, chord_view_from_hash, completion_fields
from resultlog.errors import CodecError, ValidationError
from resultlog.processors.logreader import LogReader
from resultlog.redis_access import async_client
from resultlog.schemas.codec import Codec
from resultlog.schemas.states import PENDING
from resultlog.settings import Settings


class ChordsFromLog:
    """One pass over the chords topic: :meth:`completions` yields each chord's completion
    as the fold reaches it; once it is exhausted, :attr:`progress` holds the counts of
    every chord that did not complete and :attr:`chords` how many chords the topic names."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.progress: dict[str, ChordProgress] = {}
        self.chords = 0

    async def completions(self) -> AsyncIterator[ChordCompleted]:
        fold = ChordFold({}, max_value_bytes(self.settings))
        codec = Codec(max_bytes=self.settings.max_event_bytes)
        seen: set[str] = set()
        async with LogReader(self.settings, self.settings.chords_topic) as reader:
            try:
                plan = await reader.plan()
            except ValidationError:
                return  # no chords topic: no chord was ever declared or forwarded
            async for batch in reader.read(plan):
                for rec in batch:
                    try:
                        step = fold.apply(*codec.decode_record(rec.value or b""))
                    except (CodecError, ValidationError):
                        continue  # the live aggregator sent these to dead letters
                    if step is None:
                        continue
                    seen.add(step.chord_id)
                    if step.completion is not None:
                        fold.completed(step.completion)
                        self.progress.pop(step.chord_id, None)
                        yield step.completion
                    elif step.progress is not None:
                        self.progress[step.chord_id] = step.progress
        self.chords = len(seen)


async def rebuild_chord_views(settings: Settings) -> int:
    """Fold the whole chords topic again and write every chord's view; returns how many.
    Completions are written, not published to the completions topic: hooks ran with the
    live processor and are not run again."""
    source = ChordsFromLog(settings)
    client = async_client(settings)
    store = ChordStore(settings, client)
    try:
        async for completion in source.completions():
            await store.complete(completion)
        await store.progress(source.progress)
    finally:
        await client.aclose()
    return source.chords


def completed_view(completion: ChordCompleted) -> ChordView:
    """The chord view :meth:`ChordStore.complete` leaves (every field it writes)."""
    return chord_view_from_hash(completion.chord_id, completion_fields(completion))


def progress_view(chord_id: str, progress: ChordProgress) -> ChordView:
    """The chord view :meth:`ChordStore.progress` leaves on a chord not completed."""
    return ChordView(chord_id, STARTED if progress.done > 0 else PENDING, size=progress.size,
                     done=progress.done, failed=progress.failed)
