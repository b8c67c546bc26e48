"""Removing completed chords' summaries from the aggregator's table once they expire.

A completed chord keeps its summary (``c:<chord_id>``) so that a re-delivered member
never fires it again, until its view expires (why not forever, and what removing it
leaves: docs/chords.md, "How it works"). A chord's keys live in its own partition's
table, so a summary is removed only while a record of that partition is processed
(:meth:`SummaryRetention.sweep`).
"""

from __future__ import annotations

import heapq
from collections.abc import MutableMapping
from typing import Any

from resultlog.chords.celeryfold import summary_key
from resultlog.producers.partitioner import partition_for

_SUMMARY_PREFIX = summary_key("")


class SummaryRetention:
    """Which completed summaries are due, per partition; removes them when asked.

    ``retention_ms`` 0 keeps everything (results that never expire). ``partitions``:
    the chords topic's partition count, to place summaries found in the table.
    """

    def __init__(self, table: MutableMapping[str, Any], retention_ms: int, partitions: int,
                 *, per_sweep: int = 100) -> None:
        self.table = table
        self.retention_ms = retention_ms
        self.partitions = partitions
        self.per_sweep = per_sweep  # bounded, so a backlog never stalls the stream
        self._due: dict[int, list[tuple[int, str]]] = {}
        # The summaries already in the table (recovered from the changelog).
        for key, summary in table.items():
            if key.startswith(_SUMMARY_PREFIX) and summary.get("completed") is not None:
                self.completed(key[len(_SUMMARY_PREFIX):], summary["ts"])

    def completed(self, chord_id: str, timestamp_ms: int) -> None:
        """``chord_id`` completed at ``timestamp_ms`` (log time): due a TTL later."""
        if self.retention_ms:
            partition = partition_for(chord_id.encode(), self.partitions)
            heapq.heappush(self._due.setdefault(partition, []),
                           (timestamp_ms + self.retention_ms, chord_id))

    def sweep(self, partition: int, now_ms: int) -> list[str]:
        """Remove up to ``per_sweep`` of ``partition``'s summaries due by ``now_ms``;
        returns the chords removed. Call only while processing a record of ``partition``."""
        if not self.retention_ms:
            return []
        due = self._due.get(partition)
        removed: list[str] = []
        while due and due[0][0] <= now_ms and len(removed) < self.per_sweep:
            _, chord_id = heapq.heappop(due)
            key = summary_key(chord_id)
            summary = self.table.get(key)
            if summary is not None and summary.get("completed") is not None:
                del self.table[key]
                removed.append(chord_id)
        return removed
