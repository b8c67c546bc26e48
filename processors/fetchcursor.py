"""Which fetched records the fold takes: per positioned partition, the offset its next
record must have, and the seeks that make a fetch begun earlier stale.

The fold positions each partition itself, from the stores, in aiokafka's rebalance
listener (docs/processor.md, "Where a partition resumes"), while its loop keeps
fetching: a fetch is a task of its own, and the loop may be awaiting a write or a
commit when that task ends. So a fetch can begin before a seek and be taken after it.
Its records were read from aiokafka's position before the seek, which is not where
the fold resumes the partition:

- a newly assigned partition is fetched from Kafka's committed offset while the
  listener reads the stores; the loop drops those records (the partition is not
  positioned yet), but aiokafka's position moves past them. A fetch taken after the
  seek then starts far ahead of where the stores resume the partition, and taking it
  would skip everything between (found by the fault test "one of two processors
  SIGKILLed": 1,222 events never stored, though both stores' positions passed them);
- after a rewind (docs/processor.md, "Asynchronous history commits"), a fetch begun
  before it holds records past where the history is whole.

A fetch begun before the latest seek is therefore never taken: its partitions are
sought again to where the fold's next record is, and read from there. That costs one
fetch per rebalance or rewind.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


class Positioned(Protocol):
    """A fetched record, as far as the cursor reads it."""

    @property
    def offset(self) -> int: ...


@dataclass(slots=True)
class Taken:
    """What a fetch gives the fold: its records in log order per partition, where they
    begin per (topic, partition), and the partitions to seek again (a stale fetch)."""

    records: list[Any] = field(default_factory=list)
    starts: dict[tuple[str, int], int] = field(default_factory=dict)
    seek: dict[int, int] = field(default_factory=dict)


class FetchCursor:
    """Per positioned partition, the offset of the next record the fold takes."""

    def __init__(self) -> None:
        self.next: dict[int, int] = {}
        # Bumped by every seek: a fetch carries the count at its start (begin()).
        self._seeks = 0

    def begin(self) -> int:
        """The token of a fetch beginning now, for :meth:`take`."""
        return self._seeks

    def seek(self, positions: Mapping[int, int]) -> None:
        """The fold sought these partitions to these offsets: fetches begun before now
        are stale."""
        self.next.update(positions)
        self._seeks += 1

    def drop(self, partitions: Iterable[int]) -> None:
        """Partitions revoked: their records are dropped until positioned again."""
        for p in partitions:
            self.next.pop(p, None)

    def take(self, fetched: Mapping[Any, Sequence[Positioned]], begun: int) -> Taken:
        """The records of ``fetched`` (topic-partition -> records, as aiokafka's
        ``getmany`` returns them) that the fold takes, moving each partition's next
        offset past them. ``begun``: :meth:`begin`'s token when the fetch began."""
        taken = Taken()
        if begun != self._seeks:
            # Stale (see the module docstring): aiokafka's position for these partitions
            # is either before the seek (so a gap follows) or past these records; read
            # them again from where the fold is.
            taken.seek = {tp.partition: self.next[tp.partition]
                          for tp in fetched if tp.partition in self.next}
            return taken
        for tp, messages in fetched.items():
            p = tp.partition
            start = self.next.get(p)
            if start is None:
                continue  # not positioned (yet): the listener seeks it from the stores
            if messages and messages[0].offset < start:
                # Not expected (aiokafka reads on from where the fold sought), but a
                # record taken twice would be folded twice: keep the guard.
                messages = [m for m in messages if m.offset >= start]
            if not messages:
                continue
            taken.records += messages
            taken.starts[(tp.topic, p)] = start
            self.next[p] = messages[-1].offset + 1
        return taken
